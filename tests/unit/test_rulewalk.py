"""The replayed rule walk (rulewalk.py) on rule messages shaped as pyroute2 decodes them."""

import ipaddress

from vpnsplit import rulewalk


class Msg(dict):
    def __init__(self, priority, table=0, action=1, flags=0, tos=0, src_len=0, dst_len=0, **attrs):
        super().__init__(action=action, flags=flags, tos=tos, src_len=src_len, dst_len=dst_len, table=table & 0xFF)
        self["attrs"] = [("FRA_PRIORITY", priority), ("FRA_TABLE", table)] + [
            (f"FRA_{k.upper()}", v) for k, v in attrs.items()
        ]

    def get_attr(self, name):
        return dict(self["attrs"]).get(name)


FLOW = rulewalk.Flow(ipaddress.ip_address("10.192.8.1"), ipaddress.ip_address("192.0.2.1"), uid=0)
# table -> (type, prefix length, oif) of the route 192.0.2.1 finds there
TABLES = {254: (1, 0, 2), 100: (1, 0, 3), 200: (7, 0, None), 300: (9, 0, None)}


def run(*rules, flow=FLOW, groups=None):
    return rulewalk.walk(rules, flow, TABLES.get, lambda index: (groups or {}).get(index))


def test_selectors_that_do_not_take_the_flow_are_passed():
    hit = run(
        Msg(10, 100, fwmark=0x10, fwmask=0x10),
        Msg(11, 100, uid_range={"start": 1000, "end": 2000}),
        Msg(12, 100, ip_proto=6),
        Msg(13, 100, dport_range={"start": 53, "end": 53}),
        Msg(14, 100, iifname="eth0"),
        Msg(15, 100, oifname="lo"),
        Msg(16, 100, tos=0x10),
        Msg(17, 100, src="10.0.0.0", src_len=8, flags=rulewalk.FIB_RULE_INVERT),
        Msg(18, 100, iifname="eth0", flags=rulewalk.FIB_RULE_IIF_DETACHED),
        Msg(32766, 254),
    )
    assert (hit.rule.get_attr("FRA_PRIORITY"), hit.table, hit.outcome) == (32766, 254, "unicast")


def test_not_fwmark_uid_and_lo_take_a_local_flow():
    for rule in (
        Msg(10, 100, fwmark=0xCA6C, flags=rulewalk.FIB_RULE_INVERT),
        Msg(10, 100, uid_range={"start": 0, "end": 0}),
        Msg(10, 100, iifname="lo"),
        Msg(10, 100, src="10.192.8.1", src_len=32),
    ):
        assert run(rule, Msg(32766, 254)).table == 100, rulewalk.text(rule)


def test_suppressors_throw_goto_and_actions():
    assert run(Msg(10, 254, suppress_prefixlen=0), Msg(20, 100)).table == 100  # a default route is suppressed
    assert run(Msg(10, 100, suppress_ifgroup=7), Msg(20, 254), groups={3: 7}).table == 254
    assert run(Msg(10, 300), Msg(20, 100)).table == 100  # throw: the next rule
    assert run(Msg(10, 999), Msg(20, 100)).table == 100  # a table without the route: the next rule
    assert run(Msg(5, action=2, goto=20), Msg(10, 254), Msg(20, 100)).table == 100
    assert run(Msg(10, 200), Msg(20, 100)) == (run(Msg(10, 200)).rule, 200, "unreachable")  # an error route ends it
    assert run(Msg(10, action=8), Msg(20, 100)).outcome == "prohibit"
    assert run(Msg(10, 999)).rule is None


def test_what_cannot_be_replayed_is_unknown():
    assert isinstance(run(Msg(10, 100, dscp=4)), rulewalk.Unknown)
    vrf = FLOW._replace(iif="eth0", master=True)
    assert isinstance(run(Msg(10, 100, l3mdev=1), flow=vrf), rulewalk.Unknown)
    assert run(Msg(10, 100, l3mdev=1), Msg(20, 254)).table == 254


def test_text_names_every_selector():
    rule = Msg(999, 51820, fwmark=0xCA6C, flags=rulewalk.FIB_RULE_INVERT, suppress_prefixlen=0xFFFFFFFF)
    assert rulewalk.text(rule) == "999: not from all fwmark 0xca6c lookup 51820"
    rule = Msg(
        5,
        254,
        src="10.0.0.0",
        src_len=8,
        dst="192.0.2.0",
        dst_len=24,
        iifname="eth0",
        uid_range={"start": 1, "end": 2},
        ip_proto=17,
        dport_range={"start": 53, "end": 53},
        suppress_prefixlen=0,
    )
    want = "5: from 10.0.0.0/8 to 192.0.2.0/24 iif eth0 uidrange 1-2 ipproto 17 dport 53 lookup main"
    assert rulewalk.text(rule) == want + " suppress_prefixlength 0"
