"""Issue 6, parts 1, 2 and 4: source subnets leave through the tunnel SNAT-ed, fail closed,
reach the LAN only where configured; port forwards reach a service bound to the alias.
Every scenario runs for IPv4 and IPv6 in the same dual-stack world (the `fam` fixture).

    ctr (10.20.1.5, fd20:1::5) --ctr0-- host --vpn0 (10.8.0.2, fd08::2: the "tunnel")-- far (10.8.0.1, fd08::1)
                                         |
                                         +--eth0 (198.51.100.10, 2001:db8:51::10)-- isp (198.51.100.1, 2001:db8:51::1)

The "tunnel" is a veth (an Ethernet device, so a tap-style tunnel with a gateway); the internet
host (192.0.2.80, 2001:db8:2::80) exists on both far and isp, so only the source address the far
end sees, and the counter on the isp side, tell which way a packet went. The host runs with the
strict reverse-path filter (IPv4 only: IPv6 has none).
"""

import contextlib
import json
import types

import pytest

from tests.kernel.nslab import PROTO, NetnsLab

CONFIG = """
[tunnel.vpn]
device   = "vpn0"
id       = 3
alias    = "10.192.8.1"
alias6   = "fd10:192:8::1"
alias_device = "lo"
gateway  = "10.8.0.1"
gateway6 = "fd08::1"
sources  = ["10.20.1.0/24", "fd20:1::/64"]
lan      = ["198.51.100.0/24", "2001:db8:51::/64"]
forward  = ["tcp/8080", "udp/5353"]
"""
TABLE, PRIO = 10003, 10012  # derived from id = 3

# One family's addresses in the world above: a test body written against these runs for both.
FAMILIES = {
    4: types.SimpleNamespace(fam=4, internet="192.0.2.80", tunnel="10.8.0.2", far="10.8.0.1", uplink="198.51.100.10",
                             isp="198.51.100.1", ctr="10.20.1.5", sources="10.20.1.0/24", alias="10.192.8.1",
                             lan="198.51.100.0/24", server="203.0.113.2", any="all", host_len=32),
    6: types.SimpleNamespace(fam=6, internet="2001:db8:2::80", tunnel="fd08::2", far="fd08::1", uplink="2001:db8:51::10",
                             isp="2001:db8:51::1", ctr="fd20:1::5", sources="fd20:1::/64", alias="fd10:192:8::1",
                             lan="2001:db8:51::/64", server="2001:db8:113::2", any="all", host_len=128),
}


def veth(a, a_if, a_addrs, b, b_if, b_addrs):
    a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    for ns, dev, addrs in ((a, a_if, a_addrs), (b, b_if, b_addrs)):
        # no duplicate address detection: every IPv6 address, the link-local one too (neighbour
        # discovery needs it), is usable at once, so a datagram is on the wire when send returns
        ns.exec("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", check=True)
        for addr in addrs:
            ns.ip("addr", "add", addr, "dev", dev)
        ns.ip("link", "set", dev, "up")


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def fam(request):
    return FAMILIES[request.param]


def set_ipv6_forwarding(ns, on):
    """The host-wide IPv6 switch, the admin's (writing 0 also resets force_forwarding on every device)."""
    ns.exec("sysctl", "-qw", f"net.ipv6.conf.all.forwarding={int(on)}", check=True)


def internet(ns, far, isp, routed, counted):
    """The host's uplink eth0 to the isp (default routes, the strict reverse-path filter), the internet host
    on far and isp, the isp's routes back to the *routed* subnets, and its counter (leaked()) of packets
    to the internet host from the *counted* sources: (IPv4 ones, IPv6 ones) as nft set elements."""
    veth(ns, "eth0", ["198.51.100.10/24", "2001:db8:51::10/64"], isp, "eth0", ["198.51.100.1/24", "2001:db8:51::1/64"])
    ns.ip("route", "add", "default", "via", "198.51.100.1")
    ns.ip("-6", "route", "add", "default", "via", "2001:db8:51::1")
    for side in (far, isp):
        side.ip("addr", "add", "192.0.2.80/32", "dev", "lo")
        side.ip("addr", "add", "2001:db8:2::80/128", "dev", "lo")
    for net in routed:
        isp.ip("-6" if ":" in net else "-4", "route", "add", net, "via", "2001:db8:51::10" if ":" in net else "198.51.100.10")
    ns.exec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", check=True)
    isp.nft("table inet count {\n chain c {\n type filter hook prerouting priority 0;\n"
            f" ip saddr {{ {counted[0]} }} ip daddr 192.0.2.80 counter\n"
            f" ip6 saddr {{ {counted[1]} }} ip6 daddr 2001:db8:2::80 counter\n }}\n}}\n")


@contextlib.contextmanager
def neighbours(tmp_path):
    """The namespaces around the host: (ctr, far, isp), deleted on exit."""
    others = [NetnsLab(tmp_path / name) for name in ("ctr", "far", "isp")]
    try:
        yield others
    finally:
        for other in others:
            other.close()


@pytest.fixture
def world(ns, tmp_path):
    with neighbours(tmp_path) as (ctr, far, isp):
        veth(ns, "ctr0", ["10.20.1.1/24", "fd20:1::1/64"], ctr, "eth0", ["10.20.1.5/24", "fd20:1::5/64"])
        veth(ns, "vpn0", ["10.8.0.2/24", "fd08::2/64"], far, "eth0", ["10.8.0.1/24", "fd08::1/64"])
        ctr.ip("route", "add", "default", "via", "10.20.1.1")
        ctr.ip("-6", "route", "add", "default", "via", "fd20:1::1")
        internet(ns, far, isp, ("10.20.1.0/24", "fd20:1::/64"), ("10.20.1.0/24, 10.192.8.1", "fd20:1::/64, fd10:192:8::1"))
        # IPv6 forwarding stays off host-wide (all.forwarding = 0): vpnsplit switches force_forwarding per device
        ns.write_config(CONFIG)
        yield ns, ctr, far, isp


def leaked(isp):
    """Packets from the source subnets or the alias to the internet host that reached the isp in the clear."""
    rules = json.loads(isp.exec("nft", "-j", "list", "chain", "inet", "count", "c", check=True).stdout)["nftables"]
    return sum(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)


def received(listener_ns, address, port, sender, proto="udp", to=None, source=None):
    """(what the sender got, what a listener on *address* saw) for one datagram or connection to *to*
    (default: *address*), from a socket bound to *source* if given."""
    listener = listener_ns.listen(address, port, proto)
    try:
        sent = sender.send(to or address, port, proto, source=source)
        return sent, listener.communicate(timeout=10)[0].strip()
    finally:
        listener.kill()


def forwarding(ns, dev, fam=4):
    """The per-device switch vpnsplit uses for *fam*: IPv4 forwarding, IPv6 force_forwarding (read in the namespace)."""
    return ns.forwarding()[f"ipv4/{dev}/forwarding" if fam == 4 else f"ipv6/{dev}/force_forwarding"]


def test_alias_leaves_through_the_tunnel_and_fails_closed(world, fam):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    for proto in ("udp", "tcp"):
        assert received(far, fam.internet, 5003, ns, proto, source=fam.alias) == ("sent", f"{fam.tunnel} hello"), proto
    # tunnel down (strict): the alias stays on lo for its services, but nothing from it leaves
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert fam.alias in ns.addresses("lo")
    assert ns.send(fam.internet, 5003, source=fam.alias) in ("EHOSTUNREACH", "ENETUNREACH")
    assert leaked(isp) == 0
    # control: without vpnsplit's alias rule (and its backstop) the same datagram does leave by the isp
    ns.ip(f"-{fam.fam}", "rule", "del", "priority", str(PRIO + 1))
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "backstop", check=True)
    ns.send(fam.internet, 5003, source=fam.alias)
    assert leaked(isp) >= 1


def test_sources_leave_through_the_tunnel_snated_and_fail_closed(world, fam):
    ns, ctr, far, isp = world
    assert forwarding(ns, "ctr0", fam.fam) == "0"
    up = ns.vpnsplit("up", "vpn")
    assert up.returncode == 0, up.stderr
    assert (PRIO + 3, fam.sources, TABLE, PROTO) in ns.rules(TABLE, fam.fam)
    # forwarding switched on where needed: IPv4 forwarding, IPv6 force_forwarding
    assert forwarding(ns, "ctr0", fam.fam) == "1" and forwarding(ns, "vpn0", fam.fam) == "1"
    # a container's datagram arrives at the far end as the tunnel address, never at the isp
    assert received(far, fam.internet, 5000, ctr) == ("sent", f"{fam.tunnel} hello")
    assert leaked(isp) == 0
    # ... and the LAN exception goes through the main table, un-NATed
    assert received(isp, fam.isp, 5001, ctr) == ("sent", f"{fam.ctr} hello")
    report = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]
    assert report["rp_filter"] == {"vpn0": 1, "ctr0": 1}
    assert report["forwarding"] == report["forwarding6"] == {"vpn0": True, "ctr0": True}
    # tunnel down (strict): the container's traffic fails closed, nothing reaches the isp
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert forwarding(ns, "ctr0", fam.fam) == "0" and forwarding(ns, "vpn0", fam.fam) == "0"
    # even with forwarding forced back on
    ns.exec("sysctl", "-qw", f"net.ipv{fam.fam}.conf.ctr0.{'forwarding' if fam.fam == 4 else 'force_forwarding'}=1", check=True)
    for _ in range(3):
        ctr.send(fam.internet, 5000)
    assert leaked(isp) == 0
    assert (PRIO + 3, fam.sources, TABLE, PROTO) in ns.rules(TABLE, fam.fam)
    # control: without vpnsplit's rules (and its backstop) the same datagrams do leave by the isp
    ns.ip(f"-{fam.fam}", "rule", "del", "priority", str(PRIO + 3))
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "backstop", check=True)
    ctr.send(fam.internet, 5000)
    assert leaked(isp) >= 1


def recorded(ns):
    return json.loads((ns.state_dir / "vpn.json").read_text())


def test_ipv6_forwarding_switched_per_device_only_where_needed(world):
    """all.forwarding = 0: up switches force_forwarding on where IPv6 sources need it and was off,
    down switches exactly that back; the admin's switch, and RA acceptance (forwarding), stay."""
    ns, ctr, far, isp = world
    ns.exec("sysctl", "-qw", "net.ipv6.conf.vpn0.force_forwarding=1", check=True)  # the admin's, before vpnsplit
    before = ns.forwarding()
    assert before["ipv6/all/forwarding"] == "0" and before["ipv6/ctr0/force_forwarding"] == "0"
    # the far end is connected (main table): only forwarding stops the container reaching it
    assert received(far, "fd08::1", 5010, ctr, "tcp")[1] == "nothing"
    up = ns.vpnsplit("up", "vpn")
    assert up.returncode == 0, up.stderr
    assert "enable IPv6 forwarding (force_forwarding) on ctr0" in up.stderr and "(force_forwarding) on vpn0" not in up.stderr
    after = ns.forwarding()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {"ipv4/ctr0/forwarding": ("0", "1"), "ipv4/vpn0/forwarding": ("0", "1"), "ipv6/ctr0/force_forwarding": ("0", "1")}
    assert recorded(ns)["forwarding6"] == ["ctr0"]  # vpn0 was on already: the admin's
    # a TCP handshake needs both ways forwarded: ctr0 in, the replies in through vpn0
    assert received(far, "fd08::1", 5010, ctr, "tcp") == ("sent", "fd08::2 hello")
    assert received(far, "2001:db8:2::80", 5011, ctr, "tcp") == ("sent", "fd08::2 hello")
    report = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]
    assert (report["forwarding6"], report["forwarding6_all"], report["forwarding6_per_device"]) == ({"vpn0": True, "ctr0": True}, False, True)
    assert "rp_filter on ctr0: strict, forwarding on, IPv6 forwarding on (force_forwarding)" in ns.vpnsplit("status").stdout
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert ns.forwarding() == before  # ctr0 back off, the admin's vpn0 still on
    assert received(far, "fd08::1", 5014, ctr, "tcp")[1] == "nothing"  # a port of its own: 5010's socket may be in TIME_WAIT


def test_ipv6_forwarding_reset_by_all_forwarding_is_reported_and_repaired(world):
    """Writing net.ipv6.conf.all.forwarding = 0 resets every force_forwarding: check exits 3
    naming the device vpnsplit had switched, and up switches it on again."""
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    set_ipv6_forwarding(ns, False)  # as `sysctl --system` with all.forwarding = 0 in a file would
    assert forwarding(ns, "ctr0", 6) == forwarding(ns, "vpn0", 6) == "0"
    assert received(far, "fd08::1", 5012, ctr, "tcp")[1] == "nothing"
    check = ns.vpnsplit("check", "vpn")
    assert check.returncode == 3, check.stderr
    assert "IPv6 forwarding (force_forwarding) on ctr0 is off again" in check.stderr, check.stderr
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("check", "vpn").returncode == 0
    assert received(far, "fd08::1", 5012, ctr, "tcp") == ("sent", "fd08::2 hello")
    assert recorded(ns)["forwarding6"] == ["ctr0", "vpn0"]


def test_ipv6_forwarding_on_host_wide_switches_nothing(world):
    """all.forwarding = 1 (the admin's): vpnsplit switches no force_forwarding and records none."""
    ns, ctr, far, isp = world
    set_ipv6_forwarding(ns, True)
    before = ns.forwarding()
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert {k: v for k, v in ns.forwarding().items() if k.startswith("ipv6/")} == {k: v for k, v in before.items() if k.startswith("ipv6/")}
    assert recorded(ns)["forwarding6"] == []
    assert received(far, "fd08::1", 5013, ctr, "tcp") == ("sent", "fd08::2 hello")
    assert "IPv6 forwarding on (all.forwarding)" in ns.vpnsplit("status").stdout
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert ns.forwarding() == before


def test_down_keeps_ipv4_forwarding_the_admin_switched_on_host_wide_meanwhile(world):
    """Issue 11: `down` switched ctr0's forwarding off although the admin had since set
    net.ipv4.ip_forward = 1 (which rewrites every device's value, so "switched on after vpnsplit"
    cannot be seen per device): while all.forwarding = 1, down switches nothing off, and the
    container still reaches the LAN (its `lan` exception) through the main table."""
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert recorded(ns)["forwarding"] == ["ctr0", "vpn0"]
    ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    ipv4 = lambda: {k: v for k, v in ns.forwarding().items() if k.startswith("ipv4/")}  # noqa: E731 (IPv6's all is 0: its switches go)
    before = ipv4()
    down = ns.vpnsplit("down", "vpn")
    assert down.returncode == 0, down.stderr
    assert ipv4() == before and before["ipv4/ctr0/forwarding"] == "1", down.stderr
    assert received(isp, "198.51.100.1", 5015, ctr) == ("sent", "10.20.1.5 hello")
    ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=0", check=True)  # control: the admin's switch off again
    assert ns.vpnsplit("up", "vpn").returncode == 0 and ns.vpnsplit("down", "vpn").returncode == 0
    assert ns.forwarding()["ipv4/ctr0/forwarding"] == "0"


def test_sources_reach_the_lan_only_if_the_config_says_so(world, fam):
    ns, ctr, far, isp = world
    ns.write_config(CONFIG.replace('lan      = ["198.51.100.0/24", "2001:db8:51::/64"]\n', ""))
    assert ns.vpnsplit("up", "vpn").returncode == 0
    # without `lan`, the LAN is just another destination: into the tunnel, never onto the LAN
    assert received(isp, fam.isp, 5001, ctr)[1] == "nothing"
    assert f"via {fam.far} dev vpn0" in ns.ip(f"-{fam.fam}", "route", "get", fam.isp, "from", fam.ctr, "iif", "ctr0")


def test_port_forwards_reach_a_service_bound_to_the_alias(world, fam):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    # far knows only the tunnel: a TCP handshake completes only if the reply comes back through it
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        sent, seen = received(ns, fam.alias, port, far, proto, to=fam.tunnel)
        assert (sent, seen) == ("sent", f"{fam.far} hello"), proto
    # a port not forwarded does not reach it
    assert received(ns, fam.alias, 9090, far, "tcp", to=fam.tunnel)[1] == "nothing"


def explain(ns, *args):
    proc = ns.vpnsplit("explain", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_explain_answers_from_the_kernel(world, fam):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    alias = explain(ns, fam.alias)
    assert (alias["rule"]["priority"], alias["tunnel"], alias["device"], alias["gateway"], alias["nat"]) == (PRIO + 1, "vpn", "vpn0", fam.far, fam.tunnel)
    container = explain(ns, fam.ctr, fam.internet)
    assert container["origin"] == "forwarded in via ctr0"
    assert (container["rule"]["priority"], container["device"], container["nat"]) == (PRIO + 3, "vpn0", fam.tunnel)
    lan = explain(ns, fam.ctr, fam.isp)
    assert (lan["rule"]["priority"], lan["table"], lan["device"], lan["nat"]) == (PRIO + 2, 254, "eth0", None)
    host = explain(ns, fam.uplink)
    assert (host["rule"]["table"], host["device"], host["nat"]) == (254, "eth0", None)
    assert ns.vpnsplit("down", "vpn").returncode == 0
    down = explain(ns, fam.alias)
    assert (down["verdict"], down["strict_drop"], down["tunnel"]) == ("unreachable", True, "vpn")
    human = ns.vpnsplit("explain", fam.alias).stdout
    assert "strict: tunnel vpn is down" in human
    bad = ns.vpnsplit("explain", "10.192.8")
    assert bad.returncode == 2 and "'10.192.8' is not an IP address" in bad.stderr
