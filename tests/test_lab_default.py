"""Issue 6 part 3: the host-wide default VPN (`vpnsplit default NAME`) with real clients,
OpenVPN 2.6 and wg-quick + wireguard-go, checked by packets that arrived.

The server exception is never configured here: OpenVPN's trusted_ip and the WireGuard
peer's endpoint are read by vpnsplit itself. Both clients carry IPv4 and IPv6 (OpenVPN's
server-ipv6, wg0.conf's fd09::2/64), and every check runs for both families. Each scenario:
default on -> an unbound socket reaches the internet through the tunnel as the tunnel's
address, the LAN stays direct, a connection from the internet to the uplink address is
answered through the uplink; the client stops -> the kill switch (strict) refuses unbound
sends at once and lets nothing out in the clear; the client comes back -> it reaches its
server through the kill switch and carries the host again; --off -> the host's rules and
routes of both families and its nft ruleset are byte-for-byte what they were before, and
the isp counters (zero until then) do count its plain traffic.

Run one alone:  .venv/bin/python -m pytest tests/test_lab_default.py -k wireguard -v
"""

import json
import re

import pytest

from tests.lab import checks
from tests.lab.checks import PLAIN, Check
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.netns import SERVER, TARGET
from tests.test_lab_wireguard import WG_ADDR, WG_ALIAS, wg_tunnel

pytestmark = pytest.mark.lab

OVPN_ADDRS = {4: "10.8.0.50", 6: "fd00:8::50"}  # pinned (ccd), so a new connection gets the same addresses
WG_ADDRS = {4: "10.9.0.2", 6: "fd09::2"}  # Address in configs/wireguard/wg0.conf
UNREACHABLE = ("error EHOSTUNREACH", "error ENETUNREACH")  # refused at once by the kill switch, never a timeout


class OpenVPNClient:
    name, addrs = "provider", OVPN_ADDRS

    def __init__(self, lab):
        self.lab = lab
        self.device = "tun0"
        lab.write_vpnsplit_config(provider=dict(device=self.device, table=100, priority=1000))
        lab.openvpn_server("subnet", address=OVPN_ADDRS[4], ipv6=True, address6=OVPN_ADDRS[6])

    def start(self):
        self.client = self.lab.openvpn_client("client.conf")

    def stop(self):
        self.client.stop()


class WireGuardClient:
    name, addrs = "wg", WG_ADDRS

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


def host_dump(lab, device):
    """The host's routing as `ip` and `nft` print it: rules and every table of both families, nft.
    Left out: the local route of the tunnel device's link-local address, which a restarted client's
    new device gets at random (no hardware address to derive it from; its place in the dump follows
    the address) — the kernel's doing, not vpnsplit's."""
    dump = {f"ip -{f} rule": lab.rules(family=f"-{f}") for f in PLAIN}
    dump.update({f"ip -{f} route show table all": lab.ip("host", f"-{f}", "route", "show", "table", "all") for f in PLAIN})
    dump["ip -6 route show table all"] = re.sub(rf"(?m)^local fe80::[0-9a-f:]+ dev {device} table local .*\n", "",
                                               dump["ip -6 route show table all"])
    return {**dump, "nft list ruleset": lab.nft_ruleset()}


def inbound(lab, p, protos=checks.PROTOS):
    """A connection from the internet side (the isp's public address) to the host's uplink address."""
    return [Check(f"{proto.upper()} from {p.internet} (internet side) -> host {p.host} answered, sees", p.internet,
                  lab.whoami(p.internet, p.host, proto, role="isp")) for proto in protos]


def lan(lab, p):
    return [*checks.seen_from(lab, p.host, p.host, dst=p.neighbour, label=f"LAN address {p.host}"),
            *checks.seen_from(lab, p.unbound, p.host, dst=p.neighbour, label="an unbound socket")]


def in_the_clear(lab, probe, control=False):
    """Run *probe* (returns Checks) and count what reached the isp link meanwhile, per family:
    the probes' packets to the internet host, whatever their source, taking the plain path.
    None may; with *control* the probes take the plain path and the counters must see them."""
    counter = lab.isp_counter([p.everything for p in PLAIN.values()])
    found = probe()
    counts = counter.counts()
    counter.remove()
    return found + [Check(f"IPv{f} packets to the internet host on the isp link (plain path)", "> 0" if control else "0",
                          str(n), passed=(n > 0) == control) for f, p in PLAIN.items() for n in [counts[p.everything]]]


def carried(lab, addrs):
    """Default VPN up: the host's unbound traffic of both families goes through the tunnel as the
    tunnel's address of that family, nothing of it via the isp; the LAN and inbound connections to
    the uplink addresses stay direct."""
    return in_the_clear(lab, lambda: [c for f, p in PLAIN.items() for c in [
        *checks.seen_from(lab, p.unbound, addrs[f], label="an unbound socket"), *lan(lab, p), *inbound(lab, p)]])


def killed(lab):
    """Client stopped, strict: unbound traffic of both families is refused at once, the isp sees
    none of it; the LAN and inbound IPv4 connections to the uplink address still work (IPv6 ones
    are not answered while the tunnel is down: their reply's first route lookup meets the kill
    switch before the reply mark could send it to main, README, rule 32001)."""
    def probe():
        found = [Check(f"{proto.upper()} from an unbound IPv{f} socket with the tunnel down", " or ".join(UNREACHABLE), seen,
                       passed=seen in UNREACHABLE)
                 for f, p in PLAIN.items() for proto in checks.PROTOS for seen in [lab.whoami(p.unbound, p.target, proto)]]
        return found + [c for p in PLAIN.values() for c in lan(lab, p)] + inbound(lab, PLAIN[4], ("tcp",))
    return in_the_clear(lab, probe)


@pytest.mark.parametrize("kind", [OpenVPNClient, WireGuardClient], ids=["openvpn", "wireguard"])
def test_default_vpn_with_a_real_client(lab, kind):  # noqa: F811
    vpn = kind(lab)
    checks.start_listeners(lab)
    lab.listen("host", [p.host for p in PLAIN.values()])
    vpn.start()
    assert {f: lab.address_of(vpn.device, family=f"-{f}") for f in PLAIN} == vpn.addrs, lab.diagnostics()
    # the up hook recorded the server itself: OpenVPN's trusted_ip, the WireGuard peer's endpoint
    lease = json.loads(lab.vpnsplit("status", vpn.name, "--json").stdout)["tunnels"][0]["lease"]
    assert lease["servers"] == [SERVER], lease
    before = host_dump(lab, vpn.device)

    lab.vpnsplit("default", vpn.name)
    assert server_excepted(lab), f"server exception not taken from the client\n{lab.diagnostics()}"
    checks.assert_ok(carried(lab, vpn.addrs), lab)

    vpn.stop()
    assert server_excepted(lab), f"the server exception must outlive the tunnel\n{lab.diagnostics()}"
    checks.assert_ok(killed(lab), lab)

    vpn.start()  # the client reaches its server through the kill switch: no loop into the tunnel
    checks.assert_ok(carried(lab, vpn.addrs), lab)
    assert lab.vpnsplit("check", check=False).returncode == 0, lab.vpnsplit("status", check=False).stdout

    lab.vpnsplit("default", "--off")
    after = host_dump(lab, vpn.device)
    assert after == before, "\n".join(f"--- {k} before\n{before[k]}--- after\n{after[k]}" for k in before if before[k] != after[k])
    # the host's own path again, and the control: the same counters do see its plain traffic
    checks.assert_ok(in_the_clear(lab, lambda: [c for p in PLAIN.values() for c in checks.lan_checks(lab, host=p.host)],
                                  control=True), lab)


SECOND_SERVER = "203.0.113.3"  # the other tunnel's server: no rule 32002 of the default VPN covers it


def test_another_tunnels_server_is_not_routed_into_the_default_vpn(lab):  # noqa: F811
    """Issue 11: another tunnel's VPN server was routed into the default tunnel, so that tunnel died
    with it. Here a WireGuard tunnel (FwMark = CLIENT_MARK, configs/wireguard/wg0.conf) talks to a
    server the default VPN (OpenVPN) knows nothing of; its alias reaches the internet through it
    while the default tunnel is up, still once that is down (kill switch on), and after its own
    restart then (a first handshake, before wireguard-go knows its source address: rule 32001's
    `from <uplink>` cannot help it). Control: without rule 31990 (CLIENT_MARK -> main) that
    restart's handshake meets the kill switch and the tunnel dies with the default."""
    lab.ip("vpn", "addr", "add", f"{SECOND_SERVER}/24", "dev", "eth0")
    wg, _ = lab.wireguard_pair(endpoint_host=SECOND_SERVER)
    lab.write_vpnsplit_config(provider=dict(device="tun0", table=100, priority=1000, default=True),
                              wg=wg_tunnel(wg.ifname))
    checks.start_listeners(lab)
    lab.vpnsplit("up", "--all")
    lab.openvpn_server("subnet")
    ovpn = lab.openvpn_client("client.conf")
    wg.up()
    assert not any(SECOND_SERVER in line for line in lab.rules().splitlines() if line.startswith("32002:")), lab.rules()
    checks.assert_ok(checks.seen_from(lab, WG_ALIAS, WG_ADDR, protos=("udp",)), lab)
    ovpn.stop()
    checks.assert_ok(checks.seen_from(lab, WG_ALIAS, WG_ADDR, protos=("udp",)), lab)

    def restarted():
        wg.down()
        wg.up()
        return lab.whoami(WG_ALIAS, TARGET, "udp", timeout=2.0)

    assert restarted() == WG_ADDR, lab.diagnostics()
    lab.ip("host", "rule", "del", "priority", "31990")
    assert restarted() != WG_ADDR and "31990:" not in lab.rules(), "control: the tunnel kept working without rule 31990"
