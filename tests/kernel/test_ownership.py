"""Issue 11 part 3: ownership by record. A run removes what vpnsplit applied earlier and the config
no longer wants, from the tunnels' records alone: after each config edit below and one more run,
the namespace's kernel (rules, routes of every table, addresses, `nft -j list ruleset`), its
forwarding switches and the records equal those of a fresh namespace where only the new config
was ever applied, and a socket bound to the old alias gets nothing out on the outside link.

    host: tun0 (10.8.0.2, fd00:8::2; provider), tun1 (10.9.0.6; work), ctr0 (work's sources)
          eth0 (198.51.100.10, 2001:db8:51::10) -- isp (the default routes; packets counted here)
"""

import json
import subprocess
import time

import pytest

from tests.kernel.convergence import canon, ok, state_files
from tests.kernel.nslab import PROVIDER, VPNSPLIT, WORK, NetnsLab
from tests.kernel.test_backstop import BOUND
from tests.kernel.test_sources_forward import veth
from tests.kernel.watcher import Watcher, until

INTERNET = {4: "192.0.2.80", 6: "2001:db8:2::80"}
WORK_SOURCES = WORK + 'sources = ["10.20.1.0/24"]\n'


class World:
    """The host namespace and its isp, built the same way for the edited run and the fresh one."""

    def __init__(self, tmp_path, tag):
        for where in (tmp_path / tag, tmp_path / f"{tag}-isp"):
            where.mkdir()
        self.ns, self.isp = NetnsLab(tmp_path / tag), NetnsLab(tmp_path / f"{tag}-isp")
        ns = self.ns
        for dev, v4, peer, v6 in (("tun0", "10.8.0.2/24", None, "fd00:8::2/64"), ("tun1", "10.9.0.6", "10.9.0.5", None)):
            ns.ip("tuntap", "add", dev, "mode", "tun")
            ns.ip("link", "set", dev, "addrgenmode", "none")  # no link-local address: both worlds the same
            ns.ip("link", "set", dev, "up")
            ns.ip("addr", "add", v4, *(["peer", peer] if peer else []), "dev", dev)
            if v6:
                ns.ip("-6", "addr", "add", v6, "dev", dev, "nodad")
        ns.add_container_link()
        veth(ns, "eth0", ["198.51.100.10/24", "2001:db8:51::10/64"], self.isp, "eth0", ["198.51.100.1/24", "2001:db8:51::1/64"])
        ns.ip("route", "add", "default", "via", "198.51.100.1")
        ns.ip("-6", "route", "add", "default", "via", "2001:db8:51::1")
        self.isp.nft("table inet seen {\n chain c {\n type filter hook prerouting priority 0;\n"
                     f" ip daddr {INTERNET[4]} counter\n ip6 daddr {INTERNET[6]} counter\n }}\n}}\n")

    def close(self):
        self.isp.close()
        self.ns.close()

    def apply(self, config, *command):
        self.ns.write_config(config)
        return self.ns.vpnsplit(*command)

    def outside(self):
        """Packets for the internet host that reached the isp (in the clear), both families."""
        out = json.loads(self.isp.exec("nft", "-j", "list", "chain", "inet", "seen", "c", check=True).stdout)["nftables"]
        return sum(e["counter"]["packets"] for r in out if "rule" in r for e in r["rule"]["expr"] if "counter" in e)

    def send_from(self, source):
        """Five datagrams to the internet host from a socket bound to *source*: what each send said."""
        return self.ns.exec("python3", "-c", BOUND, INTERNET[6 if ":" in source else 4], "", source).stdout.strip()

    def kernel(self):
        """Everything compared with the fresh world: the dump (link-local aside), forwarding, the records."""
        dump = canon(self.ns.dump())
        dump["addresses"] = [a for a in dump["addresses"] if not str(a[1]).startswith("fe80")]
        dump["routes"] = [r for r in dump["routes"] if not str(r.get("RTA_DST", "")).startswith(("fe80", "ff00"))]
        return dump, self.ns.forwarding(), state_files(self.ns)


@pytest.fixture
def worlds(tmp_path):
    made = []

    def make(tag):
        made.append(World(tmp_path, tag))
        return made[-1]

    try:
        yield make
    finally:
        for world in made:
            world.close()


def _edit(old, new):
    return PROVIDER.replace(old, new)


# (before, after, how the after is applied, the old aliases a socket binds to)
EDITS = {
    "alias": (_edit('"10.192.8.1"', '"10.192.8.5"').replace("fd10:192::1", "fd10:192::5"), PROVIDER, ("up", "--all"),
              ["10.192.8.5", "fd10:192::5"]),
    "alias_device_to_tunnel": (PROVIDER + 'alias_device = "lo"\n', PROVIDER, ("up", "provider"), ["10.192.8.1"]),
    "alias_device_to_lo": (PROVIDER, PROVIDER + 'alias_device = "lo"\n', ("up", "provider"), ["10.192.8.1"]),
    "table_and_priority": (PROVIDER, _edit("100\n", "102\n").replace("1000\n", "1200\n"), ("up", "provider"),
                           ["10.192.8.1", "fd10:192::1"]),
    "section_removed_up_all": (PROVIDER + WORK_SOURCES, PROVIDER, ("up", "--all"), ["10.192.9.1"]),
    "section_removed_down_name": (PROVIDER + WORK_SOURCES, PROVIDER, ("down", "work"), ["10.192.9.1"]),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_config_edit_leaves_the_kernel_as_a_fresh_apply(worlds, edit):
    before, after, command, old = EDITS[edit]
    edited = worlds("edited")
    ok(edited.apply(before, "up", "--all"))
    # the old config in place: its aliases' packets go into their tunnels, none to the isp
    for source in old:
        assert edited.send_from(source) == "sent sent sent sent sent", source
    assert edited.outside() == 0
    if "section_removed" in edit:
        assert edited.ns.forwarding()["ipv4/ctr0/forwarding"] == "1"  # work's sources: switched on by vpnsplit
    ok(edited.apply(after, *command))
    ok(edited.ns.vpnsplit("check"))
    # nothing bound to an old alias leaves in the clear: the address is gone (or, moved, it goes into the tunnel)
    for source in old:
        edited.send_from(source)
    assert edited.outside() == 0, edit
    # control: the counter sees what does leave by the uplink, both families
    for source in ("198.51.100.10", "2001:db8:51::10"):
        assert edited.send_from(source) == "sent sent sent sent sent", source
    assert until(lambda: edited.outside() == 10), edited.outside()

    fresh = worlds("fresh")
    ok(fresh.apply(after, "up", "--all"))
    have, want = edited.kernel(), fresh.kernel()
    assert have[0] == want[0], edit
    assert have[1] == want[1], edit  # forwarding switches: work's switched back off
    assert have[2] == want[2], edit  # the records: what vpnsplit applied, as if the old config had never been


def test_down_of_a_name_without_section_or_record_is_refused(worlds):
    world = worlds("w")
    ok(world.apply(PROVIDER, "up", "--all"))
    before = world.kernel()
    proc = world.ns.vpnsplit("down", "nosuch")
    assert proc.returncode == 2, proc.stderr
    assert "no tunnel 'nosuch'" in proc.stderr and "no record of it" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert world.kernel() == before


def test_status_and_check_report_orphans_until_removed(worlds):
    world = worlds("w")
    ns = world.ns
    ok(world.apply(_edit('"10.192.8.1"', '"10.192.8.5"') + WORK_SOURCES, "up", "--all"))
    ok(ns.vpnsplit("check"))
    ns.write_config(PROVIDER)  # alias edited, work's section removed; nothing applied yet
    proc = ns.vpnsplit("check")
    assert proc.returncode == 3, proc.stderr
    assert "tunnel provider: orphaned: address 10.192.8.5/32 on tun0" in proc.stderr and "vpnsplit up provider removes it" in proc.stderr
    assert "tunnel work: orphaned: rule from 10.192.9.1/32 lookup 101 priority 1101" in proc.stderr, proc.stderr
    assert "tunnel work: orphaned: IPv4 forwarding on ctr0" in proc.stderr and "vpnsplit down work" in proc.stderr, proc.stderr
    doc = json.loads(ns.vpnsplit("check", "--json").stdout)
    assert doc["in_sync"] is False and doc["gone"] == ["work"], doc
    assert doc["orphans"]["provider"] == ["address 10.192.8.5/32 on tun0"], doc
    assert "address 10.192.9.1/32 on lo" in doc["orphans"]["work"], doc
    status = ns.vpnsplit("status")
    assert "ORPHAN   address 10.192.8.5/32 on tun0" in status.stdout, status.stdout
    assert "work: gone from the config" in status.stdout and "DRIFT: run vpnsplit down work" in status.stdout, status.stdout
    reports = {r["tunnel"]: r for r in json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"]}
    assert reports["work"]["state"] == "gone" and reports["work"]["forwarding_switched"] == {"forwarding": ["ctr0", "tun1"]}
    assert ns.vpnsplit("check", "work").returncode == 3  # a gone tunnel by name
    up = ns.vpnsplit("up", "work")
    assert up.returncode == 2 and "its section is gone; 'vpnsplit down work' removes" in up.stderr, up.stderr
    ok(ns.vpnsplit("up", "--all"))
    ok(ns.vpnsplit("check"))
    assert json.loads(ns.vpnsplit("check", "--json").stdout) == {"in_sync": True, "tunnels": {"provider": []}, "orphans": {},
                                                                  "gone": [], "default": None}


def test_a_gone_tunnel_carrying_the_default_vpn_is_left_until_default_off(worlds):
    world = worlds("w")
    ns = world.ns
    ok(world.apply(PROVIDER + WORK + "servers = [\"203.0.113.2\"]\n", "up", "--all"))
    ok(ns.vpnsplit("default", "work"))
    ns.write_config(PROVIDER)
    proc = ns.vpnsplit("down", "work")
    assert proc.returncode == 2 and "vpnsplit default --off" in proc.stderr, proc.stderr
    up = ok(ns.vpnsplit("up", "--all"))
    assert "left in place" in up.stderr, up.stderr
    assert (32003, "all", 101, 118) in ns.rules(), ns.rules()  # the kill switch still into work's table
    ok(ns.vpnsplit("default", "--off"))
    ok(ns.vpnsplit("down", "work"))
    assert [r for r in ns.rules() if r[2] == 101] == [] and ns.table(101) == []
    ok(ns.vpnsplit("check"))


def test_the_watcher_s_converge_removes_a_gone_section(worlds):
    world = worlds("w")
    ns = world.ns
    ok(world.apply(PROVIDER + WORK_SOURCES, "up", "--all"))
    ns.write_config(PROVIDER)
    watcher = Watcher(ns)  # its first converge, at start: every tunnel, as up --all
    try:
        watcher.settle()
    finally:
        watcher.stop()
    assert [r for r in ns.rules() if r[2] == 101] == [] and ns.table(101) == [] and "10.192.9.1" not in ns.addresses("lo")
    assert ns.forwarding()["ipv4/ctr0/forwarding"] == "0" and not (ns.state_dir / "work.json").exists()
    ok(ns.vpnsplit("check"))


def test_a_teardown_that_fails_is_rolled_back_whole(worlds):
    """`down work` for a gone section, with work's record a mount point (in a private mount namespace):
    its removal, the last step, fails; every rule, route, alias, nft entry and switch it removed comes back."""
    world = worlds("w")
    ns = world.ns
    ok(world.apply(PROVIDER + WORK_SOURCES, "up", "--all"))
    ns.write_config(PROVIDER)
    before = world.kernel()
    envargs = [f"{k}={v}" for k, v in ns.env().items()]
    script = 'f="$1"; shift; mount --bind "$f" "$f" && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(ns.state_dir / "work.json"),
                           "ip", "netns", "exec", ns.name, "/usr/bin/env", "-i", *envargs, *VPNSPLIT, "down", "work"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert "'remove state' failed" in last and "cannot remove" in last and "rolled back the" in last, proc.stderr
    assert world.kernel() == before
    ok(ns.vpnsplit("down", "work"))  # without the mount it goes
    assert not (ns.state_dir / "work.json").exists()


# A service's sockets bound to the aliases before an edit, sending all along (errors ignored, as a
# careless service would): what each send said, and whether the sockets of the alias that stays are intact.
SERVICE = r"""
import collections, errno, json, os, socket, sys, time
old6, old4, stays6, stays4, far6, far4, stop = sys.argv[1:8]
S = {}
def udp(name, source, far, connect):
    s = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    if connect:
        s.connect((far, 7001))
    S[name] = (s, None if connect else (far, 7002))
udp("udp6 connected", old6, far6, True)
udp("udp6 unconnected", old6, far6, False)
udp("udp4 connected", old4, far4, True)
udp("stays6", stays6, far6, False)  # unconnected: a destroy would move it to another port
udp("stays4", stays4, far4, False)
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.bind((old6, 0)); tcp.setblocking(False)
tcp.connect_ex((far6, 7003))  # into the tunnel, which answers nothing: SYN_SENT, retransmitting
listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.bind((stays6, 7010)); listener.listen()
before = {name: s.getsockname() for name, (s, _) in S.items()}
said = collections.defaultdict(collections.Counter)
print("ready", flush=True)
while not os.path.exists(stop):
    for name, (s, dst) in S.items():
        try:
            s.sendto(b"probe", dst) if dst else s.send(b"probe")
            said[name]["sent"] += 1
        except OSError as e:
            said[name][errno.errorcode.get(e.errno, str(e.errno))] += 1
    time.sleep(0.001)
client = socket.create_connection((stays6, 7010), timeout=2)  # the listener of the alias that stays still accepts
intact = {name: S[name][0].getsockname() == before[name] and S[name][0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
          for name in ("stays6", "stays4")}
print(json.dumps({"said": said, "intact": intact, "accepts": listener.accept()[0] is not None,
                  "tcp": errno.errorcode.get(tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), "0")}))
"""

# at the isp: what left by the uplink from the old aliases' sockets, by destination (their conntrack entry
# keeps the SNAT to the tunnel address it got before the edit: the source says nothing)
LEAKS = f"""table inet leaks {{
 counter udp6_connected {{}}
 counter udp6_unconnected {{}}
 counter tcp6 {{}}
 counter udp4 {{}}
 chain c {{
  type filter hook prerouting priority -10;
  ip6 daddr {INTERNET[6]} udp dport 7001 counter name udp6_connected
  ip6 daddr {INTERNET[6]} udp dport 7002 counter name udp6_unconnected
  ip6 daddr {INTERNET[6]} tcp dport 7003 counter name tcp6
  ip daddr {INTERNET[4]} counter name udp4
 }}
}}
"""
STAYS = WORK + 'alias6 = "fd10:193::1"\n'


def test_sockets_bound_to_a_retired_alias_are_closed_and_those_of_an_alias_that_stays_are_not(worlds):
    """The alias edit with a service sending from both old aliases through it: its TCP and connected UDP
    sockets are destroyed once the old alias leaves tun0 (IPv6 would keep sending from it by the uplink:
    1,824 of 3,036 datagrams before); an unconnected UDP socket keeps its bind whatever is done (the
    kernel's), so it is left bound and the old alias kept confined in the backstop (retire.py): each send
    gets EPERM (it sent ~2,000 by the uplink before), and the run names it with its process. The sockets
    of work's aliases, which stay, are untouched. Once the service is gone, the next run removes the
    confinement."""
    world = worlds("w")
    ns = world.ns
    ok(world.apply(EDITS["alias"][0] + STAYS, "up", "--all"))
    world.isp.nft(LEAKS)
    stop = ns.tmp / "stop-service"
    service = subprocess.Popen(["ip", "netns", "exec", ns.name, "python3", "-I", "-c", SERVICE, "fd10:192::5", "10.192.8.5",
                                "fd10:193::1", "10.192.9.1", INTERNET[6], INTERNET[4], str(stop)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert service.stdout.readline().strip() == "ready", service.stderr.read()
        time.sleep(0.3)
        edit = ok(world.apply(PROVIDER + STAYS, "up", "--all"))
        time.sleep(2.5)  # past the TCP SYN's first retransmission (1 s)
        stop.touch()
        out, err = service.communicate(timeout=30)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert service.returncode == 0, err
    report = json.loads(out)
    said, leaks = report["said"], counters(world.isp)
    assert leaks == {"udp6_connected": 0, "udp6_unconnected": 0, "tcp6": 0, "udp4": 0}, (leaks, said)
    assert said["udp6 connected"].get("EDESTADDRREQ", 0) > 0 and report["tcp"] == "ECONNABORTED", said  # destroyed
    assert said["udp6 connected"]["sent"] > 100, said  # it did send, into the tunnel, before the edit
    assert "closed 2 socket(s) bound to the retired alias fd10:192::5" in edit.stderr, edit.stderr
    assert "closed 1 socket(s) bound to the retired alias 10.192.8.5" in edit.stderr, edit.stderr
    # the unconnected one: kept, its sends dropped by the backstop; named with its process and the fix
    assert said["udp6 unconnected"]["EPERM"] > 100 and "ECONNABORTED" not in said["udp6 unconnected"], said
    # (a destroyed one that sends again is bound again, a new port, and counted too)
    for old in ("fd10:192::5", "10.192.8.5"):
        assert f"socket(s) are bound to the retired alias {old} (pid {service.pid} (python3)): kept confined" in edit.stderr
    assert "restart the service holding them" in edit.stderr, edit.stderr
    # the aliases that stay: never touched
    assert report["intact"] == {"stays6": True, "stays4": True} and report["accepts"], report
    assert not {"ECONNABORTED", "EDESTADDRREQ", "EPERM"} & (set(said["stays6"]) | set(said["stays4"])), said
    # the service gone, check says the next run removes the confinement, and the next run does
    assert ns.vpnsplit("check").returncode == 3
    ok(ns.vpnsplit("up", "--all"))
    ok(ns.vpnsplit("check"))


def counters(isp):
    out = json.loads(isp.exec("nft", "-j", "list", "counters", "table", "inet", "leaks", check=True).stdout)["nftables"]
    return {c["counter"]["name"]: c["counter"]["packets"] for c in out if "counter" in c}


@pytest.mark.parametrize("hook", ["down", "wg-down"])
def test_a_down_hook_for_a_device_whose_section_is_gone_tears_it_down_from_its_record(worlds, hook):
    """OpenVPN's down (or wg-quick's PreDown) for tun1 after work's section was deleted: the hook finds
    work's record by the device and removes what it says vpnsplit applied, exit 0; the kernel, forwarding
    and records then equal a fresh apply of what is left. A device no record names: said, exit 0."""
    edited = worlds("edited")
    ns = edited.ns
    ok(edited.apply(PROVIDER + WORK_SOURCES, "up", "--all"))
    ns.write_config(PROVIDER)
    proc = ns.openvpn("down", "tun1", "10.9.0.6", "10.9.0.5") if hook == "down" else ns.hook("wg-down", "tun1")
    assert proc.returncode == 0, proc.stderr
    assert "tunnel work on tun1: its section is gone from the config; removed what its record says vpnsplit applied: " \
           in proc.stderr and "exiting 0 anyway" not in proc.stderr, proc.stderr
    assert "delete rule from 10.192.9.1/32 lookup 101 priority 1101" in proc.stderr, proc.stderr
    ok(ns.vpnsplit("check"))
    fresh = worlds("fresh")
    ok(fresh.apply(PROVIDER, "up", "--all"))
    assert edited.kernel() == fresh.kernel()
    again = ns.openvpn("down", "tun1", "10.9.0.6", "10.9.0.5") if hook == "down" else ns.hook("wg-down", "tun1")
    assert again.returncode == 0 and "no record of a tunnel on tun1 either: nothing to remove" in again.stderr, again.stderr
    assert "exiting 0 anyway" in again.stderr
    assert edited.kernel() == fresh.kernel()
