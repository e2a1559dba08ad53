"""BENCHMARKS.md from bench/results.json: bench/BENCHMARKS.md.in filled in with a run's figures.

The template is markdown with str.format fields, in blocks: the first always, each further
one (a line "@@ PART") only for a part the run measured; a part that failed shows its error.
"""

from pathlib import Path

from bench import watch

TEMPLATE = Path(__file__).with_name("BENCHMARKS.md.in")


def table(res, unit="ms", ratio_to=None, digits=1):
    rows = [f"| contender | median {unit} | min | max | n |" + (" ratio |" if ratio_to else ""),
            "|---|---:|---:|---:|---:|" + ("---:|" if ratio_to else "")]
    for label, s in res.items():
        ratio = f" {s['median'] / res[ratio_to]['median']:.2f}× |" if ratio_to else ""
        rows.append(f"| {label} | {s['median']:.{digits}f} | {s['min']:.{digits}f} | {s['max']:.{digits}f} | {s['n']} |{ratio}")
    return "\n".join(rows)


def pairs(head, values, digits):
    return "\n".join([f"| {head} | ms |", "|---|---:|", *(f"| {k} | {v:.{digits}f} |" for k, v in values)])


def derived(part, digits):
    return "\n".join(f"* {k}: **{v:.{digits}f}{'' if k.startswith(('ns ', 'share')) else '×'}**" for k, v in part["derived"].items())


def commands(cmds):
    return "\n".join(f"    # {label}\n    {cmd}" for label, cmd in cmds.items())


def _cold(c):
    floor = "floor: import pyroute2, nftables, filelock"
    return {"d": c["derived"], "n": c["noop_check"], "shell_differs": "; ".join(c["shell_state_differs"][:4]) or "nothing",
            "cold_table": table(c["contenders"], ratio_to=floor), "cold_cpu_table": table(c["cpu"], "CPU ms", floor),
            "inprocess_table": table(c["inprocess"]), "floor_total_ms": c["imports"]["floor_total_ms"],
            "floor_table": pairs("package", c["imports"]["floor_by_package_ms"].items(), 1),
            "hook_only_total_ms": c["imports"]["hook_only_total_ms"],
            "hook_imports_table": pairs("module", list(c["imports"]["hook_only_modules_ms"].items())[:12], 2),
            "cold_commands": commands(c["commands"]), "monitor_lines": len(c["noop_check"]["monitor_lines_during_noop"]),
            "noop_ms": c["contenders"]["hook up (no-op re-run)"]["median"],
            "first_ms": c["contenders"]["hook up (first apply)"]["median"]}


def _many(m):
    return {"tunnels": m["tunnels"], "up_all_exists": m["vpnsplit_up_all_exists"], "in_place_same": m["in_place_state_unchanged"],
            "from_empty_same": m["from_empty_shell_equals_vpnsplit"], "many_table": table(m["contenders"]),
            "many_derived": derived(m, 3), "many_commands": commands(m["commands"])}


def _scale(s):
    return {"tunnels_up": s["tunnels_up"], "foreign_rules": s["foreign_rules"], "rules_in_loaded": s["rules_in_loaded_namespace"],
            "scale_table": table(s["contenders"]), "scale_derived": derived(s, 2), "scale_commands": commands(s["commands"])}


def _packet(p):
    ck, d = p["checks"], p["derived"]
    walk = next(k for k in d if k.startswith("ns of CPU per connection per rule walked"))
    return {"rules_in_100": ck["rules_in_100_client"], "elements_in_100": ck["map_elements_in_100_client"],
            "snat_seen": ck["snat_seen_by_server"]["source_is_tunnel_address"], "conn_seconds": p["conn_seconds"],
            "census": ", ".join(f"{k} {v['ipv4_rules']}/{v['nft_elements']}" for k, v in ck["census"].items()),
            "throughput_table": table(p["throughput"], "Gbit/s", digits=2), "connections_table": table(p["connections"], "conn/s", digits=0),
            "cpu_table": table(p["cpu_per_connection"], "CPU µs", digits=2), "packet_derived": derived(p, 3),
            "walk_ns": d[walk], "walked": ck["census"]["last"]["ipv4_rules"] - ck["census"]["nft"]["ipv4_rules"],
            "rp_share": 100 * d["share of the walk's CPU that is the SYN-ACK's reverse-path lookup"], "packet_commands": commands(p["commands"])}


def _dns(d):
    rows = ["| contender | median ms | p99 ms | min | max | n |", "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {k} | {v['median']:.3f} | {v['p99']:.3f} | {v['min']:.3f} | {v['max']:.3f} | {v['n']} |" for k, v in d["contenders"].items()]
    return {"block": d["block"], "dns_table": "\n".join(rows), "dns_derived": derived(d, 3), "dns_commands": commands(d["commands"])}


def _app_replies(d):
    cost, floor = d.get("ns per packet, received, app_replies"), d.get("ns per packet, an empty base chain on prerouting (the received floor)")
    return "not measured in this run" if cost is None else f"{cost:.0f} ns, floor {floor:.0f} ns"


def _backstop(b):
    lines = b["checks"]["backstop chain lines listed"]
    return {"rules_with": lines["backstop"], "rules_without": lines["without"], "conn_seconds": b["conn_seconds"],
            "backstop_throughput_table": table(b["throughput"], "Gbit/s", digits=2),
            "backstop_connections_table": table(b["connections"], "conn/s", digits=0),
            "backstop_cpu_table": table(b["cpu_per_connection"], "CPU µs", digits=2),
            "backstop_datagram_table": table(b["cpu_per_datagram"], "CPU ns", digits=0),
            "copies": b["checks"]["copies"], "backstop_rules": "\n".join(f"    {r}" for r in b["checks"]["backstop rules"]),
            "per_connection": b["checks"]["packets the client sends per connection"],
            "backstop_amplified_table": table(b["amplified"], "CPU ns", digits=0),
            "app_replies": _app_replies(b["derived"]),
            "backstop_derived": derived(b, 3), "backstop_commands": commands(b["commands"])}


def _apps(a):
    return {"conn_seconds": a["conn_seconds"], "seen": " ".join(a["checks"]["source and mark of a program in the cgroup"]),
            "apps_throughput_table": table(a["throughput"], "Gbit/s", digits=2),
            "apps_connections_table": table(a["connections"], "conn/s", digits=0),
            "apps_cpu_table": table(a["cpu_per_connection"], "CPU µs", digits=2),
            "apps_datagram_table": table(a["cpu_per_datagram"], "CPU ns", digits=0),
            "apps_derived": derived(a, 3), "apps_commands": commands(a["commands"])}


PARTS = {"1_cold": _cold, "3_many": _many, "4_scale": _scale, "5_packet": _packet, "7_dns": _dns, "8_backstop": _backstop,
         "10_apps": _apps}


def _debian(d):
    versions = "; ".join(f"{k}: Python {v['python']}, pyroute2 {v['pyroute2']}, filelock {v['filelock']}"
                         for k, v in d["versions"].items())
    return ["## 9. Debian's pyroute2 and filelock (the .deb) next to the current releases", "",
            "The hook's cold first apply as in part 1, run by the venv's Python (current PyPI releases) and by "
            "/usr/bin/python3 with Debian's python3-pyroute2 and python3-filelock (what the package runs), both with "
            f"the checkout's lib/vpnsplit, each next to its own import floor, interleaved. Versions: {versions}.", "",
            "CPU time (user+system of the process):", "", table(d["cpu"], unit="CPU ms"), ""]


# parts that render their own section (lines), after the template's
SECTIONS = {"6_watch": watch.render, "9_debian": _debian}


def _header(r):
    m, git = r["machine"], r["git"]
    changed = f" with uncommitted changes in lib/ ({', '.join(git['lib_changes_not_committed'])})" if git["lib_changes_not_committed"] else ""
    goals = ["| # | goal | measured | | why, and what would close it |", "|---|---|---|---|---|"]
    goals += [f"| {g['n']} | {g['goal']} | {g['measured']} | **{'met' if g['ok'] else 'missed'}** | {g.get('why', '')} |" for g in r["goals"]]
    return {"date": r["date"], "seconds": r["seconds"], "loadavg": " ".join(m["loadavg"]), "code": git["head"] + changed,
            "machine": f"{m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, pyroute2 {m['pyroute2']}, "
                       f"filelock {m['filelock']}, {m['nft']}, {m['ip']}, {m['iperf3']}",
            "goals": "\n".join(goals)}


def render(r):
    head, *blocks = TEMPLATE.read_text().split("\n@@ ")
    out = [head.format_map(_header(r))]
    for block in blocks:
        key, _, text = block.partition("\n")
        part = r.get(key)
        if not part:
            continue
        if "error" in part:
            out.append(f"{text.splitlines()[0]}\n\nfailed: {part['error']}\n")
        else:
            out.append(text.format_map(PARTS[key](part)))
    out += ["\n".join(render_part(r.get(key))) for key, render_part in SECTIONS.items() if r.get(key)]
    return "\n\n".join(text.strip("\n") for text in out) + "\n"
