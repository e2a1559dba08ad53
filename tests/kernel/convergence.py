"""Helpers shared by the crash, concurrency and leak tests: fresh labs, comparable dumps, state files."""

import contextlib
import copy
import json
import subprocess

from tests.kernel.nslab import PROVIDER, REPO, WORK, NetnsLab, run

SIGKILLED = (-9, 137)  # killed directly, or through a shell that reported it

# provider: IPv4 + IPv6, both aliases on the tunnel device, strict (the default).
# work: IPv4 only, alias on lo (kept while down), strict too.
CONFIG = PROVIDER + WORK


@contextlib.contextmanager
def fresh_lab(tmp_path, tag):
    """A NetnsLab of its own (own namespace, state dir, config), always deleted afterwards."""
    where = tmp_path / tag
    where.mkdir(parents=True, exist_ok=True)
    lab = NetnsLab(where)
    try:
        yield lab
    finally:
        lab.close()


def canon(dump):
    """A dump with the element lists of nft sets and maps sorted: their listing order is the kernel's hash order."""
    dump = json.loads(json.dumps(dump))
    for item in dump["nft"]:
        for body in item.values():
            if isinstance(body, dict) and isinstance(body.get("elem"), list):
                body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
    return dump


def state_files(ns):
    """The state directory's records, comparable across runs: the lease JSON without its time stamp."""
    out = {}
    if not ns.state_dir.exists():
        return out
    for path in sorted(ns.state_dir.iterdir()):
        if path.name == "lock":
            continue
        text = path.read_text()
        if path.suffix == ".json":
            doc = json.loads(text)
            doc.pop("when", None)
            text = doc
        out[path.name] = text
    return out


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def provider_env(v6="fd00:8::1000"):
    return {"ifconfig_ipv6_local": v6, "ifconfig_ipv6_netbits": "64"}


def up_provider(ns, local="10.8.0.2", v6="fd00:8::1000", context="init", env=None):
    return ns.openvpn("up", "tun0", local, "255.255.255.0", context, env={**provider_env(v6), **(env or {})})


def down_provider(ns, local="10.8.0.2", v6="fd00:8::1000", env=None):
    return ns.openvpn("down", "tun0", local, "255.255.255.0", env={**provider_env(v6), **(env or {})})


def up_work(ns, local="10.9.0.6", context="init", env=None):
    return ns.openvpn("up", "tun1", local, "10.9.0.5", context, env=env)


def move_provider(ns, old=("10.8.0.2", "fd00:8::1000"), new=("10.8.0.7", "fd00:8::1007")):
    """The VPN server hands out new addresses: swap them on tun0 as OpenVPN would."""
    ns.ip("addr", "del", f"{old[0]}/24", "dev", "tun0")
    ns.ip("addr", "add", f"{new[0]}/24", "dev", "tun0")
    ns.ip("addr", "del", f"{old[1]}/64", "dev", "tun0")
    ns.ip("addr", "add", f"{new[1]}/64", "dev", "tun0", "nodad")


# Runs several hook / CLI calls in one Python process (in the namespace, each with exactly the
# environment it would have had), to set a scene quickly: importing pyroute2 once instead of
# once per call. Only for preparing states; the runs under test are real processes.
_DRIVER = """
import json, os, sys
from vpnsplit import cli, hooks
for argv in json.load(sys.stdin):
    assert argv[:2] == ["/usr/bin/env", "-i"], argv
    env, i = {}, 2
    while not argv[i].startswith("/"):
        key, _, value = argv[i].partition("=")
        env[key], i = value, i + 1
    os.environ.clear()
    os.environ.update(env)
    prog, rest = argv[i], argv[i + 1:]
    rc = cli.main(rest[3:]) if prog.endswith("python3") else hooks.main([os.path.basename(prog), *rest])
    if rc:
        sys.exit(f"inline call failed with {rc}: {argv}")
"""


class _Batch:
    """Records the vpnsplit calls made through a lab and runs them in one process, in order
    with the lab's other commands (those flush what is recorded first)."""

    def __init__(self, lab):
        self.real, self.pending = lab, []

    def lab(self):
        proxy = copy.copy(self.real)
        proxy.exec, proxy.ip, proxy.nft = self.exec, self.flushing(self.real.ip), self.flushing(self.real.nft)
        return proxy

    def flushing(self, method):
        def call(*args, **kwargs):
            self.flush()
            return method(*args, **kwargs)

        return call

    def exec(self, *argv, check=False, env=None, timeout=60):
        if argv and argv[0] == "/usr/bin/env" and env is None:
            self.pending.append([str(a) for a in argv])
            return subprocess.CompletedProcess(argv, 0, "", "")
        self.flush()
        return self.real.exec(*argv, check=check, env=env, timeout=timeout)

    def flush(self):
        if self.pending:
            calls, self.pending = self.pending, []
            proc = run(["ip", "netns", "exec", self.real.name, REPO / ".venv/bin/python3", "-I", "-c", _DRIVER], input=json.dumps(calls))
            assert proc.returncode == 0, proc.stderr


# Runs one hook or CLI call in its own process, exactly as _DRIVER does, but SIGKILLs it right
# after the step numbered argv[1] (a run with fewer steps finishes): the crash tests stop runs
# at every step in turn, the number of kill points coming from the code.
_KILL_AFTER = """
import os, signal, sys
from vpnsplit import cli, hooks, transaction
after, prog, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
real = transaction.run
def run(steps):
    if after <= len(steps):
        step = steps[after - 1]
        def do(do=step.do):
            changed = do()
            os.kill(os.getpid(), signal.SIGKILL)
            return changed
        step.do = do
    return real(steps)
transaction.run = run
sys.exit(cli.main(rest[3:]) if prog.endswith("python3") else hooks.main([os.path.basename(prog), *rest]))
"""


def killing(lab, after):
    """*lab*, but each vpnsplit call through it (hooks and CLI) is SIGKILLed right after its step *after*."""
    proxy = copy.copy(lab)

    def exec(*argv, check=False, env=None, timeout=60):
        argv = [str(a) for a in argv]
        if argv[:2] == ["/usr/bin/env", "-i"]:
            i = next(i for i in range(2, len(argv)) if argv[i].startswith("/"))
            argv = [*argv[:i], str(REPO / ".venv/bin/python3"), "-I", "-c", _KILL_AFTER, str(after), *argv[i:]]
        return lab.exec(*argv, check=check, env=env, timeout=timeout)

    proxy.exec = exec
    return proxy


@contextlib.contextmanager
def batched(lab):
    """`with batched(ns) as quick: prefix(quick)`: the same calls, one process."""
    batch = _Batch(lab)
    yield batch.lab()
    batch.flush()
