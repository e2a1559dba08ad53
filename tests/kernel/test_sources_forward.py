"""Issue 6, parts 1, 2 and 4: source subnets leave through the tunnel SNAT-ed, fail closed,
reach the LAN only where configured; port forwards reach a service bound to the alias.

    ctr (10.20.1.5) --ctr0-- host --vpn0 (10.8.0.2, the "tunnel")-- far (10.8.0.1, 192.0.2.80)
                              |
                              +--eth0 (198.51.100.10)-- isp (198.51.100.1, 192.0.2.80 as well)

The "tunnel" is a veth (an Ethernet device, so a tap-style tunnel with a gateway); 192.0.2.80
exists on both sides, so only the source address the far end sees, and the counter on the isp
side, tell which way a packet went. The host runs with the strict reverse-path filter.
"""

import pytest

from tests.kernel.nslab import NetnsLab

PROTO = 118
CONFIG = """
[tunnel.vpn]
device   = "vpn0"
id       = 3
alias    = "10.192.8.1"
alias_device = "lo"
gateway  = "10.8.0.1"
sources  = ["10.20.1.0/24"]
lan      = ["198.51.100.0/24"]
forward  = ["tcp/8080", "udp/5353"]
"""
TABLE, PRIO = 10003, 10012  # derived from id = 3


def veth(a, a_if, a_addr, b, b_if, b_addr):
    a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    for ns, dev, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        ns.ip("addr", "add", addr, "dev", dev)
        ns.ip("link", "set", dev, "up")


@pytest.fixture
def world(ns, tmp_path):
    others = {name: NetnsLab(tmp_path / name) for name in ("ctr", "far", "isp")}
    try:
        ctr, far, isp = others["ctr"], others["far"], others["isp"]
        veth(ns, "ctr0", "10.20.1.1/24", ctr, "eth0", "10.20.1.5/24")
        veth(ns, "vpn0", "10.8.0.2/24", far, "eth0", "10.8.0.1/24")
        veth(ns, "eth0", "198.51.100.10/24", isp, "eth0", "198.51.100.1/24")
        ctr.ip("route", "add", "default", "via", "10.20.1.1")
        ns.ip("route", "add", "default", "via", "198.51.100.1")
        for side in (far, isp):
            side.ip("addr", "add", "192.0.2.80/32", "dev", "lo")
        isp.ip("route", "add", "10.20.1.0/24", "via", "198.51.100.10")
        ns.exec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", check=True)
        isp.nft("table inet count {\n chain c {\n type filter hook prerouting priority 0;\n"
                " ip saddr 10.20.1.0/24 ip daddr 192.0.2.80 counter\n }\n}\n")
        ns.write_config(CONFIG)
        yield ns, ctr, far, isp
    finally:
        for other in others.values():
            other.close()


def leaked(isp):
    """Packets from the source subnet to the internet host that reached the isp in the clear."""
    import json

    rules = json.loads(isp.exec("nft", "-j", "list", "chain", "inet", "count", "c", check=True).stdout)["nftables"]
    return next(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)


def received(listener_ns, address, port, sender, proto="udp", to=None):
    """(what the sender got, what a listener on *address* saw) for one datagram or connection to *to* (default: *address*)."""
    listener = listener_ns.listen(address, port, proto)
    try:
        sent = sender.send(to or address, port, proto)
        return sent, listener.communicate(timeout=10)[0].strip()
    finally:
        listener.kill()


def forwarding(ns, dev):
    return ns.exec("cat", f"/proc/sys/net/ipv4/conf/{dev}/forwarding", check=True).stdout.strip()


def test_sources_leave_through_the_tunnel_snated_and_fail_closed(world):
    ns, ctr, far, isp = world
    assert forwarding(ns, "ctr0") == "0"
    up = ns.vpnsplit("up", "vpn")
    assert up.returncode == 0, up.stderr
    assert (PRIO + 3, "10.20.1.0/24", TABLE, PROTO) in ns.rules(TABLE)
    assert forwarding(ns, "ctr0") == "1" and forwarding(ns, "vpn0") == "1"
    # a container's datagram arrives at the far end as the tunnel address, never at the isp
    assert received(far, "192.0.2.80", 5000, ctr) == ("sent", "10.8.0.2 hello")
    assert leaked(isp) == 0
    # ... and the LAN exception goes through the main table, un-NATed
    assert received(isp, "198.51.100.1", 5001, ctr) == ("sent", "10.20.1.5 hello")
    status = ns.vpnsplit("status", "--json")
    import json

    report = json.loads(status.stdout)["tunnels"][0]
    assert report["rp_filter"] == {"vpn0": 1, "ctr0": 1} and report["forwarding"] == {"vpn0": True, "ctr0": True}
    # tunnel down (strict): the container's traffic fails closed, nothing reaches the isp
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert forwarding(ns, "ctr0") == "0" and forwarding(ns, "vpn0") == "0"
    ns.exec("sysctl", "-qw", "net.ipv4.conf.ctr0.forwarding=1", check=True)  # even with forwarding forced back on
    for _ in range(3):
        ctr.send("192.0.2.80", 5000)
    assert leaked(isp) == 0
    assert (PRIO + 3, "10.20.1.0/24", TABLE, PROTO) in ns.rules(TABLE)
    # control: without vpnsplit's rules the same datagrams do leave by the isp
    ns.ip("rule", "del", "priority", str(PRIO + 3))
    ctr.send("192.0.2.80", 5000)
    assert leaked(isp) >= 1


def test_sources_reach_the_lan_only_if_the_config_says_so(world):
    ns, ctr, far, isp = world
    ns.write_config(CONFIG.replace('lan      = ["198.51.100.0/24"]\n', ""))
    assert ns.vpnsplit("up", "vpn").returncode == 0
    # without `lan`, the LAN is just another destination: into the tunnel, never onto the LAN
    assert received(isp, "198.51.100.1", 5001, ctr)[1] == "nothing"
    assert "via 10.8.0.1 dev vpn0" in ns.ip("route", "get", "198.51.100.1", "from", "10.20.1.5", "iif", "ctr0")


def test_port_forwards_reach_a_service_bound_to_the_alias(world):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        sent, seen = received(ns, "10.192.8.1", port, far, proto, to="10.8.0.2")
        assert (sent, seen) == ("sent", "10.8.0.1 hello"), proto
    # a port not forwarded does not reach it
    assert received(ns, "10.192.8.1", 9090, far, "tcp", to="10.8.0.2")[1] == "nothing"


def explain(ns, *args):
    import json

    proc = ns.vpnsplit("explain", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_explain_answers_from_the_kernel(world):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    alias = explain(ns, "10.192.8.1")
    assert (alias["rule"]["priority"], alias["tunnel"], alias["device"], alias["gateway"], alias["nat"]) == (PRIO + 1, "vpn", "vpn0", "10.8.0.1", "10.8.0.2")
    container = explain(ns, "10.20.1.5", "192.0.2.80")
    assert container["origin"] == "forwarded in via ctr0"
    assert (container["rule"]["priority"], container["device"], container["nat"]) == (PRIO + 3, "vpn0", "10.8.0.2")
    lan = explain(ns, "10.20.1.5", "198.51.100.1")
    assert (lan["rule"]["priority"], lan["table"], lan["device"], lan["nat"]) == (PRIO + 2, 254, "eth0", None)
    host = explain(ns, "198.51.100.10")
    assert (host["rule"]["table"], host["device"], host["nat"]) == (254, "eth0", None)
    assert ns.vpnsplit("down", "vpn").returncode == 0
    down = explain(ns, "10.192.8.1")
    assert (down["verdict"], down["strict_drop"], down["tunnel"]) == ("unreachable", True, "vpn")
    human = ns.vpnsplit("explain", "10.192.8.1").stdout
    assert "strict: tunnel vpn is down" in human
    bad = ns.vpnsplit("explain", "10.192.8")
    assert bad.returncode == 2 and "'10.192.8' is not an IP address" in bad.stderr
