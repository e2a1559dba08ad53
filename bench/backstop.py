"""Benchmark 8: what the netfilter backstop costs a packet (issue 11: goal >= 97% of without).

Benchmark 5's pair (client end of the veth named tun0, 10.8.0.2 peer 10.8.0.1, the server
203.0.113.1 on lo) with vpnsplit up for tun0 (strict, alias 10.200.0.1) and the host-wide
default VPN through it, so every packet walks the backstop chain and, unless it is confined,
its kill switch. One pair; the contenders are states of its backstop chain, set (untimed) before
each sample, interleaved:

  backstop     as vpnsplit leaves it
  without      `nft flush chain inet vpnsplit backstop`: the chain stays hooked but holds no rule,
               so only the backstop's rules are taken away

Throughput (iperf3 from the alias, SNAT-ed), new TCP connections per second and CPU per
connection (bench/connrate.py from the alias), and the sender's CPU time per 64-byte datagram
(bench/sendcost.py, dropped on arrival at the server).

Those swing by more than the chain costs with the machine's other load, so each path's cost is
also measured amplified: the backstop chain flushed and COPIES more base chains on postrouting
(priority 90) each holding its rules (an accept ends only its own base chain, so a packet walks
every copy), against as many empty ones; the difference per datagram / COPIES is what the rules
cost one packet on that path. The same for the rules before this layout (BEFORE), for an address
no tunnel confines (the host's ordinary traffic) with and without the default VPN's kill switch,
and, against no copy at all, for an empty base chain: the floor any backstop pays. Likewise for a
packet the client receives (sent by the server to 10.8.0.2, dropped after the client's prerouting):
the rules of vpnsplit's app_replies chain copied into base chains on prerouting (priority mangle).
"""

import re
import statistics
import time

from bench import packet
from bench.core import PY, REPO

SENDCOST = REPO / "bench/sendcost.py"
SINK_PORT, DATAGRAMS, COPIES, AMPLIFIED_DATAGRAMS = 9999, 100_000, 50, 20_000
SETTLE = 0.2  # s after a change of the chains, so that the commit's deferred work (RCU) does not meet the next sample
UNCONFINED = "198.51.100.2"  # on the client's lo: confined by no tunnel, routed into the default VPN
TABLE = "inet vpnsplit"
# the base chain's rules of the layout before (main at 659101a): loopback and link scope on every packet's way
BEFORE = ["ip saddr . oifname @confine_host4 accept", "ip6 saddr . oifname @confine_host6 accept", 'oifname "lo" accept',
          "ip saddr @confine_src4 jump confine4", "ip6 saddr @confine_src6 jump confine6", "jump link_scope", "jump killswitch"]
# app_replies's rules in their first order: the interface name tested first on every received packet
APP_REPLIES_BEFORE = ["ct mark & 0x8f000000 != 0x00000000 meta mark 0x00000000 meta mark set ct mark & 0x8f000000",
                      'iifname != "lo" ip daddr 127.0.0.0/8 drop']
RECEIVED = packet.PEER  # the server's end: it sends to the client's 10.8.0.2, which the client receives
POSTROUTING, PREROUTING = "postrouting priority 90", "prerouting priority mangle"  # where a path's copies go
NO_KILLSWITCH = "bench_no_killswitch"  # an empty regular chain: the kill switch chain as it is without the default VPN

VARIANTS = {"backstop": "with the backstop", "without": "backstop chain flushed"}


class Scene:
    """The pair, the backstop chain as vpnsplit left it, and ways to set the chain's state."""

    def __init__(self):
        self.pair = pair = packet.Pair("bs", tunnels=1)
        env = {"VPNSPLIT_CONFIG": str(pair.client.config), "VPNSPLIT_STATE_DIR": str(pair.client.state_dir)}
        pair.client.call([PY, "-I", "-m", "vpnsplit", "default", "vpn"], env=env)
        pair.client.ip("address", "add", f"{UNCONFINED}/32", "dev", "lo")
        for ns, prio in ((pair.server, -400), (pair.client, -100)):  # the client's after conntrack and the copies
            ns.call(["nft", "-f", "-"], input=f"table inet sink {{ chain c {{ type filter hook prerouting priority {prio}; "
                                              f"udp dport {SINK_PORT} drop; }}; }}\n")
        self.listing = self.nft(f"list chain {TABLE} backstop")
        self.rules = self.chain_rules("backstop")
        self.app_replies = self.chain_rules("app_replies")
        self.nft(f"add chain {TABLE} {NO_KILLSWITCH}")
        self.state = None

    def nft(self, script):
        return self.pair.client.call(["nft", "-f", "-"], input=script + "\n").stdout

    def chain_rules(self, chain):
        listing = self.nft(f"list chain {TABLE} {chain}")
        return [line.strip() for line in listing.splitlines()[3:] if line.strip() not in ("", "}")]

    def set(self, state, rules=(), copies=0, hook=POSTROUTING):
        """The backstop chain as vpnsplit left it (*state* "backstop") or flushed, plus *copies* base chains
        on *hook* holding *rules*; nothing is written if the state is already so."""
        if self.state == (state, tuple(rules), copies, hook):
            return
        script = [f"flush chain {TABLE} backstop"]
        for i in range(COPIES):
            script += [f"add chain {TABLE} bench{i}", f"flush chain {TABLE} bench{i}", f"delete chain {TABLE} bench{i}"]
        for i in range(copies):
            script.append(f"add chain {TABLE} bench{i} {{ type filter hook {hook}; policy accept; }}")
            script += [f"add rule {TABLE} bench{i} {r}" for r in rules]
        self.nft("\n".join(script) + "\n" + (self.listing if state == "backstop" else ""))
        self.state = (state, tuple(rules), copies, hook)
        time.sleep(SETTLE)

    def packets_per_connection(self, seconds=0.5):
        """How many packets the client sends per connection (each meets the backstop): a counter chain, untimed."""
        self.nft(f"add chain {TABLE} bench_count {{ type filter hook postrouting priority 89; }}\n"
                 f"add rule {TABLE} bench_count ip saddr {packet.ALIAS} tcp dport {packet.CONN_PORT} counter")
        n = self.pair.connrate(seconds)["connections"]
        counted = int(re.search(r"counter packets (\d+)", self.nft(f"list chain {TABLE} bench_count")).group(1))
        self.nft(f"flush chain {TABLE} bench_count\ndelete chain {TABLE} bench_count")
        return counted / n

    def sendcost(self, src=packet.ALIAS, count=DATAGRAMS):
        """CPU ns per datagram from *src*: the client's to the server, or RECEIVED: the server's to the client."""
        ns, dst = (self.pair.server, packet.LOCAL) if src == RECEIVED else (self.pair.client, packet.SERVER)
        out = ns.call([PY, "-I", SENDCOST, src, dst, str(SINK_PORT), str(count)])
        return float(out.stdout)

    def close(self):
        self.pair.close()


def _amplified(scene, runs, budget):
    """ns of CPU per datagram each path's rules cost (per copy, paired with the empty copies in each round)."""
    ours, no_ks = scene.rules, [re.sub(r"jump killswitch$", f"jump {NO_KILLSWITCH}", r) for r in scene.rules]
    before_no_ks = [re.sub(r"jump killswitch$", f"jump {NO_KILLSWITCH}", r) for r in BEFORE]
    paths = {  # label -> (source, rules, copies)
        "none": (packet.ALIAS, (), 0), "empty": (packet.ALIAS, (), COPIES),
        "alias out its tunnel": (packet.ALIAS, ours, COPIES), "alias out its tunnel, before": (packet.ALIAS, BEFORE, COPIES),
        "empty, unconfined": (UNCONFINED, (), COPIES),
        "unconfined, default VPN": (UNCONFINED, ours, COPIES), "unconfined, default VPN, before": (UNCONFINED, BEFORE, COPIES),
        "unconfined, no default VPN": (UNCONFINED, no_ks, COPIES),
        "unconfined, no default VPN, before": (UNCONFINED, before_no_ks, COPIES),
        "received, none": (RECEIVED, (), 0), "received, empty": (RECEIVED, (), COPIES),
        "received, app_replies": (RECEIVED, scene.app_replies, COPIES),
        "received, app_replies, before": (RECEIVED, APP_REPLIES_BEFORE, COPIES),
    }
    base = {packet.ALIAS: "empty", UNCONFINED: "empty, unconfined", RECEIVED: "received, empty"}

    def sample(src, rules, copies):
        scene.set("without", rules, copies, PREROUTING if src == RECEIVED else POSTROUTING)
        return scene.sendcost(src, AMPLIFIED_DATAGRAMS)

    raw = packet.interleave_calls({k: (lambda v=v: sample(*v)) for k, v in paths.items()}, runs, budget)
    scene.set("without")

    def per_packet(label, base):
        return statistics.median((a - b) / COPIES for a, b in zip(raw[label], raw[base]))

    ns = {f"ns per packet, {k}": per_packet(k, base[v[0]]) for k, v in paths.items() if v[2] and v[1]}
    ns["ns per packet, an empty base chain on postrouting (the floor)"] = per_packet("empty", "none")
    ns["ns per packet, an empty base chain on prerouting (the received floor)"] = per_packet("received, empty", "received, none")
    return packet.sample_stats(raw), ns


def run(runs=5, conn_runs=9, send_runs=15, seconds=3, conn_seconds=1, budget=150, amplified_runs=9):
    scene = Scene()
    try:
        states, per_connection = {}, scene.packets_per_connection()
        for k in VARIANTS:
            scene.set(k)
            states[k] = scene.nft(f"list chain {TABLE} backstop").count("\n")

        def contenders(unit, fn):
            return {f"{v} ({unit})": (lambda k=k: (scene.set(k), fn())[1]) for k, v in VARIANTS.items()}

        for k in VARIANTS:  # warm-up
            scene.set(k)
            scene.pair.iperf(1)
            scene.pair.connrate(0.5)
        tput = packet.sample_stats(packet.interleave_calls(contenders("Gbit/s", lambda: scene.pair.iperf(seconds)), runs, budget / 4))
        raw = packet.interleave_calls(contenders("conn/s", lambda: scene.pair.connrate(conn_seconds)), conn_runs, budget / 4)
        send = packet.sample_stats(packet.interleave_calls(contenders("CPU ns per datagram", scene.sendcost), send_runs, budget / 4))
        amplified, ns = _amplified(scene, amplified_runs, budget / 4)
    finally:
        scene.close()
    figures, conn, cpu = packet.connection_figures(raw, tput, conn_seconds)
    t = {k: tput[f"{v} (Gbit/s)"]["median"] for k, v in VARIANTS.items()}
    c = {k: conn[f"{v} (conn/s)"]["median"] for k, v in VARIANTS.items()}
    u = {k: cpu[f"{v} (conn/s)"]["median"] for k, v in VARIANTS.items()}
    d = {k: send[f"{v} (CPU ns per datagram)"]["median"] for k, v in VARIANTS.items()}
    alias = ns["ns per packet, alias out its tunnel"]
    return {
        **figures,
        "cpu_per_datagram": send,
        "amplified": amplified,
        "checks": {"backstop chain lines listed": states, "backstop rules": scene.rules, "copies": COPIES,
                   "app_replies rules": scene.app_replies,
                   "packets the client sends per connection": per_connection},
        "derived": {
            "throughput with / without the backstop": t["backstop"] / t["without"],
            "conn/s with / without the backstop": c["backstop"] / c["without"],
            "CPU per connection without / with the backstop": u["without"] / u["backstop"],
            "CPU per datagram without / with the backstop": d["without"] / d["backstop"],
            "ns of CPU per datagram the backstop adds": d["backstop"] - d["without"],
            **ns,
            "CPU per datagram without / with the backstop, from the amplified cost": d["without"] / (d["without"] + alias),
            "CPU per connection without / with the backstop, from the amplified cost":
                u["without"] / (u["without"] + per_connection * alias / 1000),
        },
        "commands": {"without (untimed set-up)": "ip netns exec CLIENT nft flush chain inet vpnsplit backstop",
                     "datagrams": f"ip netns exec CLIENT python3 bench/sendcost.py 10.200.0.1|{UNCONFINED} {packet.SERVER} {SINK_PORT} "
                                  f"{DATAGRAMS}|{AMPLIFIED_DATAGRAMS}",
                     "received": f"ip netns exec SERVER python3 bench/sendcost.py {RECEIVED} {packet.LOCAL} {SINK_PORT} "
                                 f"{AMPLIFIED_DATAGRAMS}",
                     "amplified (untimed set-up)": f"ip netns exec CLIENT nft add chain inet vpnsplit benchI '{{ type filter hook "
                                                   f"postrouting priority 90; }}' (I < {COPIES}), each with the rules of the path; "
                                                   "for a received packet: prerouting priority mangle",
                     "default VPN (untimed set-up)": "ip netns exec CLIENT vpnsplit default vpn"},
    }
