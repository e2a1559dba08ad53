"""Issue 6 part 3: the host-wide default VPN (`vpnsplit default NAME`) with real clients,
OpenVPN 2.6 and wg-quick + wireguard-go, checked by packets that arrived.

The server exception is never configured here: OpenVPN's trusted_ip and the WireGuard
peer's endpoint are read by vpnsplit itself. Each scenario: default on -> an unbound socket
reaches the internet through the tunnel, the LAN stays direct, a connection from the
internet to the uplink address is answered through the uplink; the client stops -> the
kill switch (strict) lets nothing out in the clear; the client comes back -> it reaches its
server through the kill switch and carries the host again; --off -> the host's routing is
byte-for-byte what it was before.

Run one alone:  .venv/bin/python -m pytest tests/test_lab_default.py -k wireguard -v
"""

import json

import pytest

from tests.lab import checks
from tests.lab.checks import Check
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.netns import HOST_ADDR, ISP_WAN, LAN_NEIGHBOUR, SERVER

pytestmark = pytest.mark.lab

OVPN_ADDR = "10.8.0.50"  # pinned, so a new connection gets the same address
WG_ADDR = "10.9.0.2"  # Address in configs/wireguard/wg0.conf
UNREACHABLE = ("error EHOSTUNREACH", "error ENETUNREACH")  # refused at once by the kill switch, never a timeout


class OpenVPNClient:
    name, addr = "provider", OVPN_ADDR

    def __init__(self, lab):
        self.lab = lab
        self.device = "tun0"
        lab.write_vpnsplit_config(provider=dict(device=self.device, table=100, priority=1000))
        lab.openvpn_server("subnet", address=OVPN_ADDR)

    def start(self):
        self.client = self.lab.openvpn_client("client.conf")

    def stop(self):
        self.client.stop()


class WireGuardClient:
    name, addr = "wg", WG_ADDR

    def __init__(self, lab):
        self.client, _ = lab.wireguard_pair()
        self.device = self.client.ifname
        lab.write_vpnsplit_config(wg=dict(device=self.device, table=101, priority=1100))

    def start(self):
        self.client.up()

    def stop(self):
        self.client.down()


def server_excepted(lab):
    """The default VPN's rule that keeps the VPN's own packets to its server out of the tunnel."""
    return any(line.startswith("32002:") and f"from all to {SERVER} lookup main" in line for line in lab.rules().splitlines())


def host_dump(lab):
    """The host's routing as `ip` and `nft` print it: rules, every IPv4 table, IPv6 main, nft."""
    return {
        "ip -4 rule": lab.rules(), "ip -6 rule": lab.rules(family="-6"),
        "ip -4 route show table all": lab.ip("host", "-4", "route", "show", "table", "all"),
        "ip -6 route show table main": lab.ip("host", "-6", "route", "show", "table", "main"),
        "nft list ruleset": lab.nft_ruleset(),
    }


def inbound(lab, protos=checks.PROTOS):
    """A connection from the internet side (the isp's public address) to the host's uplink address."""
    return [Check(f"{p.upper()} from {ISP_WAN} (internet side) -> host {HOST_ADDR} answered, sees", ISP_WAN,
                  lab.whoami(ISP_WAN, HOST_ADDR, p, role="isp")) for p in protos]


def lan(lab):
    return [*checks.seen_from(lab, HOST_ADDR, HOST_ADDR, dst=LAN_NEIGHBOUR, label=f"LAN address {HOST_ADDR}"),
            *checks.seen_from(lab, "0.0.0.0", HOST_ADDR, dst=LAN_NEIGHBOUR, label="an unbound socket")]


def carried(lab, tunnel_addr):
    """Default VPN up: the host's unbound traffic goes through the tunnel, nothing of it via the isp."""
    counter = lab.isp_counter([HOST_ADDR])
    found = [*checks.seen_from(lab, "0.0.0.0", tunnel_addr, label="an unbound socket"), *lan(lab), *inbound(lab)]
    counts = counter.counts()
    counter.remove()
    found.append(Check("packets to the internet host on the isp link (plain path)", "0", str(counts["any"])))
    return found


def killed(lab):
    """Client stopped, strict: unbound traffic is refused at once, the isp sees none of it;
    the LAN and inbound connections to the uplink address still work."""
    counter = lab.isp_counter([HOST_ADDR])
    found = [Check(f"{p.upper()} from an unbound socket with the tunnel down", " or ".join(UNREACHABLE), seen, passed=seen in UNREACHABLE)
             for p in checks.PROTOS for seen in [lab.whoami("0.0.0.0", proto=p)]]
    found += [*lan(lab), *inbound(lab, ("tcp",))]
    counts = counter.counts()
    counter.remove()
    found.append(Check("packets to the internet host on the isp link (plain path)", "0", str(counts["any"])))
    return found


@pytest.mark.parametrize("kind", [OpenVPNClient, WireGuardClient], ids=["openvpn", "wireguard"])
def test_default_vpn_with_a_real_client(lab, kind):  # noqa: F811
    vpn = kind(lab)
    checks.start_listeners(lab)
    lab.listen("host", [HOST_ADDR])
    vpn.start()
    assert lab.address_of(vpn.device) == vpn.addr, lab.diagnostics()
    # the up hook recorded the server itself: OpenVPN's trusted_ip, the WireGuard peer's endpoint
    lease = json.loads(lab.vpnsplit("status", vpn.name, "--json").stdout)["tunnels"][0]["lease"]
    assert lease["servers"] == [SERVER], lease
    before = host_dump(lab)

    lab.vpnsplit("default", vpn.name)
    assert server_excepted(lab), f"server exception not taken from the client\n{lab.diagnostics()}"
    checks.assert_ok(carried(lab, vpn.addr), lab)

    vpn.stop()
    assert server_excepted(lab), f"the server exception must outlive the tunnel\n{lab.diagnostics()}"
    checks.assert_ok(killed(lab), lab)

    vpn.start()  # the client reaches its server through the kill switch: no loop into the tunnel
    checks.assert_ok(carried(lab, vpn.addr), lab)
    assert lab.vpnsplit("check", check=False).returncode == 0, lab.vpnsplit("status", check=False).stdout

    lab.vpnsplit("default", "--off")
    after = host_dump(lab)
    assert after == before, "\n".join(f"--- {k} before\n{before[k]}--- after\n{after[k]}" for k in before if before[k] != after[k])
    checks.assert_ok(checks.lan_checks(lab), lab)
