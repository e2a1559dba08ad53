"""Benchmark 8: what the netfilter backstop costs a packet (issue 11: goal >= 97% of without).

Two scenes of benchmark 5's pair (client end of the veth named tun0, 10.8.0.2 peer 10.8.0.1,
the server 203.0.113.1 on lo), each with vpnsplit up for tun0 (strict, alias 10.200.0.1) and
the host-wide default VPN through it, so every packet walks the backstop chain and its kill
switch (the alias: confine sets, then `jump killswitch`, `oifname "tun0" accept`):

  backstop     as vpnsplit leaves it
  without      the same, then `nft flush chain inet vpnsplit backstop` (untimed set-up): the
               chain stays hooked but holds no rule, so only the backstop's rules are taken away

Throughput (iperf3 from the alias, SNAT-ed) and new TCP connections per second (bench/connrate.py
from the alias) are measured interleaved, as in benchmark 5; CPU per connection too. Those swing by
several percent with the machine's other load, more than the chain costs, so the sender's CPU time
per 64-byte datagram (bench/sendcost.py, dropped on arrival at the server) gives the per-packet cost.
"""

from bench import packet
from bench.core import PY, REPO

SENDCOST = REPO / "bench/sendcost.py"
SINK_PORT, DATAGRAMS = 9999, 100_000

VARIANTS = {"backstop": "with the backstop", "without": "backstop chain flushed"}


def _pair(tag, flush):
    pair = packet.Pair(tag, tunnels=1)
    env = {"VPNSPLIT_CONFIG": str(pair.client.config), "VPNSPLIT_STATE_DIR": str(pair.client.state_dir)}
    pair.client.call([PY, "-I", "-m", "vpnsplit", "default", "vpn"], env=env)
    if flush:
        pair.client.call(["nft", "flush", "chain", "inet", "vpnsplit", "backstop"])
    pair.server.call(["nft", "-f", "-"], input="table inet sink { chain c { type filter hook prerouting priority -400; "
                                               f"udp dport {SINK_PORT} drop; }}; }}\n")
    return pair


def _sendcost(pair):
    out = pair.client.call([PY, "-I", SENDCOST, pair.src, packet.SERVER, str(SINK_PORT), str(DATAGRAMS)])
    return float(out.stdout)


def run(runs=5, conn_runs=9, send_runs=15, seconds=3, conn_seconds=1, budget=150):
    pairs = {}
    try:
        pairs["backstop"] = _pair("bs1", flush=False)
        pairs["without"] = _pair("bs0", flush=True)
        rules = {k: p.client.call(["nft", "list", "chain", "inet", "vpnsplit", "backstop"]).stdout.count("\n")
                 for k, p in pairs.items()}
        for p in pairs.values():  # warm-up
            p.iperf(1)
            p.connrate(0.5)
        iperf = {f"{VARIANTS[k]} (Gbit/s)": (lambda p=p: p.iperf(seconds)) for k, p in pairs.items()}
        tput = packet.sample_stats(packet.interleave_calls(iperf, runs, budget / 3))
        conns = {f"{VARIANTS[k]} (conn/s)": (lambda p=p: p.connrate(conn_seconds)) for k, p in pairs.items()}
        raw = packet.interleave_calls(conns, conn_runs, budget / 3)
        sends = {f"{VARIANTS[k]} (CPU ns per datagram)": (lambda p=p: _sendcost(p)) for k, p in pairs.items()}
        send = packet.sample_stats(packet.interleave_calls(sends, send_runs, budget / 3))
    finally:
        for p in pairs.values():
            p.close()
    figures, conn, cpu = packet.connection_figures(raw, tput, conn_seconds)
    t = {k: tput[f"{v} (Gbit/s)"]["median"] for k, v in VARIANTS.items()}
    c = {k: conn[f"{v} (conn/s)"]["median"] for k, v in VARIANTS.items()}
    u = {k: cpu[f"{v} (conn/s)"]["median"] for k, v in VARIANTS.items()}
    d = {k: send[f"{v} (CPU ns per datagram)"]["median"] for k, v in VARIANTS.items()}
    return {
        **figures,
        "cpu_per_datagram": send,
        "checks": {"backstop chain lines listed": rules},
        "derived": {
            "throughput with / without the backstop": t["backstop"] / t["without"],
            "conn/s with / without the backstop": c["backstop"] / c["without"],
            "CPU per connection without / with the backstop": u["without"] / u["backstop"],
            "CPU per datagram without / with the backstop": d["without"] / d["backstop"],
            "ns of CPU per datagram the backstop adds": d["backstop"] - d["without"],
        },
        "commands": {"without (untimed set-up)": "ip netns exec CLIENT nft flush chain inet vpnsplit backstop",
                     "datagrams": f"ip netns exec CLIENT python3 bench/sendcost.py 10.200.0.1 {packet.SERVER} {SINK_PORT} {DATAGRAMS}",
                     "default VPN (untimed set-up)": "ip netns exec CLIENT vpnsplit default vpn"},
    }
