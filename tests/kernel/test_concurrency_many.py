"""Issue 4, section 3: 50 hook runs at once over 10 tunnels, and bounded, reported lock waits.

Each tunnel gets five events in a random (seeded) order, drawn from: OpenVPN up (init),
OpenVPN up (restart, the other address), OpenVPN down, `vpnsplit up NAME` and `vpnsplit
down NAME` by hand. All 50 start at once. After they have all ended, every tunnel gets one
last known event; the kernel and the state files must then equal those of a second,
untouched namespace that saw only those last events.
"""

import copy
import json
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.kernel.convergence import batched, canon, fresh_lab, ok, state_files
from tests.kernel.nslab import PROTO

TUNNELS, PER_TUNNEL = 10, 5


def config():
    out = []
    for i in range(TUNNELS):
        out.append(f'[tunnel.t{i}]\ndevice = "tun{i}"\ntable = {200 + i}\npriority = {2000 + 10 * i}\nalias = "10.192.{i}.1"\n')
        if i % 2:
            out.append('alias_device = "lo"\n')  # odd tunnels keep their alias on lo while down
        out.append("\n")
    return "".join(out)


def setup(ns):
    ns.write_config(config())
    for i in range(TUNNELS):
        ns.add_tun(f"tun{i}", f"10.8.{i}.2/24")
        ns.ip("addr", "add", f"10.8.{i}.3/24", "dev", f"tun{i}")  # the address a restart moves to


KINDS = ("up", "restart", "down", "vpnsplit up", "vpnsplit down")


def event(ns, i, kind, env=None):
    dev = f"tun{i}"
    if kind == "up":
        return ns.openvpn("up", dev, f"10.8.{i}.2", "255.255.255.0", "init", env=env)
    if kind == "restart":
        return ns.openvpn("up", dev, f"10.8.{i}.3", "255.255.255.0", "restart", env=env)
    if kind == "down":
        return ns.openvpn("down", dev, f"10.8.{i}.2", "255.255.255.0", env=env)
    return ns.vpnsplit(kind.split()[1], f"t{i}", env=env)


def last_event(i):
    return ("up", "restart", "down", "vpnsplit up")[i % 4]


def test_fifty_runs_at_once_end_in_the_state_of_the_last_event(ns, tmp_path):
    setup(ns)
    rng = random.Random(4)
    schedule = [(i, rng.choice(KINDS)) for i in range(TUNNELS) for _ in range(PER_TUNNEL)]
    rng.shuffle(schedule)
    assert len(schedule) == 50 and {k for _, k in schedule} == set(KINDS)

    def timed(call):
        start = time.monotonic()
        # 50 processes on a small machine: the last in the queue may wait longer than the
        # default 30 s; the bound is explicit (the short-timeout case is the next test)
        proc = event(ns, *call, env={"VPNSPLIT_LOCK_TIMEOUT": "300"})
        return proc, time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(schedule)) as pool:
        results = list(pool.map(timed, schedule))
    burst = time.monotonic() - start
    failed = [(call, p.returncode, p.stderr) for call, (p, _) in zip(schedule, results) if p.returncode != 0 or "Traceback" in p.stderr]
    assert not failed, failed
    # Which run of a tunnel went last is up to the lock, but each run is atomic under it: every
    # tunnel is now exactly in the state its record says (no mix of two runs' objects).
    check = ns.vpnsplit("check")
    assert check.returncode == 0, "after the burst:\n" + check.stderr
    rules = [json.dumps(r, sort_keys=True) for r in ns.dump()["rules"]]
    assert len(rules) == len(set(rules)), "duplicate rule after the burst"
    # the barrier: one last known event per tunnel
    with ThreadPoolExecutor(max_workers=TUNNELS) as pool:
        for proc in pool.map(lambda i: event(ns, i, last_event(i)), range(TUNNELS)):
            ok(proc)
    got_kernel, got_files = canon(ns.dump()), state_files(ns)

    with fresh_lab(tmp_path, "only-the-last-events") as ref:
        setup(ref)
        with batched(ref) as quick:
            for i in range(TUNNELS):
                event(quick, i, last_event(i))
        want_kernel, want_files = canon(ref.dump()), state_files(ref)

    assert got_files == want_files
    assert got_kernel == want_kernel
    rules = [json.dumps(r, sort_keys=True) for r in got_kernel["rules"]]
    assert len(rules) == len(set(rules)), "duplicate rule"
    up = {i for i in range(TUNNELS) if last_event(i) != "down"}
    snat = ns.snat()
    assert snat == {(f"10.192.{i}.1", f"tun{i}"): f"10.8.{i}.{3 if last_event(i) == 'restart' else 2}" for i in up}, snat
    assert ok(ns.vpnsplit("check")).returncode == 0
    slowest = max(t for _, t in results)
    print(f"{len(schedule)} concurrent runs in {burst:.1f}s (slowest {slowest:.1f}s), then {TUNNELS} last events")


HOLDER = """
import filelock, sys
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.readline()  # until the test says so
"""


def _argv(ns, i, timeout):
    """The exact command line `event(ns, i, "up")` runs, to start it with Popen."""
    recorded = []
    lab = copy.copy(ns)
    lab.exec = lambda *argv, **kw: recorded.append(["ip", "netns", "exec", ns.name, *map(str, argv)]) or subprocess.CompletedProcess(argv, 0)
    event(lab, i, "up", {"VPNSPLIT_LOCK_TIMEOUT": timeout})
    return recorded[0]


def _waiting_on(pid):
    """True once process *pid* sleeps between two tries of the lock: a vpnsplit run sleeps
    nowhere else (filelock polls flock with time.sleep)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "nanosleep" in f.read()
    except OSError:
        return False


def test_lock_waits_are_bounded_and_reported(ns):
    """While another run holds the lock: runs with a short VPNSPLIT_LOCK_TIMEOUT give up in
    time, say so and change nothing; runs with a longer one wait, then say how long."""
    setup(ns)
    ns.state_dir.mkdir()
    lock = ns.state_dir / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    runs = []
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        impatient = [subprocess.Popen(_argv(ns, i, "0.5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
        patient = [subprocess.Popen(_argv(ns, i, "60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3, 6)]
        runs = impatient + patient
        impatient = [(p.communicate(timeout=60), p.returncode, time.monotonic() - start) for p in impatient]
        while not all(_waiting_on(p.pid) for p in patient):
            assert time.monotonic() - start < 60, "the patient runs never reached the lock"
            time.sleep(0.05)
        time.sleep(1.5)  # every patient run now waits at least this long
        holder.stdin.write("release\n")
        holder.stdin.flush()
        patient = [(p.communicate(timeout=60), p.returncode) for p in patient]
    finally:
        for p in [holder, *runs]:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (_, err), rc, elapsed in impatient:
        assert rc == 1, err
        assert "held it for more than 0.5s; nothing was changed" in err, err
        assert elapsed < 30, f"gave up only after {elapsed:.1f}s"  # start-up on a busy machine included
    for (_, err), rc in patient:
        assert rc == 0 and "Traceback" not in err, err
        waited = re.search(r"waited (\d+\.\d)s for the lock", err)
        assert waited and float(waited.group(1)) >= 1.4, err
    for i in range(3):  # the impatient ones changed nothing
        assert ns.rules(200 + i) == []
    for i in range(3, 6):
        assert (2000 + 10 * i, f"10.8.{i}.2/32", 200 + i, PROTO) in ns.rules(200 + i)
