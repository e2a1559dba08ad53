"""BENCHMARKS.md from bench/results.json: tables, goals met or missed, commands to reproduce."""


def _ms(x):
    return f"{x:.1f}"


def _table(res, unit="ms", ratio_to=None, fmt=_ms):
    rows = [f"| contender | median {unit} | min | max | n |" + (" ratio |" if ratio_to else ""),
            "|---|---:|---:|---:|---:|" + ("---:|" if ratio_to else "")]
    base = res[ratio_to]["median"] if ratio_to else None
    for label, s in res.items():
        ratio = f" {s['median'] / base:.2f}× |" if ratio_to else ""
        rows.append(f"| {label} | {fmt(s['median'])} | {fmt(s['min'])} | {fmt(s['max'])} | {s['n']} |{ratio}")
    return "\n".join(rows)


def _goal(ok):
    return "**met**" if ok else "**missed**"


def _commands(cmds):
    return "\n".join(f"    # {label}\n    {cmd}" for label, cmd in cmds.items())


def _derived_and_commands(part, fmt):
    """The closing lines of a part: its derived ratios, then the commands that reproduce it."""
    lines = [f"* {k}: **{fmt(v)}**" for k, v in part["derived"].items()]
    return lines + ["", "Commands:", "", _commands(part["commands"]), ""]


def _failed(title, part):
    return [title, "", f"failed: {part['error']}", ""]


def _simple_part(title, part, fmt, intro):
    """A part whose page is its *intro* lines, its table, its derived figures and commands
    (nothing if it did not run, why if it failed)."""
    if not part:
        return []
    if "error" in part:
        return _failed(title, part)
    return [title, "", *intro(part), "", _table(part["contenders"]), "", *_derived_and_commands(part, fmt)]


def render(r):
    m = r["machine"]
    out = [
        "# vpnsplit benchmarks",
        "",
        f"One run of `make bench` on {r['date']}: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, "
        f"Python {m['python']}, pyroute2 {m['pyroute2']}, filelock {m['filelock']}, {m['nft']}, {m['ip']}, {m['iperf3']}. "
        f"Load average at the start: {m['loadavg']}. Whole run: {r['seconds']:.0f} s. Code: {r['git']['head']}"
        + (f" with uncommitted changes in lib/ ({', '.join(r['git']['lib_changes_not_committed'])})" if r["git"]["lib_changes_not_committed"] else "") + ".",
        "",
        "Every benchmark runs in network namespaces the run creates and deletes (`vsb-<pid>-<n>-<tag>`). "
        "Contenders are interleaved run by run (A B C A B C ...) after one untimed warm-up round, so "
        "load from elsewhere on the machine hits them alike. A sample is fork+exec+run+wait of the command "
        "shown, spawned from inside the namespace (setns, no `ip netns exec` in the timed path), with "
        "OpenVPN's environment only (`env -i`: no PATH). Untimed set-up before a sample (e.g. removing what "
        "the previous sample added) is listed with each benchmark. \"Cold\" means a fresh process and "
        "nothing of the tunnel in the kernel; the page cache is warm (no drop_caches on a shared host).",
        "",
        "Reproduce: `make bench` (root; about 5-10 minutes), or one part: `.venv/bin/python -m bench --only 1` "
        "(parts 1-5, `--quick` for fewer runs). Raw samples: `bench/results.json`. In the commands below, NS "
        "is the namespace and the config/state paths are the run's temporary directory.",
        "",
        "## Goals",
        "",
        "| # | goal | measured | | why, and what would close it |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {g['n']} | {g['goal']} | {g['measured']} | {_goal(g['ok'])} | {g.get('why', '')} |" for g in r["goals"]]
    out.append("")

    c = r.get("1_cold")
    if c and "error" not in c:
        d = c["derived"]
        out += [
            "## 1. One hook, cold",
            "",
            "`hooks/up` as OpenVPN runs it (six arguments, OpenVPN's environment without PATH) for the tunnel of "
            "`configs/vpnsplit.toml` (tun0, 10.8.0.2/24, alias 10.192.8.1, strict): two rules, three routes, the alias, "
            "the nft table with the SNAT map and the anti-spoofing sets, the state file, under the lock. Before each "
            "first-apply sample every object of the tunnel and the state are removed (untimed). The shell contender "
            "`bench/shell_up.sh` does the same with `ip -batch`, `nft -f` and `flock`; "
            + ("a full kernel dump after it equals the dump after vpnsplit's hook."
               if not c["shell_state_differs"] else "**its kernel state differs from vpnsplit's:** " + "; ".join(c["shell_state_differs"][:4])),
            "",
            _table(c["contenders"], ratio_to="floor: import pyroute2, nftables, filelock"),
            "",
            "CPU time (user+system of the process and its children, from wait4's rusage): unlike wall time it "
            "hardly moves with load from elsewhere on the machine, so it resolves differences of a few ms that "
            "the wall-clock spread above hides:",
            "",
            _table(c["cpu"], unit="CPU ms", ratio_to="floor: import pyroute2, nftables, filelock"),
            "",
            f"* wall: hook / shell script **{d['hook_over_shell']:.1f}×**; hook / floor **{d['hook_over_floor']:.2f}×**; "
            f"hook above the floor **{d['hook_ms_above_floor']:.1f} ms** (no-op re-run: {d['noop_ms_above_floor']:.1f} ms).",
            f"* CPU: hook / shell script **{d['cpu_hook_over_shell']:.1f}×**; hook / floor **{d['cpu_hook_over_floor']:.2f}×**; "
            f"hook above the floor **{d['cpu_hook_ms_above_floor']:.1f} ms** (no-op re-run: {d['cpu_noop_ms_above_floor']:.1f} ms).",
            f"* The floor is {d['floor_ms_above_bare_python']:.0f} ms above a bare `python -I -c pass`.",
            "",
            "The hook's own cost timed inside the process (bench/cold.py INPROCESS: import pyroute2, nftables, filelock; "
            "then time `from vpnsplit import hooks` and `hooks.main(['up', ...six args])`; first apply, reset before each). "
            "The hook's stderr (one line per change, 9 on a first apply) goes to a file, as with OpenVPN's `--log`; the last "
            "row is the same run, interleaved, with stderr through a pipe the bench driver reads (how earlier rounds measured "
            "it): each line can then wake the driver, which on this loaded 2-CPU host may preempt the hook:",
            "",
            _table(c["inprocess"]),
            "",
            "What the floor is made of (`python -X importtime`, self time per top-level package, mean of 5 runs; the probe "
            f"inflates the total to {c['imports']['floor_total_ms']:.0f} ms):",
            "",
            "| package | ms |", "|---|---:|",
        ]
        out += [f"| {k} | {v:.1f} |" for k, v in c["imports"]["floor_by_package_ms"].items()]
        out += [
            "",
            f"Imports the hook adds on top of the floor: {c['imports']['hook_only_total_ms']:.1f} ms in all "
            "(importtime self times), mostly:",
            "",
            "| module | ms |", "|---|---:|",
        ]
        out += [f"| {k} | {v:.2f} |" for k, v in list(c["imports"]["hook_only_modules_ms"].items())[:12]]
        out += ["", "Commands:", "", _commands(c["commands"]), ""]

        n = c["noop_check"]
        out += [
            "## 2. No-op re-run",
            "",
            f"`hooks/up` again with everything in place (samples above: \"no-op re-run\", each right after a first apply): "
            f"{c['contenders']['hook up (no-op re-run)']['median']:.1f} ms against {c['contenders']['hook up (first apply)']['median']:.1f} ms "
            f"for the first apply ({d['noop_over_first_apply']:.2f}×); CPU {d['cpu_noop_over_first_apply']:.2f}×.",
            "",
            f"No kernel writes: during one no-op run `ip monitor all` and `nft monitor` printed "
            f"{len(n['monitor_lines_during_noop'])} line(s){': ' + '; '.join(n['monitor_lines_during_noop'][:5]) if n['monitor_lines_during_noop'] else ''} "
            f"(the same `ip monitor` does see a probe rule add/delete: {n['monitor_sees_a_probe_write']}); "
            f"full dump before = after: {n['dump_unchanged']}; state file untouched (mtime): {n['state_file_untouched']}. "
            f"The hook logged: `{n['hook_said']}`.",
            "",
        ]
    elif c:
        out += _failed("## 1./2. One hook, cold / no-op", c)

    out += _simple_part("## 3. Many tunnels", r.get("3_many"), lambda v: f"{v:.3f}×", lambda mt: [
        f"{mt['tunnels']} tunnels configured (t0..t99: tunI, 10.64.I.2/24, table 100+I, priority 1000+10·I, alias 10.192.I.1). "
        + ("`vpnsplit up --all` exists and is measured; " if mt["vpnsplit_up_all_exists"] else "`vpnsplit up --all` did not exist; ")
        + "also a Python loop calling `engine.up` per tunnel in one process with one `Kernel()` (`bench/loop_up.py`). "
        "*In place*: everything already applied (a re-apply). *From empty*: all tunnels' objects and state removed "
        "before each sample (untimed). The 100 separate `vpnsplit up NAME` runs are measured in their own, shorter "
        "interleaved loop against the shell loop (\"paired\").",
        "",
        f"From empty, shell loop and vpnsplit leave the same kernel state: {mt['from_empty_shell_equals_vpnsplit']}. "
        f"In place, nothing in the kernel changes: {mt['in_place_state_unchanged']}.",
    ])
    out += _simple_part("## 4. Scale", r.get("4_scale"), lambda v: f"{v:.2f}×", lambda s: [
        f"The same config of 100 tunnels in two namespaces: *empty* holds only tun0; *loaded* has all "
        f"{s['tunnels_up']} tunnels up and {s['foreign_rules']} foreign rules (proto static, priorities around and "
        f"between vpnsplit's; {s['rules_in_loaded_namespace']} rules in all). `up` is `hooks/up` for t0 after an untimed "
        "`vpnsplit down t0` (a reconnect: the strict skeleton stays, the rest is re-added).",
    ])

    p = r.get("5_packet")
    if p and "error" not in p:
        ck = p["checks"]
        out += [
            "## 5. Packet path",
            "",
            "A client and a server namespace joined by a veth pair whose client end is named tun0 and addressed "
            "point-to-point (10.8.0.2 peer 10.8.0.1, as OpenVPN leaves a tun device); the server has 203.0.113.1 on lo. "
            "*plain*: no vpnsplit, route 203.0.113.1 dev tun0, traffic from 10.8.0.2. *vpnsplit*: `hooks/up` for tun0 "
            "(table 100, priority 2990, alias 10.200.0.1), traffic from the alias: rule into table 100, SNAT map to 10.8.0.2. "
            f"*100 tunnels*: 99 more tunnels (tun devices t1..t99, priorities 1010-1990, so tun0's rules come after theirs: "
            f"{ck['rules_in_100_client']} IPv4 rules, {ck['map_elements_in_100_client']} SNAT map elements). "
            f"The server sees the tunnel address, not the alias (tcpdump): {ck['snat_seen_by_server']['source_is_tunnel_address']}.",
            "",
            "TCP throughput, one iperf3 stream:",
            "",
            _table(p["throughput"], unit="Gbit/s", fmt=lambda x: f"{x:.2f}"),
            "",
            f"New TCP connections per second (`bench/connrate.py`: connect from the source, RST-close, {p['conn_seconds']:g} s per sample). "
            "The last four rows attribute what 100 tunnels cost (bench/packet.py's docstring): *first* moves tun0's rules "
            "before the other 99 tunnels' (priority 990), *rules* keeps all 100 tunnels' rules but only tun0's nft elements, "
            "*nft* keeps all nft elements but only tun0's rules, *no reverse-path lookup* is *100 tunnels* with accept_local "
            "on tun0 (a diagnostic, not a fix). Each variant's client namespace holds (IPv4 rules / nft elements): "
            + ", ".join(f"{k} {v['ipv4_rules']}/{v['nft_elements']}" for k, v in ck["census"].items()) + ".",
            "",
            _table(p["connections"], unit="conn/s", fmt=lambda x: f"{x:.0f}"),
            "",
            "CPU time of the connecting process per connection (user+system from getrusage; the handshake's softirq work "
            "on the client side runs in its context over veth), the figure that load from other sessions hardly moves:",
            "",
            _table(p["cpu_per_connection"], unit="CPU µs", fmt=lambda x: f"{x:.2f}"),
            "",
        ]
        out += _derived_and_commands(p, lambda v: f"{v:.3f}")
    elif p:
        out += _failed("## 5. Packet path", p)

    out += _simple_part("## 6. Debian's pyroute2 and filelock (the .deb) next to the current releases",
                        r.get("6_debian"), lambda v: f"{v:.2f}", lambda d: [
        *([f"Measured apart from the run above: {d['measured_apart']['date']}, load average "
           f"{d['measured_apart']['machine']['loadavg']}, code {d['measured_apart']['git']['head']}.", ""]
          if "measured_apart" in d else []),
        "The hook's cold first apply as in part 1, run by the venv's Python (current PyPI releases) and by "
        "/usr/bin/python3 with Debian's python3-pyroute2 and python3-filelock (what the package runs), both with "
        "the checkout's lib/vpnsplit, each next to its own import floor, interleaved. Versions: "
        + "; ".join(f"{k}: Python {v['python']}, pyroute2 {v['pyroute2']}, filelock {v['filelock']}"
                    for k, v in d["versions"].items()) + ".",
        "", "CPU time (user+system of the process):", "", _table(d["cpu"], unit="CPU ms")])

    if r.get("notes"):
        out += ["## Notes", ""] + [f"* {n}" for n in r["notes"]] + [""]
    return "\n".join(out)
