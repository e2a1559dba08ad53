"""Benchmark 5: the packet path. A client namespace and a server namespace joined by a veth
pair whose client end is named tun0 and addressed point-to-point (10.8.0.2 peer 10.8.0.1),
as OpenVPN would leave a tun device; the server holds 203.0.113.1 on lo.

  plain    no vpnsplit at all: the client sends from 10.8.0.2, route 203.0.113.1 dev tun0
  1 tunnel vpnsplit up for tun0 (alias 10.200.0.1): the client sends from the alias, which
           takes the rule into table 100 and the SNAT map to 10.8.0.2
  100      the same plus 99 more tunnels (tun devices, rules, aliases, map/set elements);
           tun0's rules come last (priority 2990) so a lookup walks every other tunnel's first

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
VPN = scene.Tun("vpn", "tun0", 100, 2990, ALIAS, LOCAL, netmask=None)


class Pair:
    """Client and server namespaces joined by veth (client end: tun0)."""

    def __init__(self, tag, tunnels=0, server_seconds=900):
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
            c.write_config(VPN.section() + "".join("\n" + t.section() for t in others))
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
        p = self.client.call(["iperf3", "-c", SERVER, "-B", src or self.src, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
                             timeout=seconds + 30)
        return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

    def connrate(self, seconds, limit=200_000):
        p = self.client.call([PY, "-I", CONNRATE, "client", self.src, SERVER, str(CONN_PORT), str(seconds), str(limit)], timeout=seconds + 30)
        return json.loads(p.stdout)["per_second"]

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.client.close()
        self.server.close()


def _interleave(contenders, runs, budget):
    samples = {label: [] for label in contenders}
    start = time.monotonic()
    for i in range(runs):
        for label, fn in contenders.items():
            samples[label].append(fn())
        if i >= 2 and time.monotonic() - start > budget:
            break
    return {label: stats(v, scale=1.0) for label, v in samples.items()}


def run(runs=5, seconds=3, conn_seconds=2, budget=150):
    plain, one, hundred = Pair("pkt0"), Pair("pkt1", tunnels=1), Pair("pkt100", tunnels=100)
    try:
        checks = {
            "snat_seen_by_server": _snat_check(one),
            "rules_in_100_client": len(hundred.client.ip("rule").splitlines()),
            "map_elements_in_100_client": hundred.client.call(["nft", "list", "map", "inet", "vpnsplit", "snat4"]).stdout.count('" : '),
        }
        for p in (plain, one, hundred):  # warm-up: ARP, caches, first conntrack entries
            p.iperf(1)
            p.connrate(0.5)
        tput = _interleave({
            "plain: from 10.8.0.2, no vpnsplit (Gbit/s)": lambda: plain.iperf(seconds),
            "vpnsplit, 1 tunnel: from alias 10.200.0.1, SNAT (Gbit/s)": lambda: one.iperf(seconds),
            "vpnsplit, 1 tunnel: from 10.8.0.2, no SNAT (Gbit/s)": lambda: one.iperf(seconds, src=LOCAL),
        }, runs, budget / 2)
        conn = _interleave({
            "plain: from 10.8.0.2, no vpnsplit (conn/s)": lambda: plain.connrate(conn_seconds),
            "vpnsplit, 1 tunnel: from alias (conn/s)": lambda: one.connrate(conn_seconds),
            "vpnsplit, 100 tunnels: from alias (conn/s)": lambda: hundred.connrate(conn_seconds),
        }, runs, budget / 2)
    finally:
        for p in (plain, one, hundred):
            p.close()
    t = [v["median"] for v in tput.values()]
    c = [v["median"] for v in conn.values()]
    cl = "ip netns exec CLIENT"
    return {
        "throughput": tput,
        "connections": conn,
        "checks": checks,
        "derived": {
            "throughput alias+SNAT / plain": t[1] / t[0],
            "throughput tunnel address with vpnsplit / plain": t[2] / t[0],
            "conn/s 100 tunnels / 1 tunnel": c[2] / c[1],
            "conn/s 1 tunnel alias / plain": c[1] / c[0],
        },
        "commands": {
            "iperf3 server": f"ip netns exec SERVER iperf3 -s -B {SERVER} -p {IPERF_PORT}",
            "iperf3 client": f"{cl} iperf3 -c {SERVER} -B {ALIAS}|{LOCAL} -p {IPERF_PORT} -t {seconds} -J",
            "connrate server": f"ip netns exec SERVER {PY} -I {CONNRATE} server {SERVER} {CONN_PORT} 900",
            "connrate client": f"{cl} {PY} -I {CONNRATE} client {ALIAS}|{LOCAL} {SERVER} {CONN_PORT} {conn_seconds} 200000",
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
