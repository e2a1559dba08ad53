"""Programs under `vpnsplit run` inside a kernel test's namespace.

This host's cgroup2 hierarchy is mounted at /sys/fs/cgroup/unified, and `ip netns exec` remounts
/sys (hiding it). So each test gets a cgroup of its own under the host's cgroup2 (removed with
everything below it by the fixture), and each program starts in it, in new cgroup and mount
namespaces (`unshare`): there cgroup2 is mounted at /sys/fs/cgroup with the test's cgroup as its
root (so `vpnsplit run`'s `vpnsplit/NAME` lands below it), and `nsenter --net=` enters the
network namespace without touching /sys. The mount goes with the mount namespace.
"""

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.kernel.nslab import VPNSPLIT

_serial = itertools.count()
ENTER = """
import os, subprocess, sys
subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
os.execvp("nsenter", ["nsenter", "--net=/run/netns/" + sys.argv[1], "--", *sys.argv[2:]])
"""
# one socket, unbound unless told: what it got, how long that took, and the socket's mark
SEND = """
import errno, socket, sys, time
proto, addr, port, source, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.settimeout(5)
start = time.monotonic()
try:
    if device:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    if source:
        s.bind((source, 0))
    if proto == "udp":
        for _ in range(3):
            s.sendto(b"hello", (addr, port))
    else:
        s.connect((addr, port)); s.sendall(b"hello")
    out = "sent"
except OSError as e:
    out = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
print(out, round(time.monotonic() - start, 3), hex(s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) & 0xffffffff))
"""
# a child process doing the work: the parent's cgroup is the child's
SPAWN = "import os, subprocess, sys; print(os.getuid(), flush=True); sys.exit(subprocess.call(sys.argv[1:]))"
LISTEN = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.bind((addr, port)); s.listen(1); s.settimeout(5)
print("ready", flush=True)
try:
    conn, peer = s.accept(); conn.settimeout(5)
    print(peer[0], conn.recv(100).decode())
except OSError:
    print("nothing")
"""


def host_cgroup2():
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split(" - ")[1].startswith("cgroup2 ")]
    return "/sys/fs/cgroup" if "/sys/fs/cgroup" in points else points[0]


class Apps:
    """Starts programs in network namespace *netns*, with vpnsplit's *env* (config, state
    directory), in the test's cgroup *cgroup*."""

    def __init__(self, netns, env, cgroup):
        self.netns, self.env, self.cgroup = netns, env, cgroup

    def _enter(self, below=""):
        with open(os.path.join(self.cgroup, below, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def argv(self, cmd, tunnel="vpn", user=None):
        """*cmd* under `vpnsplit run TUNNEL` (None: run it plainly, outside any tunnel)."""
        if tunnel is not None:
            env = [f"{k}={v}" for k, v in self.env.items()]
            cmd = ["/usr/bin/env", "-i", *env, *VPNSPLIT, "run", tunnel, *(["--user", user] if user else []), "--", *cmd]
        return ["unshare", "--cgroup", "--mount", "--propagation", "private", "--", sys.executable, "-c", ENTER, self.netns, *cmd]

    def run(self, *cmd, tunnel="vpn", user=None, below=""):
        """*cmd* under `vpnsplit run TUNNEL`, or with tunnel None started plainly in the cgroup *below* the test's."""
        return subprocess.run(self.argv([str(c) for c in cmd], tunnel, user), capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: self._enter(below))

    def vpnsplit(self, *args, below=""):
        """`vpnsplit ARGS` in the namespace where cgroup2 is visible, started in the cgroup *below* the test's."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return self.run("/usr/bin/env", "-i", *env, *VPNSPLIT, *args, tunnel=None, below=below)

    def send(self, proto, addr, port, source="", device="", tunnel="vpn", child=False, user=None, below=""):
        """(result, seconds, the socket's mark) of SEND run as a program of *tunnel* (or as its child)."""
        cmd = [sys.executable, "-c", SEND, proto, addr, port, source, device]
        done = self.run(*([sys.executable, "-c", SPAWN] if child else []), *cmd, tunnel=tunnel, user=user, below=below)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.split("\n")
        out, seconds, mark = lines[-2].split()
        return out, float(seconds), int(mark, 16)

    def spawn(self, cmd, tunnel=None, below="", **popen):
        """*cmd* started (under `vpnsplit run TUNNEL`, or plainly) in the cgroup *below* the test's, where cgroup2 is visible."""
        return subprocess.Popen(self.argv([str(c) for c in cmd], tunnel), stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: self._enter(below), **popen)

    def start(self, *cmd, tunnel="vpn"):
        """*cmd* under `vpnsplit run TUNNEL`, running on (stdin and stdout pipes), once it printed "ready"."""
        proc = self.spawn(cmd, tunnel, stdin=subprocess.PIPE)
        assert proc.stdout.readline().strip() == "ready", f"{cmd[:3]} did not start"
        return proc

    def listen(self, addr, port):
        return self.start(sys.executable, "-c", LISTEN, addr, port)


def remove_cgroup(path):
    """Kill what the cgroup tree holds and remove it, deepest first (a cgroup with processes cannot go)."""
    for _ in range(50):
        dirs = sorted((d for d, _, _ in os.walk(path)), key=len, reverse=True)
        for d in dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        os.kill(int(pid), signal.SIGKILL)
                os.rmdir(d)
            except (OSError, ValueError):
                pass
        if not os.path.exists(path):
            return
        time.sleep(0.1)
    raise AssertionError(f"cgroup {path} could not be removed")


@pytest.fixture
def app_cgroup():
    """A cgroup of the test's own under the host's cgroup2, removed with all below it."""
    cgroup = os.path.join(host_cgroup2(), f"vsk-app-{os.getpid()}-{next(_serial)}")
    os.mkdir(cgroup)
    try:
        yield cgroup
    finally:
        remove_cgroup(cgroup)


@pytest.fixture
def apps(ns, app_cgroup):
    return Apps(ns.name, ns.env(), app_cgroup)
