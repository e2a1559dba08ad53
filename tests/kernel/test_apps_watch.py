"""Issue 16: `vpnsplit watch` attaches a configured cgroup or unit that appears after the tunnel came
up (a unit started or restarted gets a new cgroup), with no drop-in and no manual step: a program
started in it at once, as systemd starts a service's process right after making its cgroup, goes
through the tunnel, 0 of its packets at the isp. The world of test_apps (IPv4 and IPv6, app_slot 3);
the watcher runs where cgroup2 is visible (applab), the cgroups are made through the host's mount.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from tests.kernel.applab import app_cgroup, apps  # noqa: F401 (fixtures)
from tests.kernel.test_apps import APP_CONFIG, MARK, app_world, received  # noqa: F401 (fixtures)
from tests.kernel.test_backstop import outside
from tests.kernel.test_sources_forward import fam, world  # noqa: F401 (fixtures)
from tests.kernel.watcher import Watcher, until

# a service: its socket made as it starts, then a datagram every 10 ms; the socket's mark at the end
SERVICE = """
import socket, sys, time
addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"hello", (addr, port)); time.sleep(0.01)
print(hex(s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) & 0xffffffff))
"""

# a process that entered before the attach: a socket made then, and one after it is told to go on
EARLY = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
before = socket.socket(fam, socket.SOCK_DGRAM)
print("ready", flush=True); sys.stdin.readline()
after = socket.socket(fam, socket.SOCK_DGRAM)
print(*(hex(s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) & 0xffffffff) for s in (before, after)))
"""


def attached(watcher, count, timeout=10):
    """The watcher's first *count* "attached" lines (fewer if they did not come within *timeout* s)."""
    end = time.monotonic() + timeout
    while len(_lines(watcher)) < count and time.monotonic() < end:
        watcher.next(timeout=0.1)
    return _lines(watcher)


def _lines(watcher):
    return [d for d in watcher.lines if "attached" in d]


def window(lines, made):
    """Milliseconds from each mkdir (*made*: wall-clock times) to its attach, for the report: not asserted."""
    ms = sorted((d["at"] - m) * 1e3 for d, m in zip(lines, made))
    if not ms:
        return "mkdir -> attached: none attached"
    return f"mkdir -> attached: min {ms[0]:.2f} median {statistics.median(ms):.2f} max {ms[-1]:.2f} ms ({len(ms)} cgroups)"


def test_the_watcher_attaches_cgroups_and_units_made_after_up(app_world, fam):
    ns, far, isp, apps = app_world
    ns.write_config(APP_CONFIG + 'cgroups = ["svc/late/a"]\nunits = ["b.service"]\n')
    assert ns.vpnsplit("up", "vpn").returncode == 0
    count = outside(isp)
    watcher = Watcher(ns, apps=apps)
    try:
        made = []
        # neither the cgroup nor its parents exist: it is seen from the nearest existing ancestor, the root
        for port, below in ((5700, "svc/late/a"), (5701, "system.slice/b.service")):
            made.append(time.time())
            os.makedirs(os.path.join(apps.cgroup, below))
            got, seen = received(far, fam.internet, port, lambda: apps.send("udp", fam.internet, port, tunnel=None, below=below))
            assert (got[0], got[2], seen) == ("sent", MARK, f"{fam.tunnel} hello"), (below, watcher.log())
        lines = attached(watcher, 2)
        assert [(d["what"], d["tunnel"]) for d in lines] == [("cgroup svc/late/a", "vpn"), ("unit b.service", "vpn")]
        print(window(lines, made))
        assert count() == 0
        # status still counts each cgroup's processes
        service = apps.spawn(["sleep", "30"], below="svc/late/a")
        try:
            report = json.loads(apps.vpnsplit("status", "--json").stdout)["tunnels"][0]["apps"]
            assert [(c["what"], c["processes"], c["attached"]) for c in report["cgroups"]] == [
                ("cgroup svc/late/a", 1, True), ("unit b.service", 0, True), ("vpnsplit run", None, None)]
        finally:
            service.kill()
            service.wait()
        # SIGHUP: a cgroup the re-read config names is watched from then on; the one it dropped is not
        ns.write_config(APP_CONFIG + 'cgroups = ["svc/new"]\n')
        watcher.signal(signal.SIGHUP)
        # after the converge SIGHUP causes (it attaches what exists then, as any run does)
        assert until(lambda: any("SIGHUP" in d["cause"] for d in watcher.settle(0.2))), watcher.log()
        os.makedirs(os.path.join(apps.cgroup, "svc/new"))
        os.makedirs(os.path.join(apps.cgroup, "svc/late/a2"))
        assert apps.send("udp", fam.internet, 5702, tunnel=None, below="svc/new")[:3:2] == ("sent", MARK)
        assert [d["what"] for d in attached(watcher, 3)][2:] == ["cgroup svc/new"]
        assert count() == 0
        # control: a cgroup no config names is not attached, and its program leaves by the isp
        assert apps.send("udp", fam.internet, 5703, tunnel=None, below="svc/late/a2")[:3:2] == ("sent", 0)
        assert count() > 0
        assert watcher.signal()[0] == 0
    finally:
        watcher.stop()


def test_a_unit_made_again_20_times_while_traffic_flows_is_covered_by_the_watcher(app_world, fam):
    """No drop-in: each new cgroup of the unit gets the program from the watcher before its service's
    socket exists (the service starts right after the mkdir, as under systemd)."""
    ns, far, isp, apps = app_world
    ns.write_config(APP_CONFIG + 'units = ["d.service"]\n')
    assert ns.vpnsplit("up", "vpn").returncode == 0
    count, arrived = outside(isp), outside(far)
    watcher = Watcher(ns, apps=apps)
    unit, made, marks = os.path.join(apps.cgroup, "system.slice", "d.service"), [], []
    try:
        for _ in range(20):
            made.append(time.time())
            os.makedirs(unit)
            service = apps.spawn([sys.executable, "-c", SERVICE, fam.internet, 5800, 10], below="system.slice/d.service")
            marks.append(service.communicate(timeout=30)[0].strip())
            os.rmdir(unit)  # stopped: systemd removes the unit's cgroup
        lines = attached(watcher, 20)
        print(window(lines, made), f"; isp {count()}, tunnel {arrived()} of {20 * 10} datagrams")
        assert marks == [hex(MARK)] * 20, watcher.log()
        assert (count(), arrived()) == (0, 200)
        assert [d["what"] for d in lines] == ["unit d.service"] * 20
        # a restart costs no converge: only the one at start ran (the attaches wrote nothing that wakes it)
        assert watcher.signal()[0] == 0
        assert [d["converge"] for d in watcher.settle(0.5) if "converge" in d] == [1]
        assert watcher.lines[-1]["attached"] == 20 and watcher.lines[-1]["converges"] == 1
    finally:
        watcher.stop()


def test_a_process_that_entered_before_the_attach_is_named_and_only_its_later_sockets_are_marked(app_world, fam):
    """The window, made long on purpose: the watcher stopped while the cgroup is made and a process
    enters it and makes a socket. What the README says: that socket stays unmarked, later ones get
    the mark, and the watcher names the process count in a warning."""
    ns, far, isp, apps = app_world
    ns.write_config(APP_CONFIG + 'cgroups = ["svc/e"]\n')
    assert ns.vpnsplit("up", "vpn").returncode == 0
    watcher = Watcher(ns, apps=apps)
    try:
        watcher.proc.send_signal(signal.SIGSTOP)
        os.makedirs(os.path.join(apps.cgroup, "svc/e"))
        early = apps.spawn([sys.executable, "-c", EARLY, fam.internet], below="svc/e", stdin=subprocess.PIPE)
        try:
            assert early.stdout.readline().strip() == "ready"
            watcher.proc.send_signal(signal.SIGCONT)
            lines = attached(watcher, 1)
            assert [(d["what"], d["processes"]) for d in lines] == [("cgroup svc/e", 1)]
            assert until(lambda: "1 process(es) entered" in watcher.log()), watcher.log()
            assert "before its program was attached: sockets they made before stay outside the tunnel" in watcher.log()
            assert early.communicate("go\n", timeout=10)[0].split() == ["0x0", hex(MARK)]
        finally:
            early.kill()
            early.wait()
        assert watcher.signal()[0] == 0
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
        watcher.stop()
