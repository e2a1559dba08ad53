"""Issue 3, scenarios 1 and 2: a real OpenVPN 2.6 TLS tunnel wired to vpnsplit with the
example configs in configs/openvpn/, checked by packets that arrived.

Run one alone:  .venv/bin/python -m pytest tests/test_lab_openvpn.py -k subnet -v
"""

import time

import pytest

from tests.lab import checks
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.lab

ALIAS = "10.192.8.1"


def provider(device="tun0", **extra):
    return dict(device=device, table=100, priority=1000, alias=ALIAS, **extra)


@pytest.mark.parametrize("alias_device", [None, "lo"], ids=["alias-on-tun", "alias-on-lo"])
def test_subnet_tls(lab, alias_device):  # noqa: F811
    """topology subnet, route-nopull, address from the server's pool."""
    extra = {"alias_device": alias_device} if alias_device else {}
    lab.write_vpnsplit_config(provider=provider(**extra))
    checks.start_listeners(lab)
    lab.openvpn_server("subnet")
    client = lab.openvpn_client("client.conf")
    tunnel_addr = lab.address_of("tun0")
    assert tunnel_addr and tunnel_addr.startswith("10.8.0."), lab.diagnostics()

    checks.assert_ok(checks.tunnel_checks(lab, ALIAS, tunnel_addr), lab)

    client.stop()
    rules = lab.rules()
    assert tunnel_addr not in rules and tunnel_addr not in lab.nft_ruleset(), lab.diagnostics()
    checks.assert_ok(checks.lan_checks(lab), lab)


@pytest.mark.parametrize("mode, example, device", [
    ("net30", "client.conf", "tun0"),
    ("p2p", "client.conf", "tun0"),
    ("tap", "client-tap.conf", "tap0"),
])
def test_other_topologies(lab, mode, example, device):  # noqa: F811
    """net30 and p2p tun (5th argument is the peer), and tap (gateway from route_vpn_gateway)."""
    lab.write_vpnsplit_config(provider=provider(device, alias_device="lo"))
    checks.start_listeners(lab)
    lab.openvpn_server(mode)
    lab.openvpn_client(example)
    tunnel_addr = lab.address_of(device)
    assert tunnel_addr, lab.diagnostics()

    checks.assert_ok(checks.tunnel_checks(lab, ALIAS, tunnel_addr), lab)


ALIAS6 = "fd10:192:8::1"


@pytest.mark.parametrize("mode, example, device", [("subnet", "client.conf", "tun0"), ("tap", "client-tap.conf", "tap0")])
def test_ipv6(lab, mode, example, device):  # noqa: F811
    """server-ipv6: the up hook takes ifconfig_ipv6_local (and on tap ifconfig_ipv6_remote, the
    gateway) from OpenVPN's environment; alias6 leaves as the tunnel's IPv6 address beside the
    IPv4 split, and fails closed once the client stops."""
    lab.write_vpnsplit_config(provider=provider(device, alias6=ALIAS6, alias_device="lo"))
    checks.start_listeners(lab)
    lab.openvpn_server(mode, ipv6=True)
    client = lab.openvpn_client(example)
    addr4, addr6 = lab.address_of(device), lab.address_of(device, family="-6")
    assert addr6 and addr6.startswith("fd00:8::"), lab.diagnostics()

    checks.assert_ok(checks.tunnel_checks(lab, ALIAS6, addr6) + checks.seen_from(lab, ALIAS, addr4), lab)

    client.stop()
    checks.assert_ok(checks.fail_closed_checks(lab, ALIAS6), lab)


def test_ifconfig_noexec_is_refused_and_nothing_applied(lab):  # noqa: F811
    """Issue 11, devices: with OpenVPN's `ifconfig-noexec` the device carries no address, and SNAT to
    the lease's would send from an address on no interface. The up hook refuses (naming the cause),
    OpenVPN stops on the failed hook, and vpnsplit applied nothing for the tunnel (strict = false, so
    not even the fail-closed skeleton: the kernel holds what it held before the client started)."""
    lab.write_vpnsplit_config(provider=provider(strict=False))
    lab.openvpn_server("subnet")
    before = (lab.rules(), lab.rules(family="-6"), lab.nft_ruleset())
    client = lab.openvpn_client("client.conf", options=["--ifconfig-noexec"], wait=False)
    deadline = time.monotonic() + 20
    while client.running and time.monotonic() < deadline:
        time.sleep(0.1)
    log = client.log()
    assert not client.running and client.ready_count() == 0, log
    assert "does not carry" in log and "ifconfig-noexec" in log, log
    assert (lab.rules(), lab.rules(family="-6"), lab.nft_ruleset()) == before, lab.diagnostics()
