"""Where goal 1's milliseconds go: one cold first apply of `hooks/up`, timed in-process phase
by phase, in a throw-away namespace (as bench/cold.py INPROCESS, first apply, reset before each).

    .venv/bin/python -m bench.attribute [RUNS]

Each import of ours is timed on its own (in dependency order, after the floor's imports), then
the functions that make up a run are wrapped with perf_counter timers. The wrappers cost a few
µs each, so "run" here reads a little above cold.py's. Per-call rows (#1, #2 ...) show
pyroute2's first request of each message type paying a one-time encoder set-up. Not part of
`make bench`: a diagnosis tool, not a benchmark with a goal.
"""

import statistics
import sys

from bench import cold, scene
from bench.core import install_cleanup

PROBE = r"""
import functools, gc, importlib, json, sys, time
pc = time.perf_counter
import pyroute2, nftables, filelock
acc, calls, gc_start = {}, {}, []

def add(label, dt):
    acc[label] = acc.get(label, 0.0) + dt

def on_gc(phase, info):  # collections are part of what a phase costs: count them apart
    if phase == "start":
        gc_start[:] = [pc()]
    else:
        add("gc (all generations, imports and run)", pc() - gc_start[0])
gc.callbacks.append(on_gc)

for mod in ("vpnsplit.errors", "vpnsplit.plan", "vpnsplit.lease", "vpnsplit.engine", "vpnsplit.addresses",
            "vpnsplit.openvpn", "tomllib", "vpnsplit.config", "vpnsplit.lock", "vpnsplit.state", "vpnsplit.runner", "vpnsplit.hooks"):
    t = pc()
    importlib.import_module(mod)
    add(f"import {mod}", pc() - t)

import logging
from vpnsplit import engine, hooks, kernel, lock, nat, netlink, openvpn, plan, runner, state, transaction

def wrap(owner, attr, label, per_call=False):
    f = getattr(owner, attr)
    @functools.wraps(f)
    def timed(*a, **k):
        t = pc()
        try:
            return f(*a, **k)
        finally:
            dt = pc() - t
            add(label, dt)
            if per_call:
                calls[label] = calls.get(label, 0) + 1
                add(f"{label} #{calls[label]}", dt)
    setattr(owner, attr, timed)

for owner, attr, label, *per_call in [
    (openvpn, "parse", "openvpn.parse"), (runner, "load_config", "config: read + tomllib + checks"),
    (netlink.Netlink, "connect", "pyroute2 IPRoute()"), (lock.Lock, "__init__", "filelock.FileLock()"),
    (lock.Lock, "__enter__", "lock acquire"), (lock.Lock, "__exit__", "lock release"),
    (plan, "plan_up", "plan.plan_up"), (netlink.Netlink, "main_routes", "main table dump (overlap check)"),
    (kernel.Kernel, "our_rules", "rule dump (nldump)"), (netlink.Netlink, "table_routes", "tunnel table dump (nldump)"),
    (netlink.Netlink, "addresses", "address dump (nldump)"), (nat.NatTable, "__init__", "libnftables context"),
    (nat.NatTable, "observe", "nft listing"), (nat.NatTable, "change", "nft batch"),
    (netlink.Netlink, "add_route", "pyroute2 add route", True), (netlink.Netlink, "add_address", "pyroute2 add address", True),
    (netlink.Netlink, "add_rule", "pyroute2 add rule", True), (state.StateDir, "write", "state file (atomic, fsync)"),
    (logging.StreamHandler, "emit", "log lines"), (netlink.Netlink, "close", "pyroute2 close"),
    (transaction, "run", "= transaction.run (all writes)"), (engine, "converge", "= converge"),
]:
    wrap(owner, attr, label, bool(per_call))

t = pc()
rc = hooks.main(sys.argv[1:])
acc["= run (hooks.main)"] = pc() - t
acc["rc"] = rc
print(json.dumps(acc))
"""


def main(runs=25):
    t = scene.PROVIDER
    ns = scene.tunnel_ns("attr", [t])
    try:
        samples = [cold.inprocess_once(ns, t, True, PROBE) for _ in range(runs)]
    finally:
        ns.close()
    if any(s["rc"] for s in samples):
        raise SystemExit("bench.attribute: the hook failed")
    print(f"{'phase (' + str(runs) + ' cold first applies)':46s} {'median ms':>9s} {'min':>6s}")
    for key in samples[0]:
        if key != "rc":
            v = sorted(s[key] * 1000 for s in samples if key in s)
            print(f"{key:46s} {statistics.median(v):9.2f} {v[0]:6.2f}")


if __name__ == "__main__":
    install_cleanup()
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25)
