"""Issue 3, scenarios 5, 6 and 7: wg-quick with configs/wireguard/wg0.conf, the strict
fail-closed alias once the tunnel is down, and an OpenVPN and a WireGuard tunnel at once;
issue 6: IPv6 through the same tunnel (alias6, a port forward to it).

Run one alone:  .venv/bin/python -m pytest tests/test_lab_wireguard.py -k strict -v
"""

import pytest

from tests.lab import checks
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.netns import CONTAINER, CONTAINER6, CONTAINER_NET, CONTAINER_NET6
from tests.lab.wireguard import SERVER_ADDR6

pytestmark = pytest.mark.lab

OVPN_ALIAS, WG_ALIAS = "10.192.8.1", "10.192.9.1"
WG_ADDR, WG_ADDR6 = "10.9.0.2", "fd09::2"  # Address in configs/wireguard/wg0.conf
WG_ALIAS6 = "fd10:192:9::1"
FORWARD_PORT = 7100


def openvpn_tunnel():
    return dict(device="tun0", table=100, priority=1000, alias=OVPN_ALIAS, alias_device="lo")


def wg_tunnel(device):
    return dict(device=device, table=101, priority=1100, alias=WG_ALIAS, alias_device="lo")


def test_wg_quick_up_down_up(lab):  # noqa: F811
    """Table = off, PostUp/PreDown hooks: split while up, fail closed while down, back again."""
    client, _ = lab.wireguard_pair()
    lab.write_vpnsplit_config(wg=wg_tunnel(client.ifname))
    checks.start_listeners(lab)
    client.up()
    assert lab.address_of(client.ifname) == WG_ADDR, lab.diagnostics()
    checks.assert_ok(checks.tunnel_checks(lab, WG_ALIAS, WG_ADDR), lab)

    client.down()
    assert WG_ADDR not in lab.rules() and WG_ADDR not in lab.nft_ruleset(), lab.diagnostics()
    status = lab.vpnsplit("status", "wg", "--json").stdout
    assert WG_ADDR not in status, f"vpnsplit still remembers the lease:\n{status}"
    checks.assert_ok(checks.fail_closed_checks(lab, WG_ALIAS), lab)

    client.up()
    checks.assert_ok(checks.tunnel_checks(lab, WG_ALIAS, WG_ADDR), lab)


def test_wg_quick_ipv6_alias6_and_port_forward(lab):  # noqa: F811
    """The real PostUp hook reads both addresses off the interface: alias6 leaves as the tunnel's
    IPv6 address (beside the IPv4 split), the VPN side reaches a service bound only to alias6
    through the forwarded port on the tunnel's IPv6 address, and alias6 fails closed after down."""
    client, _ = lab.wireguard_pair()
    lab.write_vpnsplit_config(wg=dict(wg_tunnel(client.ifname), alias6=WG_ALIAS6, forward=[f"tcp/{FORWARD_PORT}"]))
    checks.start_listeners(lab)
    client.up()
    assert lab.address_of(client.ifname, family="-6") == WG_ADDR6, lab.diagnostics()
    checks.assert_ok(checks.tunnel_checks(lab, WG_ALIAS6, WG_ADDR6) + checks.seen_from(lab, WG_ALIAS, WG_ADDR), lab)

    # the server side knows only the tunnel: the TCP handshake completes only if the answer,
    # from alias6, goes back through the tunnel as the tunnel's IPv6 address
    lab.listen("host", [WG_ALIAS6], port=FORWARD_PORT)
    seen = lab.whoami(SERVER_ADDR6, WG_ADDR6, port=FORWARD_PORT, role="vpn")
    assert seen == SERVER_ADDR6, f"forward to alias6: {seen}\n{lab.diagnostics()}"

    client.down()
    checks.assert_ok(checks.fail_closed_checks(lab, WG_ALIAS6), lab)


def test_wg_quick_source_subnets_both_families(lab):  # noqa: F811
    """A container (10.20.1.5, fd20:1::5) behind the host leaves through the real wg-quick tunnel,
    SNAT-ed to the tunnel's address of its family, never by the isp; strict: nothing once down.
    The admin sets net.ipv6.conf.all.forwarding = 1 (README); vpnsplit does IPv4's per device."""
    client, _ = lab.wireguard_pair()
    lab.add_container()
    lab.sysctl("host", "net.ipv6.conf.all.forwarding", "1")
    lab.write_vpnsplit_config(wg=dict(wg_tunnel(client.ifname), sources=[CONTAINER_NET, CONTAINER_NET6]))
    checks.start_listeners(lab)
    client.up()
    counter = lab.isp_counter([CONTAINER, CONTAINER6])
    found = [*checks.seen_from(lab, CONTAINER, WG_ADDR, role="ctr"), *checks.seen_from(lab, CONTAINER6, WG_ADDR6, role="ctr")]

    client.down()
    for src in (CONTAINER, CONTAINER6):
        seen = lab.whoami(src, checks.plain(src).target, "udp", role="ctr", timeout=1)
        found.append(checks.Check(f"UDP from {src} with the tunnel down", "an error", seen, passed=seen.startswith("error")))
    counts = counter.counts()
    found += [checks.Check(f"packets from {src} on the isp link", "0", str(counts[src])) for src in (CONTAINER, CONTAINER6)]
    checks.assert_ok(found, lab)
    # control: without vpnsplit's rules for the subnets and its backstop (and IPv4 forwarding,
    # which down switched back off) the same probes do reach the isp
    lab.sysctl("host", "net.ipv4.conf.ctr0.forwarding", "1")
    for family in ("-4", "-6"):
        lab.ip("host", family, "rule", "del", "priority", "1103")
    lab.run("host", ["nft", "flush", "chain", "inet", "vpnsplit", "backstop"])
    for src in (CONTAINER, CONTAINER6):
        lab.whoami(src, checks.plain(src).target, "udp", role="ctr", timeout=0.5)
    assert all(counter[src] > 0 for src in (CONTAINER, CONTAINER6)), f"control failed: {counter.counts()}"


@pytest.mark.parametrize("vpn", ["openvpn", "wireguard"])
def test_strict_tunnel_down_fails_closed(lab, vpn):  # noqa: F811
    """Alias on lo, strict: after the client stops, the alias errors at once and the isp sees nothing.

    The control at the end removes vpnsplit's alias rule and its backstop by hand: then the same
    probe does reach the isp, so the zero before was vpnsplit's doing, not a blind capture.
    """
    if vpn == "openvpn":
        lab.write_vpnsplit_config(provider=dict(openvpn_tunnel(), strict=True))
        lab.openvpn_server("subnet")
        client = lab.openvpn_client("client.conf")
        alias, addr, stop = OVPN_ALIAS, lab.address_of("tun0"), client.stop
    else:
        client, _ = lab.wireguard_pair()
        lab.write_vpnsplit_config(wg=dict(wg_tunnel(client.ifname), strict=True))
        client.up()
        alias, addr, stop = WG_ALIAS, WG_ADDR, client.down
    checks.start_listeners(lab)
    checks.assert_ok(checks.seen_from(lab, alias, addr), lab)

    stop()
    checks.assert_ok(checks.fail_closed_checks(lab, alias), lab)

    lab.ip("host", "rule", "del", "from", alias)
    lab.run("host", ["nft", "flush", "chain", "inet", "vpnsplit", "backstop"])
    counter = lab.isp_counter([alias])
    lab.whoami(alias, proto="udp", timeout=0.5)  # sent in the clear; no answer expected
    assert counter[alias] > 0, "control failed: the isp counter does not see alias packets at all"


def test_two_tunnels_at_once(lab):  # noqa: F811
    """One OpenVPN and one WireGuard tunnel: each alias leaves through its own tunnel."""
    wg, _ = lab.wireguard_pair()
    lab.write_vpnsplit_config(provider=openvpn_tunnel(), wg=wg_tunnel(wg.ifname))
    checks.start_listeners(lab)
    lab.openvpn_server("subnet")
    ovpn = lab.openvpn_client("client.conf")
    wg.up()
    ovpn_addr = lab.address_of("tun0")

    checks.assert_ok(checks.tunnel_checks(lab, OVPN_ALIAS, ovpn_addr), lab)
    checks.assert_ok(checks.tunnel_checks(lab, WG_ALIAS, WG_ADDR, protos=("udp",)), lab)

    ovpn.stop()  # one tunnel down: its alias fails closed, the other keeps working
    checks.assert_ok(checks.fail_closed_checks(lab, OVPN_ALIAS, protos=("udp",)), lab)
    checks.assert_ok(checks.seen_from(lab, WG_ALIAS, WG_ADDR), lab)
