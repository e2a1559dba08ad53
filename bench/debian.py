"""Benchmark 6: one hook's first apply, cold, with Debian's own pyroute2 and filelock (what
the .deb runs: /usr/bin/python3, python3-pyroute2 0.7.2 on Debian 12) next to the current
releases from PyPI (the venv), interleaved, each against its own import floor.

Both run the checkout's lib/vpnsplit (put first on sys.path), so only the libraries differ.
"""

from bench import scene
from bench.core import REPO, Cmd, interleave, stats

SYSTEM_PY = "/usr/bin/python3"
LIB = str(REPO / "lib")
HOOK = f"import sys; sys.path.insert(0, {LIB!r}); from vpnsplit import hooks; sys.exit(hooks.main(sys.argv[1:]))"
FLOOR = "import pyroute2, nftables, filelock"
VERSIONS = ("import sys, importlib.metadata as m; print(m.version('pyroute2'), m.version('filelock'), "
            "sys.version.split()[0], m.distribution('pyroute2').locate_file(''))")


def _versions(ns, py):
    p = ns.call([py, "-I", "-c", VERSIONS], env={}, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{py}: pyroute2 or filelock missing ({p.stderr.strip()[-200:]}): "
                           "apt install python3-pyroute2 python3-filelock")
    pyroute2, filelock, python, where = p.stdout.split()
    return {"pyroute2": pyroute2, "filelock": filelock, "python": python, "site": where}


def run(runs=20, budget=120):
    t = scene.PROVIDER
    ns = scene.tunnel_ns("debian", [t])
    try:
        interpreters = {"current (venv)": scene.PY, "Debian's (/usr/bin/python3)": SYSTEM_PY}
        versions = {k: _versions(ns, py) for k, py in interpreters.items()}
        reset = lambda: scene.reset_all(ns, [t])  # noqa: E731
        cmds = []
        for label, py in interpreters.items():
            v = versions[label]
            what = f"pyroute2 {v['pyroute2']}, filelock {v['filelock']}"
            cmds += [Cmd(f"hook up (first apply), {label}: {what}", ns, [py, "-I", "-c", HOOK, "up", *t.six()],
                         env=t.ovpn_env(ns), before=reset),
                     Cmd(f"floor, {label}: {FLOOR}", ns, [py, "-I", "-c", FLOOR], env={})]
        samples = interleave(cmds, runs, budget=budget)
    finally:
        ns.close()
    wall, cpu = ({c.label: stats(v(c)) for c in cmds} for v in (lambda c: samples[c.label], lambda c: c.cpu))
    derived = {}
    for unit, table in (("", wall), ("CPU ", cpu)):
        cur_hook, cur_floor, deb_hook, deb_floor = (table[c.label]["median"] for c in cmds)
        derived |= {f"first apply {unit}Debian's / current": deb_hook / cur_hook,
                    f"floor {unit}Debian's / current": deb_floor / cur_floor,
                    f"{unit}ms above the floor, current": cur_hook - cur_floor,
                    f"{unit}ms above the floor, Debian's": deb_hook - deb_floor}
    return {"versions": versions, "contenders": wall, "cpu": cpu, "derived": derived,
            "commands": {c.label: c.command() for c in cmds}}
