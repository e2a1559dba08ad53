"""Issue 16: programs under `vpnsplit run NAME` go through tunnel NAME, unbound sockets included,
in the dual-stack world of test_sources_forward (the `fam` fixture: IPv4 and IPv6; the host runs
with rp_filter = 1), with `app_slot = 3` (mark 0x83000000). The far end and the isp both hold the
internet host, so the source address the far end sees and a counter on the isp side tell which way
a program's packets went.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.kernel.applab import app_cgroup, apps  # noqa: F401 (fixtures)
from tests.kernel.test_backstop import outside
from tests.kernel.test_sources_forward import CONFIG, PRIO, TABLE, fam, world  # noqa: F401 (fixtures)

APP_CONFIG = CONFIG + "app_slot = 3\n"
MARK, MASK = 0x83000000, 0x8F000000

# the app: connect, send, close first (active close: TIME_WAIT here), print the local port
CLOSE = """
import socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5); s.connect((addr, port)); s.sendall(b"bye"); local = s.getsockname()[1]
s.close(); time.sleep(0.5); print(local)
"""
LISTEN_CLOSE = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(5)
while c.recv(100): pass
c.close()
"""
# a bare TCP ACK from far's internet host to the app's TIME_WAIT socket, far outside its window
POKE = """
import socket, struct, sys
src, dst, sport, dport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
v6 = ":" in dst
fam = socket.AF_INET6 if v6 else socket.AF_INET
hdr = struct.pack("!HHIIBBHHH", sport, dport, 12345, 67890, 5 << 4, 0x10, 1024, 0, 0)
pseudo = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst) + (struct.pack("!IxxxB", len(hdr), 6) if v6 else struct.pack("!xBH", 6, len(hdr)))
data = pseudo + hdr
total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
while total >> 16: total = (total & 0xffff) + (total >> 16)
hdr = hdr[:16] + struct.pack("!H", ~total & 0xffff) + hdr[18:]
s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind((src, 0))
for _ in range(3): s.sendto(hdr, (dst, 0))
"""


@pytest.fixture
def app_world(world, apps):
    ns, ctr, far, isp = world
    ns.write_config(APP_CONFIG)
    return ns, far, isp, apps


def received(listener_ns, address, port, sending, proto="udp"):
    """(what the sending program got, what a listener at *address* saw)."""
    listener = listener_ns.listen(address, port, proto)
    try:
        sent = sending()
        return sent, listener.communicate(timeout=10)[0].strip()
    finally:
        listener.kill()


def mark_rules(ns, fam):
    return sorted((r["FRA_PRIORITY"], r["FRA_TABLE"], r.get("FRA_DST")) for r in ns.dump()["rules"]
                  if r.get("FRA_FWMARK") == MARK and r.get("FRA_FWMASK") == MASK and r["family"] == (2 if fam.fam == 4 else 10))


def test_program_and_its_children_leave_through_the_tunnel(app_world, fam):
    ns, far, isp, apps = app_world
    count = outside(isp)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    lan = fam.lan.split("/")[0]
    # (P+1: their DNS into the tunnel, TCP and UDP: test_apps_dns)
    assert mark_rules(ns, fam) == [(PRIO + 1, TABLE, None)] * 2 + [(PRIO + 2, 254, lan), (PRIO + 3, TABLE, None)]
    for proto in ("udp", "tcp"):
        # unbound sockets: the tunnel address, chosen by the route lookup the mark steers (no NAT); replies pass rp_filter
        got, seen = received(far, fam.internet, 5100, lambda: apps.send(proto, fam.internet, 5100), proto)
        assert (got[0], got[2], seen) == ("sent", MARK, f"{fam.tunnel} hello"), proto
        # a child, as another user: the same
        got, seen = received(far, fam.internet, 5101, lambda: apps.send(proto, fam.internet, 5101, child=True, user="nobody"), proto)
        assert (got[0], got[2], seen) == ("sent", MARK, f"{fam.tunnel} hello"), proto
        # a `lan` destination is reached directly, from the uplink address
        got, seen = received(isp, fam.isp, 5102, lambda: apps.send(proto, fam.isp, 5102), proto)
        assert (got[0], seen) == ("sent", f"{fam.uplink} hello"), proto
    assert count() == 0
    # control: the same program outside `vpnsplit run` leaves by the isp with the uplink address
    got, seen = received(isp, fam.internet, 5103, lambda: apps.send("tcp", fam.internet, 5103, tunnel=None), "tcp")
    assert (got[0], got[2], seen) == ("sent", 0, f"{fam.uplink} hello")
    assert count() > 0


def test_strict_program_fails_at_once_and_nothing_leaves(app_world, fam):
    ns, far, isp, apps = app_world
    count = outside(isp)
    # never applied: run converges the strict tunnel's down state first
    assert apps.send("udp", fam.internet, 5200)[0] in ("ENETUNREACH", "EHOSTUNREACH")
    assert mark_rules(ns, fam)[-1] == (PRIO + 3, TABLE, None)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    # tunnel up, a socket bound to the uplink device: the tunnel's table has no route out of eth0, main has; the apps chain drops it
    assert apps.send("udp", fam.internet, 5201, device="eth0")[0] == "EPERM"
    assert ns.vpnsplit("down", "vpn").returncode == 0
    for how in ({}, {"device": "eth0"}, {"source": fam.uplink}, {"device": "eth0", "source": fam.uplink}):
        for proto in ("udp", "tcp"):
            out, seconds, mark = apps.send(proto, fam.internet, 5202, **how)
            assert out in ("ENETUNREACH", "EHOSTUNREACH", "EPERM", "ECONNREFUSED") and seconds < 1, (proto, how, out, seconds)
    assert count() == 0
    # a program started in the tunnel's cgroup after `vpnsplit run` made it is marked as well
    assert apps.send("udp", fam.internet, 5203, tunnel=None, below="vpnsplit/vpn")[:3:2] == ("EHOSTUNREACH", MARK)
    # control: without vpnsplit's mark rule and the apps chain, such a program leaves by the isp
    ns.ip(f"-{fam.fam}", "rule", "del", "priority", str(PRIO + 3), "fwmark", f"{MARK:#x}/{MASK:#x}")
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "apps", check=True)
    assert apps.send("udp", fam.internet, 5203, tunnel=None, below="vpnsplit/vpn")[:3:2] == ("sent", MARK)
    assert count() > 0


def test_forward_reaches_a_listener_inside_the_program(app_world, fam):
    ns, far, isp, apps = app_world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    listener = apps.listen("::" if fam.fam == 6 else "0.0.0.0", 8080)
    try:
        status = apps.vpnsplit("status", "vpn")
        assert "apps: mark 0x83000000; vpnsplit run: 1 process(es)" in status.stdout, status.stdout
        explained = apps.vpnsplit("explain", "--pid", str(listener.pid), fam.internet, "--json")
        report = json.loads(explained.stdout)
        assert (report["cgroup"], report["mark"], report["tunnel"], report["device"], report["source"]) == (
            "/vpnsplit/vpn", MARK, "vpn", "vpn0", fam.tunnel), explained.stderr
        assert far.send(fam.tunnel, 8080, "tcp") == "sent"
        assert listener.communicate(timeout=10)[0].strip() == f"{fam.far} hello"
    finally:
        listener.kill()


def test_status_and_nft_hold_the_app_entries(app_world, fam):
    ns, far, isp, apps = app_world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    sets = {s["set"]["name"]: s["set"].get("elem", []) for s in json.loads(ns.exec("nft", "-j", "list", "table", "inet", "vpnsplit").stdout)["nftables"] if "set" in s}
    assert sets["app_mark"] == [MARK] and sets["app_out"] == [{"concat": [MARK, "vpn0"]}]
    assert ns.vpnsplit("check").returncode == 0


def test_configured_cgroups_and_units_are_covered_when_they_exist(app_world, fam):
    ns, far, isp, apps = app_world
    ns.write_config(APP_CONFIG + 'cgroups = ["svc/a"]\nunits = ["b.service"]\n')
    count = outside(isp)
    # absent cgroups, and a hook run that sees no cgroup2 at all (ip netns exec remounts /sys): never a failure
    up = apps.vpnsplit("up", "vpn")
    assert up.returncode == 0 and "cgroup svc/a does not exist now" in up.stderr, up.stderr
    hook = ns.vpnsplit("up", "vpn")
    assert hook.returncode == 0 and "per-app cgroups not covered" in hook.stderr, hook.stderr
    for below in ("svc/a", "system.slice/b.service"):
        os.makedirs(os.path.join(apps.cgroup, below))
    # they exist now, without the mark program: check says so (exit 3), up attaches, check is content
    check = apps.vpnsplit("check", "vpn")
    assert check.returncode == 3 and "cgroup svc/a runs without the tunnel's mark program" in check.stderr, check.stderr
    assert apps.vpnsplit("up", "vpn").returncode == 0
    assert apps.vpnsplit("check", "vpn").returncode == 0
    report = json.loads(apps.vpnsplit("status", "--json").stdout)["tunnels"][0]["apps"]
    assert report["mark"] == hex(MARK) and [(c["what"], c["processes"], c["attached"]) for c in report["cgroups"]] == [
        ("cgroup svc/a", 0, True), ("unit b.service", 0, True), ("vpnsplit run", None, None)]
    for port, below in ((5300, "svc/a"), (5301, "system.slice/b.service")):
        got, seen = received(far, fam.internet, port, lambda: apps.send("udp", fam.internet, port, tunnel=None, below=below))
        assert (got[0], got[2], seen) == ("sent", MARK, f"{fam.tunnel} hello"), below
    assert count() == 0
    explained = apps.vpnsplit("explain", "--unit", "b.service", fam.internet).stdout
    assert explained.startswith("unit b.service: cgroup /system.slice/b.service: its sockets get mark 0x83000000 "
                                "(program on /system.slice/b.service), tunnel vpn\n") and f"dev vpn0, source {fam.tunnel}" in explained
    assert ns.vpnsplit("down", "vpn").returncode == 0
    explained = apps.vpnsplit("explain", "--unit", "b.service", fam.internet).stdout
    assert "unreachable (strict: the tunnel is down; nothing leaves)" in explained, explained
    # control: a cgroup the config does not name is not covered
    os.makedirs(os.path.join(apps.cgroup, "svc/c"))
    assert apps.send("udp", fam.internet, 5302, tunnel=None, below="svc/c")[:3:2] == ("sent", 0)
    assert count() > 0


def test_a_unit_restarted_20_times_attaches_each_new_cgroup_itself(app_world, fam):
    """What the drop-in of `vpnsplit unit-dropin` does: `vpnsplit attach NAME` as ExecStartPre= in each new cgroup."""
    ns, far, isp, apps = app_world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    count, arrived = outside(isp), outside(far)
    unit = os.path.join(apps.cgroup, "system.slice", "d.service")
    for start in range(20):
        os.makedirs(unit)
        attach = apps.vpnsplit("attach", "vpn", below="system.slice/d.service")
        assert attach.returncode == 0, attach.stderr
        assert apps.send("udp", fam.internet, 5400, tunnel=None, below="system.slice/d.service")[:3:2] == ("sent", MARK), start
        os.rmdir(unit)  # stopped: systemd removes the unit's cgroup
    assert count() == 0 and arrived() == 60
    dropin = apps.vpnsplit("unit-dropin", "vpn", "d.service", "--dir", str(ns.tmp / "units"))
    assert dropin.returncode == 0, dropin.stderr
    text = (ns.tmp / "units" / "d.service.d" / "vpnsplit-vpn.conf").read_text()
    assert "\n[Service]\nExecStartPre=+" in text and text.endswith(" attach vpn\n")
    # control: a new cgroup without the attach is not covered
    os.makedirs(unit)
    assert apps.send("udp", fam.internet, 5401, tunnel=None, below="system.slice/d.service")[:3:2] == ("sent", 0)
    assert count() > 0


def test_time_wait_acks_of_a_closed_connection_carry_the_mark(app_world, fam):
    """A program's connection closed first by the program (its TIME_WAIT socket stays in the kernel);
    the tunnel goes down; the far end pokes the socket out of window: the TIME_WAIT ACK carries the
    program's mark (the kernel keeps it as tw_mark), so it meets the strict unreachable route, not main.
    rp_filter off: otherwise the poke itself is dropped (its reverse path left with the tunnel)."""
    ns, far, isp, apps = app_world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    listener = subprocess.Popen(["ip", "netns", "exec", far.name, sys.executable, "-c", LISTEN_CLOSE, fam.internet, "5600"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        port = int(apps.run(sys.executable, "-c", CLOSE, fam.internet, 5600).stdout.split()[-1])
        listener.wait(5)
    finally:
        listener.kill()
    assert f":{port} " in ns.exec("ss", "-tanH", "state", "time-wait").stdout
    assert ns.vpnsplit("down", "vpn").returncode == 0
    ns.exec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.vpn0.rp_filter=0", check=True)
    count = outside(isp)
    far.exec(sys.executable, "-c", POKE, fam.internet, fam.tunnel, "5600", str(port), check=True)
    time.sleep(0.6)  # and past tcp_invalid_ratelimit (0.5 s) for the control's ACK
    assert count() == 0
    # control: without the mark's rule and the apps chain the same ACK leaves by the isp
    ns.ip(f"-{fam.fam}", "rule", "del", "priority", str(PRIO + 3), "fwmark", f"{MARK:#x}/{MASK:#x}")
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "apps", check=True)
    far.exec(sys.executable, "-c", POKE, fam.internet, fam.tunnel, "5600", str(port), check=True)
    deadline = time.monotonic() + 3
    while count() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count() > 0
