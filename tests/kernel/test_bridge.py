"""Issue 15 part 1: `bridge = true` — vpnsplit creates br-NAME with its address at `up --all`,
before any VPN client runs; a container attached to it leaves through the tunnel as the tunnel
address (IPv4 and IPv6) and fails closed while the tunnel is down; `down` leaves the bridge; a
config without the section removes a bridge vpnsplit created, never one it did not create.

    ctr (10.20.3.5, fd20:3::5) --veth vctr-- br-vpn (10.20.3.1/24, fd20:3::1/64, created by vpnsplit)
                                              host --vpn0 (10.8.0.2, fd08::2: the "tunnel", made later)-- far
                                               |
                                               +--eth0 (198.51.100.10, 2001:db8:51::10)-- isp

As in test_sources_forward, the internet host (192.0.2.80, 2001:db8:2::80) exists on far and isp;
a counter on the isp side sees any packet from the bridge's subnets.
"""

import json

import pytest

from tests.kernel.nslab import PROTO, run
from tests.kernel.test_default_vpn import CONFIG as VPN
from tests.kernel.test_sources_forward import FAMILIES, internet, leaked, neighbours, received, veth

CONFIG = VPN + "bridge   = true\n"
TABLE, PRIO = 10003, 10012
BRIDGE, SUBNETS = "br-vpn", {4: "10.20.3.0/24", 6: "fd20:3::/64"}
CTR = {4: "10.20.3.5", 6: "fd20:3::5"}


@pytest.fixture
def world(ns, tmp_path):
    with neighbours(tmp_path) as (ctr, far, isp):
        internet(ns, far, isp, ("10.20.3.0/24", "fd20:3::/64"), ("10.20.3.0/24", "fd20:3::/64"))
        ns.write_config(CONFIG)
        yield ns, ctr, far, isp


def link(ns, dev):
    """`ip -d -j link show DEV` of the namespace, or None if there is no such device."""
    proc = ns.exec("ip", "-d", "-j", "link", "show", dev)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def attach(ns, ctr, bridge=BRIDGE, dev="vctr"):
    """A container: a veth from its namespace whose host end is a port of *bridge*."""
    veth(ns, dev, [], ctr, "eth0", ["10.20.3.5/24", "fd20:3::5/64"])
    ns.ip("link", "set", dev, "master", bridge)
    ctr.ip("route", "add", "default", "via", "10.20.3.1")
    ctr.ip("-6", "route", "add", "default", "via", "fd20:3::1")


def addresses(ns, dev):
    """The global addresses on *dev* (the kernel adds an IPv6 link-local one to a bridge by itself)."""
    return [a for a in ns.addresses(dev) if not a.startswith("fe80:")]


def steady(ns):
    """ns.dump() without what the kernel adds by itself, at its own pace, once a bridge is up: its IPv6
    link-local address and that address's route (after duplicate address detection)."""
    dump = ns.dump()
    dump["routes"] = [r for r in dump["routes"] if not str(r.get("RTA_DST", "")).startswith("fe80:")]
    dump["addresses"] = [a for a in dump["addresses"] if not str(a[1]).startswith("fe80:")]
    return dump


def connect_tunnel(ns, far):
    veth(ns, "vpn0", ["10.8.0.2/24", "fd08::2/64"], far, "eth0", ["10.8.0.1/24", "fd08::1/64"])


def recorded(ns):
    return json.loads((ns.state_dir / "bridges").read_text())


def test_bridge_created_at_boot_carries_a_container_through_the_tunnel_and_fails_closed(world):
    ns, ctr, far, isp = world
    # at boot, before any VPN client: the bridge exists, addressed, up without carrier
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0, proc.stderr
    br = link(ns, BRIDGE)
    assert br and br["linkinfo"]["info_kind"] == "bridge", br
    assert "UP" in br["flags"]  # a bridge without ports: NO-CARRIER on older kernels, which changes nothing here
    assert addresses(ns, BRIDGE) == ["10.20.3.1", "fd20:3::1"]
    assert recorded(ns) == {BRIDGE: {"tunnel": "vpn", "created": True, "addresses": ["10.20.3.1/24", "fd20:3::1/64"]}}
    for fam in (4, 6):
        assert (PRIO + 3, SUBNETS[fam], TABLE, PROTO) in ns.rules(TABLE, fam)
    # a container attaches before the tunnel exists: refused at once, nothing on the isp link
    attach(ns, ctr)
    for fam in (4, 6):
        assert ctr.send(FAMILIES[fam].internet, 5000) in ("sent", "EHOSTUNREACH", "ENETUNREACH")
    assert leaked(isp) == 0
    # the tunnel comes up: the container reaches the internet host through it, as the tunnel address
    connect_tunnel(ns, far)
    proc = ns.vpnsplit("up", "vpn")
    assert proc.returncode == 0, proc.stderr
    for fam in (4, 6):
        f = FAMILIES[fam]
        assert received(far, f.internet, 5001, ctr) == ("sent", f"{f.tunnel} hello"), fam
        assert received(far, f.internet, 5002, ctr, "tcp") == ("sent", f"{f.tunnel} hello"), fam
    assert leaked(isp) == 0
    # down: the bridge stays, addressed, with its port; the container's traffic fails closed
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert link(ns, "vctr")["master"] == BRIDGE and addresses(ns, BRIDGE) == ["10.20.3.1", "fd20:3::1"]
    for fam in (4, 6):
        for _ in range(3):
            ctr.send(FAMILIES[fam].internet, 5003)
    assert leaked(isp) == 0
    # control: without vpnsplit's source rules and backstop the same datagrams do reach the isp
    for fam in (4, 6):
        ns.ip(f"-{fam}", "rule", "del", "priority", str(PRIO + 3))
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "backstop", check=True)
    for opt in ("net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1"):
        ns.exec("sysctl", "-qw", opt, check=True)
    for fam in (4, 6):
        ctr.send(FAMILIES[fam].internet, 5003)
    assert leaked(isp) >= 2


def test_up_all_again_changes_nothing_check_sees_a_removed_address_and_up_puts_it_back(world):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "--all").returncode == 0
    before = steady(ns)
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0 and "already in place" in proc.stderr, proc.stderr
    assert steady(ns) == before
    report = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]["bridge"]
    assert report == {"name": BRIDGE, "present": True, "up": True, "created_by_vpnsplit": True,
                      "addresses": ["10.20.3.1/24", "fd20:3::1/64"], "ports": []}
    assert "  bridge br-vpn: up, 10.20.3.1/24 fd20:3::1/64, no ports, created by vpnsplit" in ns.vpnsplit("status").stdout
    assert ns.vpnsplit("check").returncode == 0
    ns.ip("addr", "del", "10.20.3.1/24", "dev", BRIDGE)
    proc = ns.vpnsplit("check")
    assert proc.returncode == 3 and "bridge br-vpn lacks its address 10.20.3.1/24 (vpnsplit up vpn puts it back)" in proc.stderr
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0 and "add address 10.20.3.1/24 to bridge br-vpn" in proc.stderr, proc.stderr
    assert addresses(ns, BRIDGE) == ["10.20.3.1", "fd20:3::1"]


OTHER = """
[tunnel.other]
device = "tun7"
id     = 7
bridge = "br-mine"
"""
UNRELATED = '[tunnel.keep]\ndevice = "tun9"\nid = 9\n'


def test_a_removed_section_removes_only_the_bridge_vpnsplit_created_once_nothing_is_attached(world):
    ns, ctr, far, isp = world
    ns.ip("link", "add", "br-mine", "type", "bridge")  # the admin's bridge, named by section other
    ns.write_config(CONFIG + OTHER + UNRELATED)
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0, proc.stderr
    assert addresses(ns, "br-mine") == ["10.20.7.1"]
    assert {b: e["created"] for b, e in recorded(ns).items()} == {BRIDGE: True, "br-mine": False}
    # both sections removed while a container is attached to br-vpn: it stays (and stays recorded)
    attach(ns, ctr)
    ns.write_config(UNRELATED)
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0, proc.stderr
    assert "bridge br-vpn stays: no section names it, but vctr is attached" in proc.stderr
    assert link(ns, BRIDGE) is not None and list(recorded(ns)) == [BRIDGE]
    # the admin's bridge stays, without the address vpnsplit put on it
    assert link(ns, "br-mine") is not None and addresses(ns, "br-mine") == []
    # detached: the next run removes the bridge vpnsplit created, and forgets it
    ns.ip("link", "del", "vctr")
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0 and "delete bridge br-vpn" in proc.stderr, proc.stderr
    assert link(ns, BRIDGE) is None and link(ns, "br-mine") is not None
    assert recorded(ns) == {}


def test_a_device_of_the_bridges_name_that_is_no_bridge_is_refused(world):
    ns, ctr, far, isp = world
    ns.ip("link", "add", BRIDGE, "type", "veth", "peer", "name", "brpeer")
    before = ns.dump()
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 2 and "bridge = 'br-vpn': that device exists and is a veth" in proc.stderr, proc.stderr
    assert ns.dump() == before


def test_up_of_a_connected_tunnel_creates_the_bridge_and_forwards_through_it_in_the_same_run(world):
    """The bridge's forwarding switch is planned before the bridge exists (this run creates it)."""
    ns, ctr, far, isp = world
    connect_tunnel(ns, far)
    proc = ns.vpnsplit("up", "vpn")
    assert proc.returncode == 0, proc.stderr
    assert "create bridge br-vpn" in proc.stderr and "enable IPv4 forwarding on br-vpn" in proc.stderr, proc.stderr
    assert json.loads((ns.state_dir / "vpn.json").read_text())["forwarding"] == ["br-vpn", "vpn0"]
    attach(ns, ctr)
    for fam in (4, 6):
        f = FAMILIES[fam]
        assert received(far, f.internet, 5004, ctr) == ("sent", f"{f.tunnel} hello"), fam
    # down switches the bridge's forwarding back off and leaves the bridge
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert ns.forwarding()["ipv4/br-vpn/forwarding"] == "0" and link(ns, BRIDGE) is not None


# Docker's filter table as dockerd (20.10-27) sets it up, with its own bridge docker0 and no container:
# FORWARD's policy DROP; only docker0's traffic is accepted, DOCKER-USER is the admin's chain, evaluated first
DOCKER_FILTER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""
# what README's Docker section tells the admin to add (iptables and ip6tables alike)
DOCKER_USER = ["-I DOCKER-USER -i br-vpn -o vpn0 -j ACCEPT",
               "-I DOCKER-USER -i vpn0 -o br-vpn -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]


def test_with_dockers_forward_policy_the_bridge_needs_the_docker_user_rules(world):
    """Docker's FORWARD policy DROP (iptables-nft, a base chain of its own) drops the bridge's traffic
    into the tunnel whatever vpnsplit's table accepts; the two DOCKER-USER rules of the README let it through."""
    ns, ctr, far, isp = world
    connect_tunnel(ns, far)
    assert ns.vpnsplit("up", "--all").returncode == 0
    attach(ns, ctr)
    run(["ip", "netns", "exec", ns.name, "iptables-nft-restore"], input=DOCKER_FILTER, check=True)
    run(["ip", "netns", "exec", ns.name, "ip6tables-nft-restore"], input=DOCKER_FILTER, check=True)
    for fam in (4, 6):
        f = FAMILIES[fam]
        assert received(far, f.internet, 5005, ctr, "tcp") == ("timeout", "nothing"), fam
    for rule in DOCKER_USER:
        ns.exec("iptables-nft", *rule.split(), check=True)
        ns.exec("ip6tables-nft", *rule.split(), check=True)
    for fam in (4, 6):
        f = FAMILIES[fam]
        assert received(far, f.internet, 5006, ctr, "tcp") == ("sent", f"{f.tunnel} hello"), fam
    assert leaked(isp) == 0


def test_down_of_a_gone_section_tears_its_bridge_down_with_its_record(world):
    """Ownership by record: `vpnsplit down NAME` for a section no longer in the config removes what its
    record says vpnsplit applied, and the bridge vpnsplit created for it; another tunnel's bridge stays."""
    ns, ctr, far, isp = world
    ns.write_config(CONFIG + UNRELATED.replace("id = 9", "id = 9\nbridge = true"))
    assert ns.vpnsplit("up", "--all").returncode == 0
    assert link(ns, BRIDGE) is not None and link(ns, "br-keep") is not None
    ns.write_config(UNRELATED.replace("id = 9", "id = 9\nbridge = true"))
    proc = ns.vpnsplit("down", "vpn")
    assert proc.returncode == 0 and "delete bridge br-vpn" in proc.stderr, proc.stderr
    assert link(ns, BRIDGE) is None and not [r for r in ns.rules() if r[2] == TABLE]
    assert link(ns, "br-keep") is not None and list(recorded(ns)) == ["br-keep"]


def test_the_watcher_puts_back_a_deleted_bridge_and_its_address(world):
    """A deleted bridge takes its addresses along: their removal wakes the watcher, whose converge re-creates it."""
    from tests.kernel.watcher import Watcher

    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "--all").returncode == 0
    w = Watcher(ns)
    try:
        w.settle()
        ns.ip("addr", "del", "10.20.3.1/24", "dev", BRIDGE)
        w.settle()
        assert addresses(ns, BRIDGE) == ["10.20.3.1", "fd20:3::1"], w.log()
        ns.ip("link", "del", BRIDGE)
        w.settle()
        assert link(ns, BRIDGE) is not None and addresses(ns, BRIDGE) == ["10.20.3.1", "fd20:3::1"], w.log()
    finally:
        w.stop()


def test_a_failed_run_takes_the_bridge_it_created_back_out(world):
    """Steps carry their undo: the run fails at its last bridge step (the record cannot be written: a
    directory is in its place) and rolls back whole, the bridge it created included."""
    ns, ctr, far, isp = world
    (ns.state_dir / "bridges").mkdir(parents=True)
    before = steady(ns)
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 1 and "'record bridges' failed" in proc.stderr and "rolled back" in proc.stderr, proc.stderr
    assert link(ns, BRIDGE) is None and steady(ns) == before
