"""Benchmarks 1 and 2: one hook, cold (against a shell script and the import floor), and the
no-op re-run (against the first apply), interleaved in one loop.
"""

import collections
import json
import re
import subprocess
import time

from bench import scene
from bench.core import Cmd, interleave, stats


def same_state(ns, a, b):
    """Compare two kernel dumps (nft items order-insensitive); return a list of differences."""
    diffs = []
    for key in ("rules", "routes", "addresses"):
        only_a = [x for x in a[key] if x not in b[key]]
        only_b = [x for x in b[key] if x not in a[key]]
        diffs += [f"{key}: only vpnsplit: {x}" for x in only_a] + [f"{key}: only shell: {x}" for x in only_b]
    na, nb = (sorted(json.dumps(_sorted_elems(x), sort_keys=True) for x in d["nft"]) for d in (a, b))
    diffs += [f"nft: only vpnsplit: {x}" for x in na if x not in nb] + [f"nft: only shell: {x}" for x in nb if x not in na]
    return diffs


def _sorted_elems(item):
    """A set or map lists its elements in no fixed order: sort them for comparison."""
    body = next(iter(item.values()))
    if isinstance(body, dict) and "elem" in body:
        body = dict(body, elem=sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True)))
        return {next(iter(item)): body}
    return item


def verify_equivalence(ns, t):
    """Apply with vpnsplit, dump; reset; apply with the shell script, dump; compare."""
    scene.reset_all(ns, [t])
    empty = ns.dump()
    ns.call(t.hook_argv(), env=t.ovpn_env(ns))
    by_vpnsplit = ns.dump()
    scene.reset_all(ns, [t])
    if ns.dump() != empty:
        raise RuntimeError("reset_all does not restore the empty state: benchmark scenes would drift")
    ns.call(t.shell_argv(), env=t.shell_env(ns))
    by_shell = ns.dump()
    scene.reset_all(ns, [t])
    return same_state(ns, by_vpnsplit, by_shell)


def verify_noop(ns, t):
    """Run `up` once more with everything in place, watching `ip monitor all` and `nft monitor`;
    also compare full dumps and the state file's mtime. Returns a dict of findings."""
    scene.reset_all(ns, [t])
    ns.call(t.hook_argv(), env=t.ovpn_env(ns))
    before, state = ns.dump(), ns.state_dir / f"{t.name}.json"
    mtime = state.stat().st_mtime_ns
    with ns.inside():
        mons = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for argv in (["ip", "monitor", "all"], ["nft", "monitor"])]
    time.sleep(0.3)  # let both monitors subscribe
    p = ns.call(t.hook_argv(), env=t.ovpn_env(ns))
    time.sleep(0.3)
    seen = []
    for m in mons:
        m.terminate()
        out, _ = m.communicate(timeout=10)
        # `ip monitor all` in a netns prints this once for the peer-netns lookup: not an event
        seen += [line for line in out.splitlines() if line.strip() and not line.startswith("Error: Peer netns reference is invalid")]
    # the probe: one visible write must show up, or the monitors proved nothing
    with ns.inside():
        mons = [subprocess.Popen(["ip", "monitor", "all"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    time.sleep(0.3)
    ns.ip("rule", "add", "from", "10.99.99.99", "lookup", "main", "priority", "30000")
    ns.ip("rule", "del", "from", "10.99.99.99", "lookup", "main", "priority", "30000")
    time.sleep(0.3)
    mons[0].terminate()
    probe = mons[0].communicate(timeout=10)[0]
    return {
        "monitor_lines_during_noop": seen,
        "monitor_sees_a_probe_write": "10.99.99.99" in probe,
        "dump_unchanged": ns.dump() == before,
        "state_file_untouched": state.stat().st_mtime_ns == mtime,
        "hook_said": p.stderr.strip(),
    }


def importtime(argv, env=None, ns=None):
    """Self time per top-level package from `python -X importtime` (ms; inflated by the probe)."""
    argv = [argv[0], "-X", "importtime", *argv[1:]]
    p = ns.call(argv, env=env, check=False)
    per_pkg, mods = collections.Counter(), {}
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            self_us, name = int(m.group(1)), m.group(4)
            per_pkg[name.split(".")[0]] += self_us
            mods[name] = self_us
    return per_pkg, mods


def floor_breakdown(ns, t):
    """What the floor is made of, and which imports the hook adds on top of it."""
    runs = 5
    floor_pkgs, hook_pkgs = collections.Counter(), collections.Counter()
    hook_mods, floor_mods = {}, {}
    hook = [scene.PY, "-I", "-m", "vpnsplit.hooks", "up", *t.six()]
    for _ in range(runs):
        scene.reset_all(ns, [t])
        pk, md = importtime(hook, env=t.ovpn_env(ns), ns=ns)
        hook_pkgs.update(pk)
        hook_mods.update({k: hook_mods.get(k, 0) + v for k, v in md.items()})
        pk, md = importtime(scene.FLOOR, ns=ns)
        floor_pkgs.update(pk)
        floor_mods.update({k: floor_mods.get(k, 0) + v for k, v in md.items()})
    scene.reset_all(ns, [t])
    ms = lambda us: round(us / runs / 1000, 2)  # noqa: E731
    extra = {k: ms(v) for k, v in hook_mods.items() if k not in floor_mods}
    return {
        "note": f"python -X importtime, mean of {runs} runs; self times, so they add up; the probe inflates them",
        "floor_total_ms": ms(sum(floor_pkgs.values())),
        "floor_by_package_ms": {k: ms(v) for k, v in floor_pkgs.most_common(15)},
        "hook_total_ms": ms(sum(hook_pkgs.values())),
        "hook_only_total_ms": round(sum(extra.values()), 2),
        "hook_only_modules_ms": dict(sorted(extra.items(), key=lambda kv: -kv[1])[:25]),
    }


INPROCESS = """
import sys, time, json
t0 = time.perf_counter()
import pyroute2, nftables, filelock
t1 = time.perf_counter()
from vpnsplit import hooks
t2 = time.perf_counter()
rc = hooks.main(sys.argv[1:])
t3 = time.perf_counter()
print(json.dumps({"rc": rc, "floor_imports": t1 - t0, "our_imports": t2 - t1, "run": t3 - t2}))
"""


def inprocess(ns, t, runs):
    """The hook's own cost measured inside one process, after the floor's imports: our imports,
    then hooks.main (the rest of the imports it needs, the work, the state file). Short
    intervals timed in-process are far less exposed to machine load than whole-process times.

    The hook's stderr (a line per change) goes to a file, as with OpenVPN's --log; interleaved,
    the same run with stderr through a pipe that this driver reads (what ns.call does): every
    line then wakes the driver, which on a loaded 2-CPU host can preempt the hook."""
    parts = {"our_imports": [], "run": [], "total_above_floor": [], "total_above_floor, stderr through a pipe": []}
    for _ in range(runs):
        for to_file in (True, False):
            d = inprocess_once(ns, t, to_file)
            total = d["our_imports"] + d["run"]
            if to_file:
                parts["our_imports"].append(d["our_imports"])
                parts["run"].append(d["run"])
                parts["total_above_floor"].append(total)
            else:
                parts["total_above_floor, stderr through a pipe"].append(total)
    scene.reset_all(ns, [t])
    return {k: stats(v) for k, v in parts.items()}


def inprocess_once(ns, t, stderr_to_file, code=INPROCESS):
    """One cold first apply in-process (*code*: a probe that prints one JSON line; bench/attribute.py passes its own)."""
    scene.reset_all(ns, [t])
    with open(ns.tmp / "hook.log", "w") as log, ns.inside():
        p = subprocess.run([scene.PY, "-I", "-c", code, "up", *t.six()], env=t.ovpn_env(ns), text=True,
                           stdout=subprocess.PIPE, stderr=log if stderr_to_file else subprocess.PIPE, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"INPROCESS hook up: exit {p.returncode}: {(ns.tmp / 'hook.log').read_text()[-800:]}{p.stderr or ''}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(runs=20, budget=120):
    t = scene.PROVIDER
    ns = scene.tunnel_ns("cold", [t])
    try:
        diffs = verify_equivalence(ns, t)
        reset = lambda: scene.reset_all(ns, [t])  # noqa: E731
        cmds = [
            Cmd("hook up (first apply)", ns, t.hook_argv(), env=t.ovpn_env(ns), before=reset),
            Cmd("hook up (no-op re-run)", ns, t.hook_argv(), env=t.ovpn_env(ns)),
            Cmd("shell script (ip + nft)", ns, t.shell_argv(), env=t.shell_env(ns), before=reset),
            Cmd("floor: import pyroute2, nftables, filelock", ns, scene.FLOOR, env={}),
            Cmd("python -I -c pass", ns, scene.BARE, env={}),
        ]
        samples = interleave(cmds, runs, budget=budget)
        inproc = inprocess(ns, t, runs)
        noop = verify_noop(ns, t)
        breakdown = floor_breakdown(ns, t)
    finally:
        ns.close()
    res = {c.label: stats(samples[c.label]) for c in cmds}
    cpu = {c.label: stats(c.cpu) for c in cmds}
    med = {k: v["median"] for k, v in res.items()}
    hook, noop_med, shell, floor = (med[c.label] for c in cmds[:4])
    chook, cnoop, cshell, cfloor = (cpu[c.label]["median"] for c in cmds[:4])
    return {
        "contenders": res,
        "cpu": cpu,
        "inprocess": inproc,
        "commands": {c.label: c.command() for c in cmds},
        "derived": {
            "hook_over_shell": hook / shell,
            "hook_over_floor": hook / floor,
            "hook_ms_above_floor": hook - floor,
            "noop_ms_above_floor": noop_med - floor,
            "noop_over_first_apply": noop_med / hook,
            "floor_ms_above_bare_python": floor - med[cmds[4].label],
            "cpu_hook_ms_above_floor": chook - cfloor,
            "cpu_noop_ms_above_floor": cnoop - cfloor,
            "cpu_hook_over_floor": chook / cfloor,
            "cpu_hook_over_shell": chook / cshell,
            "cpu_noop_over_first_apply": cnoop / chook,
        },
        "shell_state_differs": diffs,
        "noop_check": noop,
        "imports": breakdown,
    }
