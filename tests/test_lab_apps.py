"""Issue 16 in the lab: a program under `vpnsplit run` through a real OpenVPN or wg-quick tunnel (wireguard-go),
unbound sockets and ones bound to the uplink's address, IPv4 and IPv6; the same program outside it; fail closed once the tunnel is down.

Run one alone:  .venv/bin/python -m pytest tests/test_lab_apps.py -v
"""

import sys

import pytest

from tests.kernel.applab import SPAWN, Apps, app_cgroup  # noqa: F401 (fixture)
from tests.lab import checks
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.lab import PROBE, PROBE_PORT
from tests.lab.netns import HOST_ADDR, HOST_ADDR6, TARGET, TARGET6

pytestmark = pytest.mark.lab


def ask(apps, proto, unbound, target, tunnel="vpn", child=False):
    """What the internet host saw of one probe from an unbound socket (a program of *tunnel*, None: outside)."""
    cmd = [*([sys.executable, "-c", SPAWN] if child else []), sys.executable, PROBE, "ask", proto, unbound, target, str(PROBE_PORT), "2"]
    return apps.run(*cmd, tunnel=tunnel).stdout.split()[-2:]


def wireguard(lab):
    client, _ = lab.wireguard_pair()
    lab.write_vpnsplit_config(vpn=dict(device=client.ifname, table=101, priority=1100, app_slot=1))
    return client.up, client.down, client.ifname


def openvpn(lab):
    lab.write_vpnsplit_config(vpn=dict(device="tun0", table=100, priority=1000, app_slot=1))
    lab.openvpn_server("subnet", ipv6=True)
    clients = []
    return lambda: clients.append(lab.openvpn_client("client.conf")), lambda: clients.pop().stop(), "tun0"


@pytest.mark.parametrize("vpn", [openvpn, wireguard])
def test_program_in_the_tunnel_and_fail_closed(lab, app_cgroup, vpn):  # noqa: F811
    up, down, device = vpn(lab)
    apps = Apps(lab.ns["host"], lab.hook_env, app_cgroup)
    checks.start_listeners(lab)
    up()
    addr4, addr6 = lab.address_of(device), lab.address_of(device, family="-6")
    assert addr4 and addr6, lab.diagnostics()
    isp = lab.isp_counter([HOST_ADDR, HOST_ADDR6, addr4, addr6])
    for unbound, target, tunnel_addr in (("0.0.0.0", TARGET, addr4), ("::", TARGET6, addr6)):
        for proto in ("tcp", "udp"):
            assert ask(apps, proto, unbound, target)[-1] == tunnel_addr, lab.diagnostics()
            assert ask(apps, proto, unbound, target, child=True)[-1] == tunnel_addr
    # bound to the uplink's address while up: SNAT-ed to the tunnel address (the real peer drops any other source)
    for bound, target, tunnel_addr in ((HOST_ADDR, TARGET, addr4), (HOST_ADDR6, TARGET6, addr6)):
        for proto in ("tcp", "udp"):
            assert ask(apps, proto, bound, target)[-1] == tunnel_addr, (proto, bound, lab.diagnostics())
    assert isp["any"] == 0
    # the same program outside the tunnel: the uplink address, by the isp
    for unbound, target, uplink in (("0.0.0.0", TARGET, HOST_ADDR), ("::", TARGET6, HOST_ADDR6)):
        assert ask(apps, "tcp", unbound, target, tunnel=None)[-1] == uplink
    plain = isp["any"]
    assert plain > 0
    down()
    for unbound, target in (("0.0.0.0", TARGET), ("::", TARGET6)):
        for proto in ("tcp", "udp"):
            assert ask(apps, proto, unbound, target)[0] == "error", (proto, unbound)
    assert isp["any"] == plain, lab.diagnostics()
