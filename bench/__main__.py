"""`make bench`: run benchmarks 1 and 3-10 (2 is measured with 1) in throw-away namespaces; write bench/results.json and BENCHMARKS.md.

    .venv/bin/python -m bench [--quick] [--only 1,3] [--no-write]

Needs root (namespaces). It is a benchmark, not a test: nothing here passes or fails on a
time; goals are reported as met or missed.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from bench import apps, backstop, cold, core, debian, dnslat, many, packet, report, watch

RESULTS = core.REPO / "bench/results.json"
MARKDOWN = core.REPO / "BENCHMARKS.md"


def _out(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = subprocess.run([core.PY, "-I", "-c", "import pyroute2, filelock, sys; print(pyroute2.__version__, filelock.__version__, sys.version.split()[0])"],
                              capture_output=True, text=True).stdout.split()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": versions[2] if len(versions) > 2 else "?",
        "pyroute2": versions[0] if versions else "?",
        "filelock": versions[1] if len(versions) > 1 else "?",
        "nft": _out(["nft", "--version"]),
        "ip": _out(["ip", "-V"]),
        "iperf3": _out(["iperf3", "--version"]),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def _ab_goal(n, goal, ratios, rest, why, ok=True):
    """A connection A/B's goal (parts 8 and 10): *ratios* are its throughput, conn/s and CPU per connection
    (each >= 0.97 meets it, with *ok*), *rest* closes the measured figures' parenthesis."""
    t, c, cpu = ratios
    return {"n": n, "goal": goal,
            "measured": f"throughput {100 * t:.0f}%, conn/s {100 * c:.0f}% (from CPU per connection: {100 * cpu:.0f}%{rest}",
            "ok": t >= 0.97 and c >= 0.97 and ok, "why": why}


def goals(r):
    out = []
    c = r.get("1_cold", {})
    if "derived" in c:
        d = c["derived"]
        ip = c["inprocess"]
        out.append({"n": 1, "goal": "hook's own work ≤ 10 ms above the floor (import pyroute2, nftables, filelock)",
                    "measured": f"{ip['total_above_floor']['median']:.1f} ms above the floor timed in-process "
                                f"({ip['our_imports']['median']:.1f} our imports + {ip['run']['median']:.1f} run); whole process: "
                                f"wall {d['hook_ms_above_floor']:.1f} ms, CPU {d['cpu_hook_ms_above_floor']:.1f} ms above "
                                f"({d['hook_over_floor']:.2f}× floor, {d['hook_over_shell']:.1f}× the shell script)",
                    "ok": ip["total_above_floor"]["median"] <= 10,
                    "why": "what is left is pyroute2's per-request write path (six writes ~2.7 ms), libnftables' context, "
                           "listing and batch (~2.8 ms), our imports (tomllib ~1.5 ms): no cut found that keeps pyroute2 "
                           "for every write and the nft listing a first apply needs (part 2)"})
        n = c["noop_check"]
        quiet = not n["monitor_lines_during_noop"] and n["dump_unchanged"] and n["state_file_untouched"]
        out.append({"n": 2, "goal": "no-op re-run: no kernel writes, faster than the first apply",
                    "measured": f"{'no writes' if quiet else 'WRITES SEEN'}; CPU {d['cpu_noop_over_first_apply']:.2f}× the first apply (wall {d['noop_over_first_apply']:.2f}×)",
                    "ok": quiet and d["cpu_noop_over_first_apply"] < 1})
    mt = r.get("3_many", {})
    if "derived" in mt:
        key = next(k for k in mt["derived"] if k.startswith("vpnsplit up --all" if mt["vpnsplit_up_all_exists"] else "one process") and "in place" in k)
        v = mt["derived"][key]
        out.append({"n": 3, "goal": "100 tunnels re-applied in one process ≤ 0.2× 100 shell-script runs",
                    "measured": f"{v:.3f}× ({key.split(' / ')[0]}, in place)", "ok": v <= 0.2})
    s = r.get("4_scale", {})
    if "derived" in s:
        up, st = s["derived"]["up: loaded / empty"], s["derived"]["status: loaded / empty"]
        out.append({"n": 4, "goal": "with 100 tunnels + 10k foreign rules, up and status ≤ 2× an empty namespace",
                    "measured": f"up {up:.2f}×, status {st:.2f}×", "ok": up <= 2 and st <= 2})
    p = r.get("5_packet", {})
    if "derived" in p:
        d = p["derived"]
        t, cr = d["throughput alias+SNAT / plain"], d["conn/s 100 tunnels / 1 tunnel"]
        cpu = 1 / d["CPU per connection, 100 tunnels / 1 tunnel"]  # the conn/s ratio CPU time alone predicts
        first = 1 / d["CPU per connection, 100 tunnels with tun0's rules first / 1 tunnel"]
        out.append({"n": 5, "goal": "throughput from the alias ≥ 95% of plain; conn/s with 100 tunnels ≥ 90% of 1 tunnel",
                    "measured": f"throughput {100 * t:.0f}%, conn/s {100 * cr:.0f}% (from CPU per connection: {100 * cpu:.0f}%; "
                                f"with tun0's rules first: {100 * first:.0f}%)",
                    # both conn/s figures must clear the bar: wall-clock conn/s alone swings ±10% with others' load
                    "ok": t >= 0.95 and min(cr, cpu) >= 0.9,
                    "why": "the kernel's ip rules are a linear list and the bench puts tun0's rules after 198 others: "
                           "each new connection walks them ~3 times (part 5); nft does not grow with tunnels. "
                           "Closes for a tunnel whose rules come first (a low `id`/`priority`), which is the user's choice"})
    if "heal" in r.get("6_watch", {}):
        out.append(watch.goal(r["6_watch"]))
    dn = r.get("7_dns", {})
    if "derived" in dn:
        m, p99 = dn["derived"]["median redirect / direct"], dn["derived"]["p99 redirect / direct"]
        out.append({"n": 7, "goal": "a DNS lookup through the default VPN's redirect within 5% of direct (median, p99)",
                    "measured": f"median {100 * (m - 1):+.1f}%, p99 {100 * (p99 - 1):+.1f}% "
                                f"({dn['contenders']['redirect']['median']:.3f} vs {dn['contenders']['direct']['median']:.3f} ms)",
                    "ok": m <= 1.05 and p99 <= 1.05,
                    "why": f"the redirect's own work, {1000 * (dn['contenders']['redirect']['median'] - dn['contenders']['direct']['median']):.0f} µs "
                           "per query here (a reroute with the mark, DNAT and masquerade bindings for each new connection, "
                           "the reply's mark restored), is a large share of a ~50 µs round trip over veth to a resolver "
                           "answering from memory; against a real resolver's milliseconds it is under 1%. p99 on a shared "
                           "machine is mostly the scheduler's"})
    b = r.get("8_backstop", {})
    if "derived" in b:
        d = b["derived"]
        alias, floor = d["ns per packet, alias out its tunnel"], d["ns per packet, an empty base chain on postrouting (the floor)"]
        ratios = [d[f"{k} with / without the backstop"] for k in ("throughput", "conn/s")]
        out.append(_ab_goal(8, "throughput and new connections/s with the backstop >= 97% of without",
                            (*ratios, d["CPU per connection without / with the backstop"]),
                            f"; per 64-byte datagram: {100 * d['CPU per datagram without / with the backstop']:.0f}%). "
                            f"Amplified ({b['checks'].get('copies', 50)} copies): the rules cost a packet from an alias "
                            f"{alias:.0f} ns ({100 * d['CPU per datagram without / with the backstop, from the amplified cost']:.1f}% "
                            f"of a datagram, {100 * d['CPU per connection without / with the backstop, from the amplified cost']:.1f}% "
                            f"of a connection), an unconfined one {d['ns per packet, unconfined, no default VPN']:.0f} ns "
                            f"(before: {d['ns per packet, unconfined, no default VPN, before']:.0f}); an empty base chain "
                            f"{floor:.0f} ns",
                            "a packet from an alias or tunnel address meets one rule, one lookup of (source, device) in a hash "
                            "set: ~3% of a minimal 64-byte send on this VM, so the per-datagram figure sits at the goal's edge, "
                            "while a bulk stream or a connection pays under 1%. That lookup is the least a check of the device "
                            "a confined source leaves by costs (measured on the side, 50 copies: a device index instead of its "
                            "name would save ~50 ns but goes stale when the tunnel's device is re-created; an `ip` table "
                            "instead of `inet` ~10 ns, within the noise); an empty base chain alone costs 10-50 ns (runs "
                            "differ). Less would mean not checking every packet (`ct state established accept` first), which "
                            "lets an established connection leave in the clear after a rule sweep. The stream and connection "
                            "figures swing ±10% with the load of this shared 2-CPU machine; the direct per-datagram A/B also "
                            "counts the cache misses of a lone lookup that the amplified copies after the first do not pay"))
    a = r.get("10_apps", {})
    if "derived" in a:
        d = a["derived"]
        flat = d["CPU per datagram 100 cgroups / 1"]
        out.append(_ab_goal(10, "a program in the tunnel's cgroup >= 97% of it bound to the alias (throughput, conn/s); "
                                "per-packet cost flat with 1, 10, 100 configured cgroups",
                            [d[k] for k in ("throughput cgroup / alias", "conn/s cgroup / alias", "CPU per connection alias / cgroup")],
                            f"); per datagram 10 cgroups {d['CPU per datagram 10 cgroups / 1']:.2f}×, 100 cgroups {flat:.2f}× of 1",
                            "the mark is set once per socket (the cgroup's program at socket creation), so a packet pays for "
                           "one fwmark rule and the apps chain's set lookup instead of the alias's rule and SNAT; the number of "
                           "configured cgroups changes nothing on a packet's way (no cgroup match anywhere in nft). Stream and "
                           "connection figures swing ±10% with this shared 2-CPU machine's load", ok=flat <= 1.05))
    return out


def main():
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test of the harness)")
    ap.add_argument("--only", default="1,3,4,5,6,7,8,9,10",
                    help="which parts (2 is measured with 1), e.g. 1,4; the others keep their figures from bench/results.json")
    ap.add_argument("--no-write", action="store_true", help="print the results; write neither results.json nor BENCHMARKS.md")
    ap.add_argument("--render", action="store_true", help="only rewrite BENCHMARKS.md from bench/results.json")
    args = ap.parse_args()
    if args.render:
        results = json.loads(RESULTS.read_text())
        results["goals"] = goals(results)
        MARKDOWN.write_text(report.render(results))
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    core.install_cleanup()
    q = args.quick
    parts = {
        "1_cold": lambda: cold.run(runs=4 if q else 25, budget=30 if q else 120),
        "3_many": lambda: many.run_many(runs=2 if q else 7, slow_runs=1 if q else 2, budget=60 if q else 180),
        "4_scale": lambda: many.run_scale(runs=3 if q else 12, budget=40 if q else 120),
        "5_packet": lambda: packet.run(runs=2 if q else 7, conn_runs=2 if q else 15, seconds=2 if q else 3, conn_seconds=0.5 if q else 1,
                                       budget=40 if q else 240),
        "6_watch": lambda: watch.run(n=6 if q else 50),
        "7_dns": lambda: dnslat.run(queries=200 if q else 1000, budget=60 if q else 300),
        "8_backstop": lambda: backstop.run(runs=2 if q else 7, conn_runs=2 if q else 15, send_runs=2 if q else 41, seconds=2 if q else 3,
                                           conn_seconds=0.5 if q else 1, budget=40 if q else 300),
        "9_debian": lambda: debian.run(runs=4 if q else 20, budget=30 if q else 120),
        "10_apps": lambda: apps.run(runs=2 if q else 7, conn_runs=2 if q else 15, send_runs=2 if q else 21, seconds=2 if q else 3,
                                    conn_seconds=0.5 if q else 1, budget=40 if q else 300),
    }
    wanted = {p.strip() for p in args.only.split(",")}
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "quick": q,
               "git": {"head": _out(["git", "-C", str(core.REPO), "rev-parse", "--short", "HEAD"]),
                       "lib_changes_not_committed": subprocess.run(["git", "-C", str(core.REPO), "status", "--short", "lib"],
                                                                    capture_output=True, text=True).stdout.split("\n")[:-1]}}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    start = time.monotonic()
    for key, fn in parts.items():
        if key.split("_")[0] not in wanted:
            if key in previous:  # a part not run keeps its last figures, marked as such
                results[key] = previous[key]
                results.setdefault("carried_over", {})[key] = previous.get("carried_over", {}).get(key, previous.get("date"))
            continue
        t0 = time.monotonic()
        print(f"bench: {key} ...", file=sys.stderr, flush=True)
        try:
            results[key] = fn()
        except Exception as e:  # one broken part must not lose the others' figures
            results[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(results[key]["traceback"], file=sys.stderr)
        print(f"bench: {key} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    results["seconds"] = time.monotonic() - start
    results["goals"] = goals(results)
    text = report.render(results)
    if args.no_write:
        print(text)
    else:
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        MARKDOWN.write_text(text)
        print(f"bench: wrote {RESULTS.relative_to(core.REPO)} and {MARKDOWN.relative_to(core.REPO)}", file=sys.stderr)
    for g in results["goals"]:
        print(f"bench: goal {g['n']}: {'met' if g['ok'] else 'MISSED'}: {g['measured']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
