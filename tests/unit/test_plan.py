"""The planner: desired kernel objects from config and lease, without root."""

import ipaddress

import pytest

from vpnsplit import backstop, config, default_vpn, dns, marks, plan
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease

P = plan.RTPROT_VPNSPLIT
NO_CHANGE = plan.Diff(plan.State(), plan.State())


def tunnel(**kw):
    base = {"device": "tun0", "table": 100, "priority": 1000, "alias": "10.192.8.1"}
    base.update(kw)
    return config.parse({"tunnel": {"p": base}}).tunnels["p"]


def lease(v4="10.8.0.2/24", v6=None, dev_type="tun", gw=None, device="tun0"):
    return Lease(device=device, dev_type=dev_type, local4=v4 and ipaddress.ip_interface(v4), local6=v6 and ipaddress.ip_interface(v6),
                 gateway4=gw and ipaddress.ip_address(gw))


def test_up_on_tun():
    s = plan.plan_up(tunnel(), lease())
    assert s.rules == {plan.Rule(4, 1000, 100, "10.8.0.2/32"), plan.Rule(4, 1001, 100, "10.192.8.1/32")}
    assert plan.Route(4, 100, "0.0.0.0/0", device="tun0") in s.routes
    assert {r.type for r in s.routes if r.type == "unreachable"} == {"unreachable"}
    assert s.addresses == {plan.Address(4, "tun0", "10.192.8.1")}
    assert s.nft == {plan.Snat(4, "10.192.8.1", "tun0", "10.8.0.2"), plan.Guard(4, "10.8.0.2", "tun0"), plan.Guard(4, "10.192.8.1", "tun0"),
                     backstop.Confine(4, "10.192.8.1", "tun0"), backstop.Confine(4, "10.8.0.2", "tun0")}


def test_strict_down_keeps_alias_rules_and_unreachable_for_both_families():
    s = plan.plan_down(tunnel(alias6="fd10::1"))
    assert s.rules == {plan.Rule(4, 1001, 100, "10.192.8.1/32"), plan.Rule(6, 1001, 100, "fd10::1/128")}
    assert {(r.family, r.type) for r in s.routes} == {(4, "unreachable"), (6, "unreachable")}
    assert not s.addresses and all(isinstance(e, (plan.Guard, backstop.Confine)) for e in s.nft)  # alias on the tunnel device goes with it
    assert backstop.Confine(6, "fd10::1", "tun0") in s.nft and backstop.Confine(6, "fd10::1", "tun0") != plan.Guard(6, "fd10::1", "tun0")


def test_backstop_confines_sources_with_their_own_subnet_and_lan_and_only_with_strict():
    t = tunnel(sources=["10.20.1.0/24"], lan=["198.51.100.0/24"])
    s = plan.plan_down(t)
    assert {e for e in s.nft if isinstance(e, backstop.Reach)} == {
        backstop.Reach(4, "10.20.1.0/24", "10.20.1.0/24", "tun0"), backstop.Reach(4, "10.20.1.0/24", "198.51.100.0/24", "tun0")}
    assert backstop.Confine(4, "10.20.1.0/24", "tun0") in s.nft
    assert not any(isinstance(e, (backstop.Confine, backstop.Reach)) for e in plan.plan_up(t._replace(strict=False), lease()).nft)


def test_kill_switch_leaves_main_routes_direct_collapsed():
    nets = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "198.51.100.128/25", "0.0.0.0/0", "fd08::/64")]
    ks = backstop.killswitch(tunnel(), nets)
    assert ks == {backstop.KillSwitch("tun0"), backstop.Direct(4, "198.51.100.0/24"), backstop.Direct(6, "fd08::/64")}
    assert backstop.killswitch(tunnel(strict=False), nets) == set()


def test_alias_on_lo_stays_when_strict():
    assert plan.plan_down(tunnel(alias_device="lo")).addresses == {plan.Address(4, "lo", "10.192.8.1")}
    assert plan.plan_down(tunnel(alias_device="lo", strict=False)) == plan.State()


def test_non_strict_alias6_without_ipv6_tunnel_gets_no_rule():
    """Otherwise alias6 traffic would fall through to the main table un-NATed."""
    s = plan.plan_up(tunnel(alias6="fd10::1", strict=False), lease())
    assert all(r.family == 4 for r in s.rules) and not s.routes - {plan.Route(4, 100, "0.0.0.0/0", device="tun0")}


def test_tap_routes_via_gateway_and_needs_one():
    s = plan.plan_up(tunnel(device="tap0"), lease(dev_type="tap", gw="10.8.0.1", device="tap0"))
    assert plan.Route(4, 100, "0.0.0.0/0", device="tap0", gateway="10.8.0.1") in s.routes
    assert plan.Route(4, 100, "10.8.0.0/24", device="tap0") in s.routes
    with pytest.raises(InputError, match="gateway = "):
        plan.plan_up(tunnel(device="tap0"), lease(dev_type="tap", device="tap0"))
    with pytest.raises(InputError, match="not inside the tunnel subnet"):
        plan.plan_up(tunnel(device="tap0", gateway="10.9.0.1"), lease(dev_type="tap", device="tap0"))


def test_alias_equal_to_tunnel_address_is_refused():
    with pytest.raises(InputError, match="alias 10.192.8.1 equals"):
        plan.plan_up(tunnel(), lease("10.192.8.1/24"))


def test_diff_of_restart_swaps_only_what_changed():
    t = tunnel()
    d = plan.diff(plan.plan_up(t, lease("10.8.0.7/24")), plan.plan_up(t, lease()))
    assert d.add.rules == {plan.Rule(4, 1000, 100, "10.8.0.7/32")} and d.remove.rules == {plan.Rule(4, 1000, 100, "10.8.0.2/32")}
    assert d.add.nft == {plan.Snat(4, "10.192.8.1", "tun0", "10.8.0.7"), plan.Guard(4, "10.8.0.7", "tun0"),
                         backstop.Confine(4, "10.8.0.7", "tun0")} and not d.add.routes and not d.remove.routes
    assert plan.diff(plan.plan_up(t, lease()), plan.plan_up(t, lease())) == NO_CHANGE


def test_default_vpn_tells_ipv6_replies_by_conntrack_mark_not_by_the_uplink_address():
    """IPv6 retries a failed lookup of an unbound socket with the chosen (uplink) source:
    'from <uplink6> lookup main' beside the strict unreachable would let that out in the clear,
    also after the client died without down. So IPv6's 32001 selects the reply mark, always;
    IPv4 has both (the mark, set in prerouting, also covers forwarded replies: published container ports)."""
    uplink = [ipaddress.ip_address("198.51.100.10"), ipaddress.ip_address("2001:db8:51::10")]
    mark = plan.Rule(6, plan.DEFAULT_PRIORITY + 1, plan.MAIN_TABLE, "::/0", fwmark=marks.REPLY_MARK, fwmask=marks.REPLY_MARK)
    v4 = plan.Rule(4, plan.DEFAULT_PRIORITY + 1, plan.MAIN_TABLE, "198.51.100.10/32")
    for lease_ in (lease(v6="fd08::2/64"), lease(), None):
        state = default_vpn.plan_rules(tunnel(), lease_, uplink, [])
        assert {r for r in state.rules if r.priority == plan.DEFAULT_PRIORITY + 1} == {v4, mark, mark._replace(family=4, src="0.0.0.0/0")}
        assert {e for e in state.nft if not isinstance(e, (backstop.Direct, dns.DnsDefault))} == {plan.ReplyMark("tun0"), backstop.KillSwitch("tun0")}
    assert str(mark) == "rule from ::/0 fwmark 0x10000000/0x10000000 lookup 254 priority 32001"
    # a rule without a mark is the same value as before the fields existed (observed == planned)
    assert plan.Rule(4, 1, 2, "0.0.0.0/0") == plan.Rule(4, 1, 2, "0.0.0.0/0", "", -1, 0, 0) != mark
    # not strict and no lease: no default rules and no marking at all
    assert default_vpn.plan_rules(tunnel()._replace(strict=False), None, uplink, []) == plan.State()


def test_dns_follows_the_sources_and_the_default_vpn():
    """The sources' DNS goes to the lease's resolver (else the dns key, kept while down with
    strict); the default VPN marks the host's DNS into its table (rule 31991) and redirects it."""
    from vpnsplit import dns

    t = tunnel()._replace(sources=(ipaddress.ip_network("10.20.1.0/24"),), dns=(ipaddress.ip_address("192.0.2.53"),))
    src = lambda to: dns.DnsSource(4, "10.20.1.0/24", to)  # noqa: E731
    assert {e for e in plan.plan_up(t, lease()).nft if isinstance(e, dns.DnsSource)} == {src("192.0.2.53")}
    pushed = lease()._replace(dns=(ipaddress.ip_address("10.8.0.1"), ipaddress.ip_address("10.8.0.9")))
    assert {e for e in plan.plan_up(t, pushed).nft if isinstance(e, dns.DnsSource)} == {src("10.8.0.1")}
    assert {e for e in plan.plan_down(t).nft if isinstance(e, (dns.DnsSource, dns.DnsBlock))} == {dns.DnsBlock(4, "10.20.1.0/24")}
    assert not any(isinstance(e, dns.DnsBlock) for e in plan.plan_up(t, lease()).nft)
    assert not any(isinstance(e, dns.DnsBlock) for e in plan.plan_down(t._replace(strict=False)).nft)
    # nothing of this for a tunnel with no DNS that is not the default VPN
    plain = tunnel()._replace(sources=t.sources)
    assert not any(isinstance(e, (dns.DnsSource, dns.DnsDefault)) for e in plan.plan_up(plain, lease()).nft | plan.plan_down(plain).nft)
    assert not any(isinstance(e, (dns.DnsSource, dns.DnsBlock)) for e in plan.plan_up(tunnel(), lease()).nft | plan.plan_down(tunnel()).nft)
    assert not any(r.fwmask == marks.DNS_MARK for r in plan.plan_up(plain, lease()).rules)
    state = default_vpn.plan_rules(t, pushed, [], [])
    assert dns.DnsDefault("tun0", ("10.8.0.1",)) in state.nft
    assert {r for r in state.rules if r.priority == marks.DNS_PRIORITY} == {
        plan.Rule(f, marks.DNS_PRIORITY, 100, plan.EVERYWHERE[f], fwmark=marks.DNS_MARK, fwmask=marks.DNS_MARK) for f in (4, 6)}


def test_backstop_entries_name_a_host_as_nft_lists_it_back():
    """A /32 (/128) in an interval set is listed as a plain address: the plan must say the same, or
    check would find a host route of main (a point-to-point peer) missing and stale at once."""
    nets = [ipaddress.ip_network("10.9.0.5/32"), ipaddress.ip_network("fd10:192::1/128")]
    assert {e for e in backstop.killswitch(tunnel(), nets) if isinstance(e, backstop.Direct)} == {
        backstop.Direct(4, "10.9.0.5"), backstop.Direct(6, "fd10:192::1")}
    t = tunnel(sources=["10.20.1.7/32"], lan=["198.51.100.7/32"])
    assert backstop.Reach(4, "10.20.1.7", "198.51.100.7", "tun0") in plan.plan_down(t).nft
