"""What every benchmark shares: namespaces that are always deleted, timing from inside them,
interleaved runs, and statistics.

Timing never goes through `ip netns exec` (which remounts /sys and costs a few ms of its
own): the driver enters the namespace with setns(2) and spawns the contender directly, so a
sample is fork+exec+run+wait of exactly the command shown, in that namespace.
"""

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv/bin/python3")
HOOKS = REPO / "hooks"
PREFIX = "vsb"  # every namespace this package creates is named vsb-<pid>-<n>
CLONE_NEWNET = 0x40000000
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None

_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count()
_open = []  # live namespaces, deleted at exit whatever happens


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(argv, check=False, input=None):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input, check=check)


class Netns:
    """A namespace named vsb-<pid>-<n> (so a stale one is recognisable), with a scratch dir
    holding its config and state directory."""

    def __init__(self, tag=""):
        self.name = f"{PREFIX}-{os.getpid()}-{next(_serial)}{'-' + tag if tag else ''}"[:40]
        # config and state on tmpfs, as /run/vpnsplit is on a real system (here / is ext4,
        # where the state file's fsync would cost what it never costs in production)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=SCRATCH))
        self.state_dir = self.tmp / "state"
        self.config = self.tmp / "vpnsplit.toml"
        _open.append(self)
        run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")

    def close(self):
        if self in _open:
            _open.remove(self)
            for pid in run(["ip", "netns", "pids", self.name]).stdout.split():
                run(["kill", "-9", pid])
            run(["ip", "netns", "del", self.name])
            subprocess.run(["rm", "-rf", str(self.tmp)])

    def write_config(self, text):
        self.config.write_text(text)
        self.config.chmod(0o644)

    def ip(self, *args):
        return run(["ip", "-n", self.name, *args], check=True).stdout

    def dump(self):
        """Everything the namespace's kernel holds (rules, routes of every table, addresses,
        the nft ruleset without handles), for comparing states."""
        def ip_json(*args):
            return json.loads(self.ip("-j", *args) or "[]")

        rules = ip_json("-4", "rule") + ip_json("-6", "rule")
        routes = ip_json("-4", "route", "show", "table", "all") + ip_json("-6", "route", "show", "table", "all")
        addresses = [(a["ifname"], i["local"], i["prefixlen"]) for a in ip_json("addr") for i in a.get("addr_info", [])]
        nft = json.loads(self.call(["nft", "-j", "list", "ruleset"]).stdout)["nftables"]
        for item in nft:
            for body in item.values():
                if isinstance(body, dict):
                    body.pop("handle", None)
        return {"rules": rules, "routes": routes, "addresses": sorted(addresses), "nft": nft[1:]}

    @contextlib.contextmanager
    def inside(self):
        """Move this (single-threaded) driver into the namespace; children inherit it."""
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(fd)
            yield
        finally:
            _setns(home)
            os.close(fd)
            os.close(home)

    def call(self, argv, env=None, input=None, check=True, timeout=300):
        """Run *argv* inside the namespace (untimed); return the CompletedProcess."""
        with self.inside():
            p = subprocess.run([str(a) for a in argv], env=env, input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{shlex.join(map(str, argv))} in {self.name}: exit {p.returncode}: {p.stderr.strip()[-800:]}")
        return p

    def sh(self, script, check=True):
        return self.call(["/bin/sh", "-ec", script], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, check=check)


def close_all():
    for ns in list(_open):
        try:
            ns.close()
        except Exception as e:  # keep deleting the rest
            print(f"bench: could not delete {ns.name}: {e}", file=sys.stderr)


def _on_signal(signum, _frame):
    close_all()
    sys.exit(128 + signum)


def install_cleanup():
    """Delete our namespaces at exit or on SIGINT/SIGTERM, and any left by a dead bench run."""
    atexit.register(close_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    for name in run(["ip", "netns", "list"]).stdout.split():
        parts = name.split("-")
        if parts[0] == PREFIX and len(parts) > 1 and parts[1].isdigit() and not Path(f"/proc/{parts[1]}").exists():
            for pid in run(["ip", "netns", "pids", name]).stdout.split():
                run(["kill", "-9", pid])
            run(["ip", "netns", "del", name])


class Cmd:
    """One contender: a command (or several run back to back: *calls* of (argv, env)), where
    it runs, and untimed *before*/*after* hooks that set the namespace's starting state."""

    def __init__(self, label, ns, argv=None, env=None, calls=None, before=None, after=None, repro=None):
        self.label, self.ns, self.before, self.after, self.repro = label, ns, before, after, repro
        self.calls = [([str(a) for a in c], e) for c, e in (calls or [(argv, env)])]
        self.cpu = []  # user+system CPU seconds of the timed children, per sample

    def timed(self):
        if self.before:
            self.before()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with self.ns.inside():
            t0 = time.perf_counter()
            for argv, env in self.calls:
                p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
                if p.returncode != 0:
                    raise RuntimeError(f"{self.label}: {shlex.join(argv)} exit {p.returncode}: {p.stderr.decode()[-800:]}")
            dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        if self.after:
            self.after()
        return dt

    def command(self):
        """The shell command that reproduces one sample by hand (NS: the namespace)."""
        if self.repro:
            return self.repro
        argv, env = self.calls[0]
        envargs = ["env", "-i", *[f"{k}={v}" for k, v in env.items()]] if env is not None else []
        one = shlex.join(["ip", "netns", "exec", "NS", *envargs, *argv])
        return one if len(self.calls) == 1 else f"{one}  # and so on: {len(self.calls)} commands in a row"


def interleave(cmds, runs, warmup=1, budget=None):
    """Run the contenders A B C A B C ... *runs* times (after *warmup* untimed rounds);
    stop early (keeping at least 3 rounds) when *budget* seconds are spent."""
    samples = {c.label: [] for c in cmds}
    for _ in range(warmup):
        for c in cmds:
            c.timed()
    for c in cmds:
        c.cpu.clear()
    start = time.monotonic()
    for i in range(runs):
        for c in cmds:
            samples[c.label].append(c.timed())
        if budget and i >= 2 and time.monotonic() - start > budget:
            break
    return samples


def stats(values, scale=1000.0):
    """median/min/max (in ms by default) of a list of samples in seconds."""
    v = [x * scale for x in values]
    return {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v), "samples": [round(x, 3) for x in v]}
