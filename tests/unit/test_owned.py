"""Ownership by record, the pure part: what a record says vpnsplit applied, its JSON form, and the
plan of what a run removes (the record against the desired state of the run)."""

import errno
import ipaddress
import json
import struct
from pathlib import Path

import pytest

from vpnsplit import backstop, config, owned, plan, state
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease

OLD_RECORDS = Path(__file__).resolve().parents[1] / "data" / "state_0.1"
LEASE = Lease(device="tun0", local4=ipaddress.ip_interface("10.8.0.2/24"), local6=ipaddress.ip_interface("fd00:8::2/64"),
              dns=(ipaddress.ip_address("10.8.0.1"),))


def tunnel(**keys):
    section = {"device": "tun0", "table": 100, "priority": 1000, "alias": "10.192.8.1", "alias6": "fd10:192::1",
               "sources": ["10.20.1.0/24", "fd20:1::/64"], "lan": ["198.51.100.0/24"], "forward": ["tcp/8080", "all"], **keys}
    return config.parse({"tunnel": {"p": section}}).tunnels["p"]


def test_every_kind_a_tunnel_plans_round_trips_through_the_record():
    cases = ((tunnel(), LEASE), (tunnel(), None), (tunnel(alias_device="lo", strict=False), LEASE),
             (tunnel(app_slot=3), LEASE), (tunnel(app_slot=3), None))  # app_slot: the per-app kinds
    for t, lease in cases:
        applied = plan.plan_up(t, lease) if lease else plan.plan_down(t)
        kinds = {type(o).__name__ for o in applied.objects()}
        assert kinds <= set(owned.KINDS), kinds
        text = json.dumps(owned.to_json(applied))
        assert owned.from_json(json.loads(text), "x") == applied
        assert json.dumps(owned.to_json(owned.from_json(json.loads(text), "x"))) == text  # sorted: written the same way


@pytest.mark.parametrize("item, why", [
    ({"kind": "Shell", "cmd": "rm"}, "unknown kind"),
    ({"kind": "Address", "family": 4, "device": "../../etc", "address": "10.192.8.1"}, "device"),
    ({"kind": "Address", "family": 4, "device": "lo", "address": 167772161}, "address"),
    ({"kind": "Address", "family": 4, "device": "lo", "address": "10.192.8.1; drop"}, "address"),
    ({"kind": "Address", "family": 4, "device": "lo"}, "without address"),
    ({"kind": "Address", "family": 4, "device": None, "address": "10.192.8.1"}, "device"),
    ({"kind": "Address", "family": 5, "device": "lo", "address": "10.192.8.1"}, "family"),
    ({"kind": "Address", "family": 4, "device": "lo", "address": "10.192.8.1", "extra": 1}, "unknown fields"),
    ({"kind": "Rule", "family": 4, "priority": True, "table": 100, "src": "10.8.0.2/32"}, "priority"),
    ({"kind": "Route", "family": 4, "table": 100, "dst": "0.0.0.0/0", "type": "blackhole"}, "type"),
    ("Address", "unknown kind"),
])
def test_a_damaged_record_is_refused_naming_the_object(item, why):
    with pytest.raises(InputError, match=f"state file x: damaged .*{why}.*; fix it"):
        owned.from_json({"addresses": [item]}, "state file x", "fix it")
    with pytest.raises(InputError, match="damaged"):
        owned.from_json({"addresses": item}, "state file x")


def test_an_alias_edit_leaves_exactly_the_old_alias_objects():
    old, new = plan.plan_up(tunnel(alias="10.192.8.5"), LEASE), plan.plan_up(tunnel(), LEASE)
    left = owned.leftovers(old, new)
    assert sorted(map(str, left.objects())) == sorted([
        "rule from 10.192.8.5/32 lookup 100 priority 1001", "address 10.192.8.5/32 on tun0",
        "backstop: 10.192.8.5 leaves only through tun0", "guard 10.192.8.5 reachable only via tun0",
        "snat 10.192.8.5 -> 10.8.0.2 out tun0",
        "dnat 10.8.0.2 tcp/8080 in tun0 -> 10.192.8.5", "dnat 10.8.0.2 all ports in tun0 -> 10.192.8.5"])


def test_an_alias_device_edit_leaves_the_old_device_s_address_alone():
    left = owned.leftovers(plan.plan_up(tunnel(alias_device="lo"), LEASE), plan.plan_up(tunnel(), LEASE))
    assert left == plan.State(addresses=frozenset({plan.Address(4, "lo", "10.192.8.1"), plan.Address(6, "lo", "fd10:192::1")}))


def test_a_table_and_priority_edit_leaves_the_old_table_and_rules():
    left = owned.leftovers(plan.plan_up(tunnel(), LEASE), plan.plan_up(tunnel(table=102, priority=1200), LEASE))
    assert owned.tables(left) == [100] and {r.priority for r in left.rules} == {1000, 1001, 1002, 1003}
    assert left.routes == plan.plan_up(tunnel(), LEASE).routes and not left.addresses and not left.nft
    assert owned.describe(left) == "table 100, priorities 1000-1003"


def test_a_gone_section_leaves_everything_but_what_another_record_claims():
    applied = plan.plan_up(tunnel(), LEASE)
    assert owned.leftovers(applied, plan.State()) == applied
    claimed = plan.State(addresses=frozenset({plan.Address(4, "tun0", "10.192.8.1")}))
    left = owned.leftovers(applied, plan.State(), claimed)
    assert left.addresses == applied.addresses - claimed.addresses and left.rules == applied.rules
    # a strict down record: the skeleton, the backstop confinement included
    down = plan.plan_down(tunnel())
    assert backstop.Confine(4, "10.192.8.1", "tun0") in owned.leftovers(down, plan.State()).nft
    assert owned.leftovers(down, down) == plan.State()


def test_the_app_slots_a_state_steers_are_read_from_its_marked_rules():
    assert owned.app_slots(plan.plan_up(tunnel(app_slot=3), LEASE)) == {3} == owned.app_slots(plan.plan_down(tunnel(app_slot=3)))
    assert owned.app_slots(plan.plan_up(tunnel(), LEASE)) == set()
    # another mark's rule (the default VPN's client mark, say) is no slot
    assert owned.app_slots(plan.State(rules=frozenset({plan.Rule(4, 31990, 254, "0.0.0.0/0", fwmark=0x20000000, fwmask=0x20000000)}))) == set()


def test_records_keep_what_was_applied_up_and_down(tmp_path):
    statedir = state.StateDir(str(tmp_path))
    up, down = plan.plan_up(tunnel(), LEASE), plan.plan_down(tunnel())
    statedir.write("p", LEASE, state.NO_DEVICES, up)
    record = statedir.record("p")
    assert (record.lease, record.applied, record.damage) == (LEASE, up, None)
    statedir.write("p", None, state.NO_DEVICES, down)  # down, strict: the skeleton stays, and its record without a lease
    record = statedir.record("p")
    assert (record.lease, record.applied, record.damage) == (None, down, None)
    assert not (tmp_path / "p.addr").exists() and json.loads((tmp_path / "p.json").read_text())["lease"] is None
    assert statedir.applied_elsewhere("q") == down and statedir.applied_elsewhere("p") == plan.State()


def test_old_records_say_nothing_about_what_was_applied(tmp_path):
    for path in OLD_RECORDS.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    statedir = state.StateDir(str(tmp_path))
    for name in ("provider", "work"):
        record = statedir.record(name)
        assert record.lease is not None and record.applied is None and record.damage is None


def test_a_damaged_applied_field_damages_the_record(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"tunnel": "p", "lease": None, "applied": {"rules": [{"kind": "Rule"}]}}))
    record = state.StateDir(str(tmp_path)).record("p")
    assert record.applied is None and "damaged (Rule without" in record.damage and "vpnsplit down p" in record.damage


def _ips(*texts):
    return [ipaddress.ip_address(t) for t in texts]


def test_the_aliases_a_run_retires_are_those_it_removes_and_nothing_still_uses():
    """sockets.retired: an alias edit retires the old aliases (from their Address objects and rules); the
    configured aliases and the leases' tunnel addresses are kept (a reconnect or a down retires nothing);
    subnets and the default's /0 are no address."""
    from vpnsplit import sockets

    old, new = tunnel(alias="10.192.8.5", alias6="fd10:192::5"), tunnel()
    left = owned.leftovers(plan.plan_up(old, LEASE), plan.plan_up(new, LEASE))
    keep = {new.alias, new.alias6, *(a.ip for a in LEASE.locals)}
    assert sockets.retired(left, plan.plan_up(new, LEASE), keep) == _ips("10.192.8.5", "fd10:192::5")
    # the tunnel goes down: its aliases (configured) and its tunnel addresses (leased) stay bindable
    left = owned.leftovers(plan.plan_up(new, LEASE), plan.plan_down(new))
    assert left.rules and sockets.retired(left, plan.plan_down(new), keep) == []
    # its section removed (strict, alias on lo): the aliases and nothing else; an alias moved to lo: none
    lo = tunnel(alias_device="lo")
    assert sockets.retired(plan.plan_down(lo), plan.State(), ()) == _ips("10.192.8.1", "fd10:192::1")
    assert sockets.retired(owned.leftovers(plan.plan_up(new, LEASE), plan.plan_up(lo, LEASE)), plan.plan_up(lo, LEASE), ()) == []


def test_socket_destroy_requests_carry_the_address_as_inet_diag_words():
    from vpnsplit import sockets

    assert sockets._words(ipaddress.ip_address("10.192.8.5")) == (0x0AC00805, 0, 0, 0)
    assert sockets._words(ipaddress.ip_address("fd10:192::5")) == (0xFD100192, 0, 0, 5)


class _Answer(dict):
    """A sock_diag answer as pyroute2 hands it over: the raw message in data, from offset."""

    def __init__(self, kind, code):
        super().__init__(header={"type": kind})
        self.data, self.offset = b"\0" * 8 + struct.pack("=IHHIIi", 36, kind, 0, 1, 1, -code), 8


def test_a_socket_destroy_answer_is_read_off_the_raw_error_message():
    """pyroute2's sock_diag marshal does not read NLMSG_ERROR: 0 done, ENOENT gone meanwhile, EOPNOTSUPP no destroy."""
    from vpnsplit import sockets

    for code in (0, errno.ENOENT, errno.EOPNOTSUPP):
        assert sockets._answer([_Answer(2, code)]) == code
    assert sockets._answer([]) == 0
