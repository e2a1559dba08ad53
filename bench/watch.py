"""Part 6: `vpnsplit watch` (issue 14): time to heal, idle cost, a 10,000-rule storm, packets leaked in the gap.

Heal time: from the moment before the command that makes the foreign change is started to the
end of the watcher's converge that put the last object back (its --json line's wall clock),
per injection, injections spaced beyond the rate-limit period so none waits for a token.
Leaks: a sender bound to the alias sends UDP at ~1 kHz towards 203.0.113.1; what reaches
the far end of the uplink (a counter in the "isp" namespace) leaked out of the tunnel.
"""

import json
import queue
import statistics
import subprocess
import threading
import time

from bench import scene
from bench.core import Netns

PERIOD, BURST, SPACING = 0.5, 5, 1.0  # heals every SPACING s stay within the budget: none is rate-limited
INJECTIONS = {
    "rule sweep": "ip -4 rule flush protocol 118; ip -6 rule flush protocol 118",
    "nft flush ruleset": "nft flush ruleset",
    "alias removed": "ip addr del 10.192.8.1/32 dev tun0",
}
SWEEP_AND_FLUSH = "ip -4 rule flush protocol 118; ip -6 rule flush protocol 118; nft flush ruleset"
SEND = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.192.8.1", 0))
while True:
    try:
        s.sendto(b"x", ("203.0.113.1", 9))
    except OSError:
        pass  # strict: unreachable while nothing routes the alias
    time.sleep(0.001)
"""


class Watcher:
    """`vpnsplit watch --json` spawned inside *ns* (setns, no `ip netns exec`); its JSON lines in a queue."""

    def __init__(self, ns, *args):
        env = {"VPNSPLIT_CONFIG": str(ns.config), "VPNSPLIT_STATE_DIR": str(ns.state_dir)}
        with ns.inside():
            self.proc = subprocess.Popen([*scene.VPNSPLIT, "watch", "--json", *args], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.q, self.log = queue.Queue(), []
        threading.Thread(target=lambda: [self.q.put(json.loads(ln)) for ln in self.proc.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.log.append(line) for line in self.proc.stderr], daemon=True).start()
        self.lines(quiet=2.0)

    def lines(self, quiet):
        """The JSON lines until none came for *quiet* seconds."""
        out = []
        while True:
            try:
                out.append(self.q.get(timeout=quiet))
            except queue.Empty:
                return out

    def cpu(self):
        """User+system CPU seconds the watcher process has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100.0  # utime, stime in clock ticks (USER_HZ 100)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _world():
    """Tunnel provider up on tun0 (strict, alias on tun0) in *ns*, an uplink to *isp* counting what arrives."""
    ns = scene.tunnel_ns("watch", [scene.PROVIDER])
    isp = Netns("isp")
    ns.call(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", isp.name])
    ns.sh("ip addr add 198.51.100.10/24 dev eth0; ip link set eth0 up; ip route add default via 198.51.100.1")
    isp.sh("ip addr add 198.51.100.1/24 dev eth0; ip link set eth0 up; ip addr add 203.0.113.1/32 dev lo")
    isp.call(["nft", "-f", "-"], input="table inet count {\n chain c {\n type filter hook prerouting priority 0;\n"
                                      " udp dport 9 counter\n }\n}\n")
    scene.up_all_in_one(ns, [scene.PROVIDER])
    return ns, isp


def _arrived(isp):
    rules = json.loads(isp.call(["nft", "-j", "list", "chain", "inet", "count", "c"]).stdout)["nftables"]
    return next(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)


def _inject(ns, w, script):
    """Make one foreign change; (ms to the end of the converge that put the last object back, converges)."""
    t0 = time.time()
    ns.sh(script)
    heals = [c for c in w.lines(quiet=0.3) if "converge" in c]
    healed = [c["at"] for c in heals if c["changes"]]
    return ((max(healed) - t0) * 1000 if healed else None), len(heals)


def _summary(ms):
    ok = sorted(x for x in ms if x is not None)
    p99 = ok[min(len(ok) - 1, round(0.99 * (len(ok) - 1)))] if ok else None
    return {"n": len(ms), "healed": len(ok), "median_ms": statistics.median(ok) if ok else None, "p99_ms": p99,
            "max_ms": max(ok) if ok else None, "samples": [None if x is None else round(x, 2) for x in ms]}


def heal_times(n):
    ns, isp = _world()
    w = Watcher(ns, "--period", str(PERIOD), "--burst", str(BURST))
    out, sender = {}, None
    try:
        for kind, script in INJECTIONS.items():
            samples, converges = [], 0
            for _ in range(n):
                ms, c = _inject(ns, w, script)
                samples.append(ms)
                converges += c
                time.sleep(max(0.0, SPACING - 0.3))
            out[kind] = {**_summary(samples), "converges": converges}
        # idle: nothing changes for a minute
        cpu0, t0 = w.cpu(), time.monotonic()
        time.sleep(60)
        out["idle"] = {"seconds": round(time.monotonic() - t0, 1), "cpu_s": round(w.cpu() - cpu0, 3),
                       "converges": len([c for c in w.lines(quiet=0.1) if "converge" in c])}
        # packets leaked through the uplink while the watcher heals (strict tunnel, sender on the alias)
        with ns.inside():
            sender = subprocess.Popen([scene.PY, "-I", "-c", SEND])
        time.sleep(1.0)
        base = _arrived(isp)
        time.sleep(2.0)
        out["leak baseline (2 s, nothing injected)"] = {"packets": _arrived(isp) - base}
        leaks = {k: INJECTIONS[k] for k in ("rule sweep", "nft flush ruleset")}
        for kind, script in (*leaks.items(), ("rule sweep + nft flush ruleset", SWEEP_AND_FLUSH)):
            leaked, gaps = [], []
            for _ in range(max(10, n // 3)):
                before = _arrived(isp)
                ms, _ = _inject(ns, w, script)
                time.sleep(0.2)
                leaked.append(_arrived(isp) - before)
                gaps.append(ms)
                time.sleep(max(0.0, SPACING - 0.5))
            out[f"leak: {kind}"] = {"packets_per_injection": _stats(leaked), "gap": _summary(gaps), "samples": leaked}
        out["check after all injections"] = ns.call([*scene.VPNSPLIT, "check"], env=_env(ns), check=False).returncode
    finally:
        if sender:
            sender.kill()
            sender.wait()
        w.stop()
        out["watcher log lines"] = len(w.log)
        ns.close()
        isp.close()
    return out


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _env(ns):
    return {"VPNSPLIT_CONFIG": str(ns.config), "VPNSPLIT_STATE_DIR": str(ns.state_dir)}


def storm():
    """10 tunnels up; 10,000 foreign rules added and removed; then again with vpnsplit's 20 rules swept among them."""
    tunnels = scene.many(10)
    ns = scene.tunnel_ns("storm", tunnels)
    scene.up_all_in_one(ns, tunnels)
    rules = [f"rule {{}} from 198.18.{i // 250}.{i % 250 + 1}/32 lookup 5000 priority {20000 + i % 100}"
             for i in range(10000)]
    w = Watcher(ns)
    out = {}
    try:
        for label, dels in (("10,000 foreign rules added, then removed", []),
                            ("the same, with vpnsplit's 20 rules deleted amid the removals",
                             [f"rule del priority {t.priority + k}" for t in tunnels for k in (0, 1)])):
            cpu0, t0 = w.cpu(), time.monotonic()
            ns.call(["ip", "-batch", "-"], input="\n".join(r.format("add") for r in rules) + "\n")
            removals = [r.format("del") for r in rules]
            removals[5000:5000] = dels
            ns.call(["ip", "-batch", "-"], input="\n".join(removals) + "\n")
            converges = [c for c in w.lines(quiet=2.0) if "converge" in c]
            out[label] = {"converges": len(converges), "changes": sum(c["changes"] for c in converges),
                          "converge_cpu_ms": round(sum(c["cpu_ms"] for c in converges), 1),
                          "watcher_cpu_s": round(w.cpu() - cpu0, 3), "events": sum(c["events"] for c in converges),
                          "overflowed": any("ENOBUFS" in c["cause"] for c in converges),
                          "seconds": round(time.monotonic() - t0 - 2.0, 1)}
        out["check afterwards"] = ns.call([*scene.VPNSPLIT, "check"], env=_env(ns), check=False).returncode
    finally:
        w.stop()
        ns.close()
    return out


def run(n=50):
    with open("/proc/loadavg") as f:
        start = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg": f.read().split()[:3]}
    return {**start, "parameters": {"period_s": PERIOD, "burst": BURST, "spacing_s": SPACING, "injections": n},
            "heal": heal_times(n), "storm": storm()}


def goal(part):
    """Goal 6 for bench/__main__.goals: every kind healed, median <= 100 ms and p99 <= 500 ms."""
    kinds = [part["heal"][k] for k in INJECTIONS]
    ok = all(k["healed"] == k["n"] and k["median_ms"] <= 100 and k["p99_ms"] <= 500 for k in kinds)
    measured = "; ".join(f"{name} {k['median_ms']:.0f} / {k['p99_ms']:.0f} ms ({k['healed']}/{k['n']} healed)"
                         for name, k in zip(INJECTIONS, kinds))
    return {"n": 6, "measured": measured, "ok": ok,
            "goal": "vpnsplit watch heals a rule sweep, nft flush ruleset, lost alias: median ≤ 100 ms, p99 ≤ 500 ms"}


def render(part):
    """Section 6 of BENCHMARKS.md (nothing if part 6 did not run)."""
    if not part:
        return []
    if "error" in part:
        return ["## 6. vpnsplit watch", "", f"failed: {part['error']}", ""]
    h, s, p = part["heal"], part["storm"], part["parameters"]
    rows = ["| injection | median ms | p99 ms | max ms | healed | converges |", "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| `{INJECTIONS[k]}` | {h[k]['median_ms']:.1f} | {h[k]['p99_ms']:.1f} | {h[k]['max_ms']:.1f} | "
             f"{h[k]['healed']}/{h[k]['n']} | {h[k]['converges']} |" for k in INJECTIONS]
    leaks = ["| during | packets leaked per injection (median, min-max) | gap median / p99 ms |", "|---|---:|---:|"]
    for k, v in h.items():
        if k.startswith("leak: "):
            pk, gap = v["packets_per_injection"], v["gap"]
            leaks.append(f"| {k[6:]} | {pk['median']} ({pk['min']}-{pk['max']}) | "
                         f"{gap['median_ms']:.1f} / {gap['p99_ms']:.1f} |")
    storm = ["| storm | converges | changes | CPU of those converges ms | watcher CPU s | overflowed |",
             "|---|---:|---:|---:|---:|---|"]
    storm += [f"| {k} | {v['converges']} | {v['changes']} | {v['converge_cpu_ms']} | {v['watcher_cpu_s']} | "
              f"{v['overflowed']} |" for k, v in s.items() if isinstance(v, dict)]
    return [
        "## 6. vpnsplit watch", "",
        f"Measured {part['measured_at']} (load {part['loadavg']}). Tunnel provider (strict, alias 10.192.8.1 on "
        f"tun0) up in a namespace with an uplink; `vpnsplit watch --period {p['period_s']:g} --burst {p['burst']}` "
        f"running. {p['injections']} injections of each kind, {p['spacing_s']:g} s apart (beyond the rate-limit "
        "period, so no heal waits for a token). Heal time: from just before the injecting command starts to the end "
        "of the converge that put the last object back (the watcher's --json line).", "",
        *rows, "",
        f"Idle: {h['idle']['cpu_s']} s of CPU over {h['idle']['seconds']} s with nothing changing "
        f"({h['idle']['converges']} converges). `vpnsplit check` after all injections: "
        f"exit {h['check after all injections']}.", "",
        "Packets leaked through the uplink while the watcher heals: a sender bound to the alias sends UDP at ~1 kHz to "
        f"203.0.113.1; the far end of the uplink counts what arrives (baseline, nothing injected, 2 s: "
        f"{h['leak baseline (2 s, nothing injected)']['packets']}).", "",
        *leaks, "",
        "10 tunnels up, 10,000 foreign rules (`ip -batch`):", "",
        *storm, "",
        f"`vpnsplit check` afterwards: exit {s['check afterwards']}.", "",
    ]
