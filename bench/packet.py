"""Benchmark 5: the packet path. A client namespace and a server namespace joined by a veth
pair whose client end is named tun0 and addressed point-to-point (10.8.0.2 peer 10.8.0.1),
as OpenVPN would leave a tun device; the server holds 203.0.113.1 on lo.

  plain    no vpnsplit at all: the client sends from 10.8.0.2, route 203.0.113.1 dev tun0
  1 tunnel vpnsplit up for tun0 (alias 10.200.0.1): the client sends from the alias, which
           takes the rule into table 100 and the SNAT map to 10.8.0.2
  100      the same plus 99 more tunnels (tun devices, rules, aliases, map/set elements);
           tun0's rules come last (priority 2990) so a lookup walks every other tunnel's first

Attribution of what 100 tunnels cost a new connection, each a variant of the 100-tunnel scene:
  first    tun0's rules at priority 990, before the other tunnels' (nothing else differs)
  rules    the 100 tunnels' ip rules, but the nft sets and maps hold tun0's entries only
  nft      tun0's two ip rules only, but nft holds all 100 tunnels' entries
  rpcheck  tun0's rules last, with net.ipv4.conf.tun0.accept_local=1: the kernel then skips the
           reverse-path lookup for a packet arriving on tun0 (the SYN-ACK), which walks the rules
           from the alias too; a diagnostic, never something vpnsplit sets (it would accept
           packets claiming a local source address)

Every measurement is bounded (iperf3 -t, connrate's seconds and count) and interleaved.
"""

import json
import subprocess
import time

from bench import scene
from bench.core import PY, REPO, Netns, stats

SERVER = "203.0.113.1"
ALIAS, LOCAL, PEER = "10.200.0.1", "10.8.0.2", "10.8.0.1"
CONNRATE = REPO / "bench/connrate.py"
IPERF_PORT, CONN_PORT = 5201, 5300
LAST, FIRST = 2990, 990  # tun0's priority after / before t1..t99's 1010-1990


class Pair:
    """Client and server namespaces joined by veth (client end: tun0)."""

    def __init__(self, tag, tunnels=0, server_seconds=900, priority=LAST):
        self.tag = tag
        self.client = Netns(f"{tag}-c")
        self.server = Netns(f"{tag}-s")
        c, s = self.client, self.server
        c.ip("link", "add", "tun0", "type", "veth", "peer", "name", "tunS", "netns", s.name)
        c.ip("link", "set", "tun0", "up")
        s.ip("link", "set", "tunS", "up")
        c.ip("addr", "add", LOCAL, "peer", f"{PEER}/32", "dev", "tun0")
        s.ip("addr", "add", PEER, "peer", f"{LOCAL}/32", "dev", "tunS")
        s.ip("addr", "add", f"{SERVER}/32", "dev", "lo")
        self.procs = []
        with s.inside():
            self.procs.append(subprocess.Popen(["timeout", str(server_seconds), "iperf3", "-s", "-B", SERVER, "-p", str(IPERF_PORT)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.procs.append(subprocess.Popen([PY, "-I", CONNRATE, "server", SERVER, str(CONN_PORT), str(server_seconds)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if tunnels:
            others = scene.many(tunnels)[1:]  # t1..t{n-1}: priorities 1010.., below tun0's 2990
            vpn = scene.Tun("vpn", "tun0", 100, priority, ALIAS, LOCAL, netmask=None)
            self.others = others
            c.write_config(vpn.section() + "".join("\n" + t.section() for t in others))
            batch = []
            for t in others:
                batch += [f"tuntap add {t.device} mode tun", f"link set {t.device} up", f"address add {t.local}/{t.prefix} dev {t.device}"]
            if batch:
                c.call(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
            env = {"dev": "tun0", "dev_type": "tun", "script_type": "up", "script_context": "init",
                   "ifconfig_local": LOCAL, "ifconfig_remote": PEER,
                   "VPNSPLIT_CONFIG": str(c.config), "VPNSPLIT_STATE_DIR": str(c.state_dir)}
            c.call([scene.HOOKS / "up", "tun0", "1500", "0", LOCAL, PEER, "init"], env=env)
            if others:
                scene.up_all_in_one(c, others)  # the recorded lease keeps tun0 (a veth) a tun
            self.src = ALIAS
        else:
            c.ip("route", "add", f"{SERVER}/32", "dev", "tun0", "src", LOCAL)
            self.src = LOCAL
        self._wait_for_server()

    def _wait_for_server(self):
        for _ in range(50):
            if all(f":{p}" in self.server.call(["ss", "-ltnH"]).stdout for p in (IPERF_PORT, CONN_PORT)):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.tag}: servers did not start")

    def iperf(self, seconds, src=None):
        for _ in range(20):
            p = self.client.call(["iperf3", "-c", SERVER, "-B", src or self.src, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
                                 timeout=seconds + 30, check=False)
            out = json.loads(p.stdout)
            if "busy" not in out.get("error", ""):
                break
            time.sleep(0.2)  # iperf3's server takes a moment to reset between tests; the figure is iperf3's own
        if "error" in out:
            raise RuntimeError(f"{self.tag}: iperf3: {out['error']}")
        return out["end"]["sum_received"]["bits_per_second"] / 1e9

    def connrate(self, seconds, limit=200_000):
        p = self.client.call([PY, "-I", CONNRATE, "client", self.src, SERVER, str(CONN_PORT), str(seconds), str(limit)], timeout=seconds + 30)
        return json.loads(p.stdout)

    def drop_other_rules(self):
        """Delete t1..t99's ip rules (untimed set-up): tun0's lookup then walks nothing else."""
        self.client.call(["ip", "-batch", "-"], input="".join(f"rule del priority {t.priority + k}\n" for t in self.others for k in (0, 1)))

    def drop_other_nft(self):
        """Delete t1..t99's SNAT map and guard set elements (untimed set-up)."""
        cmds = [f'delete element inet vpnsplit snat4 {{ {t.alias} . "{t.device}" }}\n'
                f'delete element inet vpnsplit guard_addr4 {{ {t.local}, {t.alias} }}\n'
                f'delete element inet vpnsplit guard_path4 {{ {t.local} . "{t.device}", {t.alias} . "{t.device}" }}\n'
                for t in self.others]
        self.client.call(["nft", "-f", "-"], input="".join(cmds))

    def census(self):
        """What the client namespace holds: IPv4 rules and nft elements (proves each variant's set-up)."""
        nft = self.client.call(["nft", "-j", "list", "table", "inet", "vpnsplit"], check=False)
        elements = sum(len(x[k].get("elem", [])) for x in json.loads(nft.stdout or '{"nftables": []}')["nftables"]
                       for k in ("set", "map") if k in x)
        return {"ipv4_rules": len(self.client.ip("-4", "rule").splitlines()), "nft_elements": elements}

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.client.close()
        self.server.close()


def interleave_calls(contenders, runs, budget):
    """label -> samples, contenders run A B C A B C ..."""
    samples = {label: [] for label in contenders}
    start = time.monotonic()
    for i in range(runs):
        for label, fn in contenders.items():
            samples[label].append(fn())
        if i >= 2 and time.monotonic() - start > budget:
            break
    return samples


def sample_stats(samples, key=None):
    return {label: stats([s[key] for s in v] if key else v, scale=1.0) for label, v in samples.items()}


def connection_figures(raw, tput, conn_seconds):
    """What every connection A/B reports, from its streams *tput* and connrate samples *raw*: (the
    figures for results.json, conn/s and CPU µs per connection, each by contender label)."""
    conn, cpu = sample_stats(raw, "per_second"), sample_stats(raw, "cpu_us_per_connection")
    figures = {"conn_seconds": conn_seconds, "throughput": tput, "connections": conn,
               "cpu_per_connection": {label.replace("(conn/s)", "(CPU µs per connection)"): v for label, v in cpu.items()}}
    return figures, conn, cpu


# conn/s contenders; the last four attribute the 100-tunnel loss (module docstring)
CONN = {
    "plain": "plain: from 10.8.0.2, no vpnsplit (conn/s)",
    "one": "vpnsplit, 1 tunnel: from alias (conn/s)",
    "last": "vpnsplit, 100 tunnels: from alias (conn/s)",
    "first": "100 tunnels, tun0's rules first (priority 990) (conn/s)",
    "rules": "100 tunnels' ip rules, tun0's nft entries only (conn/s)",
    "nft": "tun0's ip rules only, 100 tunnels' nft entries (conn/s)",
    "rpcheck": "100 tunnels, last, no reverse-path lookup (accept_local, diagnostic) (conn/s)",
}


def run(runs=5, conn_runs=9, seconds=3, conn_seconds=2, budget=150):
    pairs = {"plain": Pair("pkt0"), "one": Pair("pkt1", tunnels=1)}
    try:
        pairs["last"] = Pair("pkt100", tunnels=100)
        pairs["first"] = Pair("pkt100f", tunnels=100, priority=FIRST)
        pairs["rules"] = Pair("pkt100r", tunnels=100)
        pairs["rules"].drop_other_nft()
        pairs["nft"] = Pair("pkt100n", tunnels=100)
        pairs["nft"].drop_other_rules()
        pairs["rpcheck"] = Pair("pkt100a", tunnels=100)
        pairs["rpcheck"].client.call(["sysctl", "-qw", "net.ipv4.conf.tun0.accept_local=1"])
        plain, one = pairs["plain"], pairs["one"]
        checks = {
            "snat_seen_by_server": _snat_check(one),
            "rules_in_100_client": pairs["last"].census()["ipv4_rules"],
            "map_elements_in_100_client": pairs["last"].client.call(["nft", "list", "map", "inet", "vpnsplit", "snat4"]).stdout.count('" : '),
            "census": {k: p.census() for k, p in pairs.items()},
            "first_rules_head": pairs["first"].client.ip("-4", "rule").splitlines()[:3],
        }
        for k, p in pairs.items():  # warm-up: ARP, caches, first conntrack entries
            if k in ("plain", "one"):  # the throughput contenders
                p.iperf(1)
            p.connrate(0.5)
        tput = sample_stats(interleave_calls({
            "plain: from 10.8.0.2, no vpnsplit (Gbit/s)": lambda: plain.iperf(seconds),
            "vpnsplit, 1 tunnel: from alias 10.200.0.1, SNAT (Gbit/s)": lambda: one.iperf(seconds),
            "vpnsplit, 1 tunnel: from 10.8.0.2, no SNAT (Gbit/s)": lambda: one.iperf(seconds, src=LOCAL),
        }, runs, budget / 3))
        raw = interleave_calls({label: (lambda p=pairs[k]: p.connrate(conn_seconds)) for k, label in CONN.items()}, conn_runs, 2 * budget / 3)
    finally:
        for p in pairs.values():
            p.close()
    figures, conn, cpu = connection_figures(raw, tput, conn_seconds)
    t = [v["median"] for v in tput.values()]
    c = {k: conn[label]["median"] for k, label in CONN.items()}
    u = {k: cpu[label]["median"] for k, label in CONN.items()}
    walked = checks["census"]["last"]["ipv4_rules"] - checks["census"]["nft"]["ipv4_rules"]  # rules before tun0's
    cl = "ip netns exec CLIENT"
    return {
        **figures,
        "checks": checks,
        "derived": {
            "throughput alias+SNAT / plain": t[1] / t[0],
            "throughput tunnel address with vpnsplit / plain": t[2] / t[0],
            "conn/s 100 tunnels / 1 tunnel": c["last"] / c["one"],
            "conn/s 1 tunnel alias / plain": c["one"] / c["plain"],
            "conn/s 100 tunnels, tun0's rules first / 1 tunnel": c["first"] / c["one"],
            "conn/s 100 tunnels' rules, 1 tunnel's nft entries / 1 tunnel": c["rules"] / c["one"],
            "conn/s 1 tunnel's rules, 100 tunnels' nft entries / 1 tunnel": c["nft"] / c["one"],
            "CPU per connection, 100 tunnels / 1 tunnel": u["last"] / u["one"],
            "CPU per connection, 100 tunnels with tun0's rules first / 1 tunnel": u["first"] / u["one"],
            "CPU per connection, 100 tunnels' rules, 1 tunnel's nft entries / 1 tunnel": u["rules"] / u["one"],
            "CPU per connection, 1 tunnel's rules, 100 tunnels' nft entries / 1 tunnel": u["nft"] / u["one"],
            "CPU per connection, 100 tunnels without the reverse-path lookup / 1 tunnel": u["rpcheck"] / u["one"],
            f"ns of CPU per connection per rule walked (last - first, {walked} rules)": (u["last"] - u["first"]) / walked * 1e3,
            "share of the walk's CPU that is the SYN-ACK's reverse-path lookup": (u["last"] - u["rpcheck"]) / (u["last"] - u["first"]),
        },
        "commands": {
            "iperf3 server": f"ip netns exec SERVER iperf3 -s -B {SERVER} -p {IPERF_PORT}",
            "iperf3 client": f"{cl} iperf3 -c {SERVER} -B {ALIAS}|{LOCAL} -p {IPERF_PORT} -t {seconds} -J",
            "connrate server": f"ip netns exec SERVER {PY} -I {CONNRATE} server {SERVER} {CONN_PORT} 900",
            "connrate client": f"{cl} {PY} -I {CONNRATE} client {ALIAS}|{LOCAL} {SERVER} {CONN_PORT} {conn_seconds} 200000",
            "rules variant (untimed set-up)": f"{cl} nft -f - <<< 'delete element inet vpnsplit snat4 {{ 10.192.I.1 . \"tunI\" }}' (and guard_addr4, guard_path4: 10.64.I.2, 10.192.I.1), I = 1..99",
            "nft variant (untimed set-up)": f"{cl} ip -batch - <<< 'rule del priority 1010', 1011, ... 1991",
            "rpcheck variant (untimed set-up)": f"{cl} sysctl -w net.ipv4.conf.tun0.accept_local=1",
        },
    }


def _snat_check(pair):
    """The server sees the tunnel address, not the alias: the SNAT path is really taken."""
    with pair.server.inside():
        cap = subprocess.Popen(["timeout", "10", "tcpdump", "-c", "1", "-nni", "tunS", "-l", f"tcp dst port {CONN_PORT}"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.5)
    pair.connrate(0.2, limit=5)
    out = cap.communicate(timeout=15)[0]
    return {"tcpdump": out.strip(), "source_is_tunnel_address": f"{LOCAL}." in out and f"{ALIAS}." not in out}
