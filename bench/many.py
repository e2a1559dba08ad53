"""Benchmarks 3 and 4: many tunnels in one process against 100 shell runs; and the cost of
one tunnel's `up` and `status` in a namespace crowded with 100 tunnels and 10,000 rules.
"""

from bench import scene
from bench.cold import same_state
from bench.core import Cmd, interleave, stats

N_TUNNELS = 100
N_FOREIGN_RULES = 10_000


def has_up_all(ns):
    p = ns.call([*scene.VPNSPLIT, "up", "--help"], env={}, check=False)
    return "--all" in p.stdout


def _env(ns):
    return {"VPNSPLIT_CONFIG": str(ns.config), "VPNSPLIT_STATE_DIR": str(ns.state_dir)}


def run_many(runs=7, slow_runs=3, budget=150):
    tunnels = scene.many(N_TUNNELS)
    ns = scene.tunnel_ns("many", tunnels)
    out = {"tunnels": N_TUNNELS}
    try:
        up_all = has_up_all(ns)
        out["vpnsplit_up_all_exists"] = up_all
        shell = [(t.shell_argv(), t.shell_env(ns)) for t in tunnels]
        one = ([*scene.VPNSPLIT, "-q", "up", "--all"], "vpnsplit up --all") if up_all else None
        loop = ([scene.PY, "-I", scene.LOOP_UP], "one process: engine.up per tunnel, one Kernel() (bench/loop_up.py)")
        ones = [c for c in (one, loop) if c]

        # everything in place already: a re-apply (what a periodic `up --all` or a restart does)
        scene.up_all_in_one(ns, tunnels)
        reference = ns.dump()
        cmds = [Cmd("100 x shell_up.sh (in place)", ns, calls=shell)]
        cmds += [Cmd(f"{label} (in place)", ns, argv, env=_env(ns)) for argv, label in ones]
        samples = interleave(cmds, runs, budget=budget / 3)
        out["in_place_state_unchanged"] = not same_state(ns, reference, ns.dump())

        # from nothing: every tunnel's objects removed before each sample
        reset = lambda: scene.reset_all(ns, tunnels)  # noqa: E731
        cold = [Cmd("100 x shell_up.sh (from empty)", ns, calls=shell, before=reset)]
        cold += [Cmd(f"{label} (from empty)", ns, argv, env=_env(ns), before=reset) for argv, label in ones]
        samples.update(interleave(cold, runs, budget=budget / 3))
        out["from_empty_shell_equals_vpnsplit"] = _compare_cold(ns, tunnels, shell, ones[0][0])

        # 100 separate vpnsplit processes: what re-applying costs without a one-process mode
        scene.up_all_in_one(ns, tunnels)
        separate = Cmd("100 x vpnsplit up NAME (in place)", ns, calls=[([*scene.VPNSPLIT, "-q", "up", t.name], _env(ns)) for t in tunnels])
        slow = interleave([Cmd("100 x shell_up.sh (in place, paired)", ns, calls=shell), separate], slow_runs, warmup=0, budget=budget / 3)
        samples.update(slow)
        cmds += cold + [separate]
    finally:
        ns.close()
    res = {label: stats(v) for label, v in samples.items()}
    med = {k: v["median"] for k, v in res.items()}
    derived = {}
    for when in ("in place", "from empty"):
        for argv, label in ones:
            derived[f"{label} / 100 x shell ({when})"] = med[f"{label} ({when})"] / med[f"100 x shell_up.sh ({when})"]
    derived["100 x vpnsplit up NAME / 100 x shell (in place)"] = med["100 x vpnsplit up NAME (in place)"] / med["100 x shell_up.sh (in place, paired)"]
    out.update(contenders=res, derived=derived, commands={c.label: c.command() for c in cmds})
    return out


def _compare_cold(ns, tunnels, shell, one_argv):
    """From empty, the shell loop and vpnsplit's one process leave the same kernel state."""
    scene.reset_all(ns, tunnels)
    ns.call(one_argv, env=_env(ns))
    a = ns.dump()
    scene.reset_all(ns, tunnels)
    for argv, env in shell:
        ns.call(argv, env=env)
    diffs = same_state(ns, a, ns.dump())
    return not diffs or diffs[:6]


def run_scale(runs=10, budget=150):
    tunnels = scene.many(N_TUNNELS)
    t0 = tunnels[0]
    empty = scene.tunnel_ns("empty", tunnels, devices=[t0])
    loaded = scene.tunnel_ns("loaded", tunnels)
    out = {"tunnels_up": N_TUNNELS, "foreign_rules": N_FOREIGN_RULES}
    try:
        scene.up_all_in_one(loaded, tunnels)
        scene.foreign_rules(loaded, N_FOREIGN_RULES)
        out["rules_in_loaded_namespace"] = len(loaded.ip("rule").splitlines()) + len(loaded.ip("-6", "rule").splitlines())
        cmds = []
        for ns, where in ((empty, "empty"), (loaded, "100 tunnels + 10k rules")):
            ns.call(t0.hook_argv(), env=t0.ovpn_env(ns))
            down = lambda ns=ns: ns.call([*scene.VPNSPLIT, "-q", "down", t0.name], env=_env(ns))  # noqa: E731
            cmds.append(Cmd(f"hook up t0 after down [{where}]", ns, t0.hook_argv(), env=t0.ovpn_env(ns), before=down))
            cmds.append(Cmd(f"vpnsplit status t0 [{where}]", ns, [*scene.VPNSPLIT, "status", t0.name], env=_env(ns)))
        cmds.append(Cmd("vpnsplit status (all 100) [100 tunnels + 10k rules]", loaded, [*scene.VPNSPLIT, "status"], env=_env(loaded)))
        samples = interleave(cmds, runs, budget=budget)
    finally:
        empty.close()
        loaded.close()
    res = {c.label: stats(samples[c.label]) for c in cmds}
    med = {k: v["median"] for k, v in res.items()}
    out.update(
        contenders=res,
        commands={c.label: c.command() for c in cmds},
        derived={
            "up: loaded / empty": med[cmds[2].label] / med[cmds[0].label],
            "status: loaded / empty": med[cmds[3].label] / med[cmds[1].label],
        },
    )
    return out
