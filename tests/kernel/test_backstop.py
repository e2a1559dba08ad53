"""Issue 11 part 1: the netfilter backstop holds without the routing rules. Packets are counted
on the isp side of the uplink (0 is the figure), for IPv4 and IPv6 (the `fam` fixture), in the
dual-stack world of test_sources_forward:

- a strict alias and source subnet after a rule sweep (`ip rule flush`, the kernel's 32766/32767
  back: what systemd-networkd does to foreign rules);
- the default VPN's kill switch against a socket bound to the uplink device (SO_BINDTODEVICE,
  `ping -I eth0`), bound to the uplink address, and a rule sweep, tunnel up and down;
- published container ports (Docker -p: DNAT in prerouting, forwarded) answer through the uplink
  while the default VPN is on.

Each test ends with its control: without the backstop's rules the same packets do reach the isp.
"""

import json

import pytest

from tests.kernel.test_default_vpn import CONFIG as DEFAULT_CONFIG
from tests.kernel.test_default_vpn import CONNECT
from tests.kernel.test_sources_forward import fam, leaked, received, world  # noqa: F401 (fixtures)

# five datagrams to the internet host, from a socket bound to a device (SO_BINDTODEVICE) and/or an address
BOUND = """
import socket, sys
addr, device, source = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
if device:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
if source:
    s.bind((source, 0))
out = []
for _ in range(5):
    try:
        s.sendto(b"leak?", (addr, 6000)); out.append("sent")
    except OSError as e:
        out.append(str(e.errno))
print(" ".join(out))
"""


HOST_ON_CTR0 = {4: "10.20.1.1", 6: "fd20:1::1"}


def outside(isp):
    """A counter of every packet for the internet host that reaches the isp, IPv4 and IPv6."""
    isp.nft("table inet seen {\n chain c {\n type filter hook prerouting priority 0;\n"
            " ip daddr 192.0.2.80 counter\n ip6 daddr 2001:db8:2::80 counter\n }\n}\n")

    def count():
        rules = json.loads(isp.exec("nft", "-j", "list", "chain", "inet", "seen", "c", check=True).stdout)["nftables"]
        return sum(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)

    return count


def sweep(ns):
    """`ip rule flush` and the kernel's own rules back, both families: every rule of vpnsplit's is gone."""
    for version in ("-4", "-6"):
        ns.ip(version, "rule", "flush")
        ns.ip(version, "rule", "add", "priority", "32766", "lookup", "main")
        if version == "-4":
            ns.ip(version, "rule", "add", "priority", "32767", "lookup", "default")
    assert ns.rules() == []


def bound(ns, fam, device="", source=""):
    return ns.exec("python3", "-c", BOUND, fam.internet, device, source).stdout.strip()


def ping(ns, fam, device):
    return ns.exec("ping", f"-{fam.fam}", "-c", "2", "-i", "0.2", "-W", "1", "-I", device, fam.internet).returncode


def test_strict_alias_and_sources_hold_after_a_rule_sweep(world, fam):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    for state in ("up", "down"):
        if state == "down":
            assert ns.vpnsplit("down", "vpn").returncode == 0
        sweep(ns)
        bound(ns, fam, source=fam.alias)
        for _ in range(3):
            ctr.send(fam.internet, 5000)
        assert leaked(isp) == 0, state
        # what stays allowed: the host talking to its containers, the containers to the configured LAN
        # (while up: vpnsplit switches forwarding off when the tunnel goes down)
        assert received(ctr, fam.ctr, 5001, ns) == ("sent", f"{HOST_ON_CTR0[fam.fam]} hello"), state
        if state == "up":
            assert received(isp, fam.isp, 5002, ctr) == ("sent", f"{fam.ctr} hello")
        assert ns.vpnsplit(state, "vpn").returncode == 0  # the rules back
    # control: without the backstop's rules the alias leaks after a sweep
    sweep(ns)
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "backstop", check=True)
    bound(ns, fam, source=fam.alias)
    assert leaked(isp) >= 1


def test_kill_switch_holds_for_bound_sockets_and_a_rule_sweep(world, fam):
    ns, ctr, far, isp = world
    ns.write_config(DEFAULT_CONFIG)
    count = outside(isp)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "vpn").returncode == 0
    assert received(far, fam.internet, 5003, ns) == ("sent", f"{fam.tunnel} hello")  # the good path
    before = count()
    for state in ("up", "down"):
        if state == "down":
            assert ns.vpnsplit("down", "vpn").returncode == 0
        bound(ns, fam, device="eth0")
        bound(ns, fam, source=fam.uplink)
        bound(ns, fam, device="eth0", source=fam.uplink)
        assert ping(ns, fam, "eth0") != 0
        assert count() == before, f"bound, tunnel {state}"
        sweep(ns)
        bound(ns, fam)
        assert count() == before, f"sweep, tunnel {state}"
        assert received(isp, fam.isp, 5004, ns) == ("sent", f"{fam.uplink} hello")  # the LAN stays direct
        assert ns.vpnsplit(state, "vpn").returncode == 0  # the rules back
    # control: without the kill switch's rules a socket bound to the uplink leaks
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "killswitch", check=True)
    bound(ns, fam, device="eth0")
    assert count() > before


@pytest.mark.parametrize("rp_filter", [2])
def test_published_container_port_answers_through_the_uplink(world, fam, rp_filter):
    """Docker -p: the host DNATs its uplink address's port 8080 to a container; the container's
    replies are forwarded, so only a mark set in prerouting can keep them out of the default
    tunnel. (rp_filter 2, the systemd default: with 1 the DNAT-ed packet's reverse path is the
    tunnel and the kernel drops it before the mark is asked, unless src_valid_mark is set.)"""
    ns, ctr, far, isp = world
    ns.write_config(DEFAULT_CONFIG)
    ns.exec("sysctl", "-qw", f"net.ipv4.conf.all.rp_filter={rp_filter}", "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1", check=True)
    tables = "iptables" if fam.fam == 4 else "ip6tables"
    to = fam.ctr if fam.fam == 4 else f"[{fam.ctr}]"
    for port in (8000, 8001):
        ns.exec(tables, "-t", "nat", "-A", "PREROUTING", "-d", fam.uplink, "-p", "tcp", "--dport", str(port + 80),
                "-j", "DNAT", "--to-destination", f"{to}:{port}", check=True)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "vpn").returncode == 0
    for port in (8000, 8001):
        listener = ctr.listen(fam.ctr, port, "tcp")
        sent = isp.exec("python3", "-c", CONNECT.replace("7000", str(port + 80)), fam.uplink, fam.internet).stdout.strip()
        answered = (sent, listener.communicate(timeout=10)[0].strip())
        if port == 8000:
            assert answered == ("sent", f"{fam.internet} hi")
            # control: without the reply mark the answer is routed into the tunnel
            ns.exec("nft", "delete", "chain", "inet", "vpnsplit", "replies_pre", check=True)
        else:
            assert answered == ("", "nothing")


# one DNS query (type A) for argv[2] to the resolver argv[1]; prints "sent" or the error
QUERY = """
import socket, struct, sys
resolver, name = sys.argv[1], sys.argv[2]
wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\\0"
s = socket.socket(socket.AF_INET6 if ":" in resolver else socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!2H", 1, 1), (resolver, 53)); print("sent")
except OSError as e:
    print(e.errno)
"""
# the LAN's resolver (on-link: the home router) and one at the ISP (behind the uplink's default route)
RESOLVERS = {4: ("198.51.100.1", "203.0.113.53"), 6: ("2001:db8:51::1", "2001:db8:113::53")}


def test_a_vpn_server_name_resolves_through_the_kill_switch_and_no_other_query_does(world, fam):
    """OpenVPN `remote vpn.example.test` / WireGuard `Endpoint = vpn.example.test:51820` at boot: the
    tunnel's device does not exist yet and the kill switch is on. The client's query for its server's
    name (listed in `servers`) leaves by the uplink, to the LAN's resolver and to one off the LAN
    (rule 31992 gives the host's DNS main at the first route lookup, before any nft chain); a
    query for any other name does not. Controls: without rule 31992 the off-LAN query fails at once
    (the kill switch's unreachable default), without the names chain the LAN one is dropped."""
    ns, ctr, far, isp = world
    config = DEFAULT_CONFIG.replace('servers  = [', 'servers  = ["vpn.example.test", ').replace('"vpn0"', '"vpn9"')
    ns.write_config(config)
    isp.nft("table inet dns {\n chain c {\n type filter hook prerouting priority 0;\n udp dport 53 counter\n }\n}\n")

    def queries():
        out = json.loads(isp.exec("nft", "-j", "list", "chain", "inet", "dns", "c", check=True).stdout)["nftables"]
        return sum(e["counter"]["packets"] for r in out if "rule" in r for e in r["rule"]["expr"] if "counter" in e)

    def query(resolver, name):
        return ns.exec("python3", "-c", QUERY, resolver, name).stdout.strip()

    lan, isp_resolver = RESOLVERS[fam.fam]
    assert ns.vpnsplit("default", "vpn").returncode == 0  # before the first connect: the kill switch alone
    assert ns.vpnsplit("check").returncode == 0
    for resolver in (lan, isp_resolver):
        assert query(resolver, "vpn.example.test") == "sent"
    assert queries() == 2
    for name in ("other.example.test", "vpn.example.test.evil.example", "example.test", "vpn.example.tes"):
        for resolver in (lan, isp_resolver):
            query(resolver, name)
    assert queries() == 2
    # control: without rule 31992 the query to the resolver off the LAN meets the kill switch at once
    ns.ip(f"-{fam.fam}", "rule", "del", "priority", "31992")
    assert ns.vpnsplit("check").returncode == 3
    assert query(isp_resolver, "vpn.example.test") in ("113", "101")  # EHOSTUNREACH, ENETUNREACH
    assert ns.vpnsplit("up", "vpn").returncode == 0
    # control: without the names chain the server's name is refused like any other
    ns.exec("nft", "delete", "chain", "inet", "vpnsplit", "client_names", check=True)
    assert ns.vpnsplit("check").returncode == 3
    for resolver in (lan, isp_resolver):
        query(resolver, "vpn.example.test")
    assert queries() == 2
