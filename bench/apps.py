"""Benchmark 10: what a program pays for going through a tunnel by its cgroup (issue 16: goal >= 97% of the
same program bound to the alias; the per-packet cost flat with 1, 10 and 100 configured cgroups).

Benchmark 5's pair (client end of the veth named tun0, 10.8.0.2 peer 10.8.0.1, the server
203.0.113.1 on lo), vpnsplit up for tun0 (strict, alias 10.200.0.1) with `app_slot = 3` and
`cgroups = [...]`: N cgroups below a cgroup of the bench's own under cgroup2, each with the
socket-mark program `vpnsplit up` attached. Contenders, interleaved:

  alias    iperf3 / bench/connrate.py bound to the alias: the rule from the alias, SNAT to 10.8.0.2
  cgroup   the same programs unbound, started in the first configured cgroup: the socket's mark
           (set when the socket is created) takes the fwmark rule, the source is 10.8.0.2, no NAT

and the sender's CPU time per 64-byte datagram (bench/sendcost.py, unbound, in the first cgroup;
dropped on arrival) with 1, 10 and 100 configured cgroups, one pair each.
"""

import json
import os
import subprocess

from bench import packet
from bench.core import PY, REPO

SENDCOST = REPO / "bench/sendcost.py"
SINK_PORT, DATAGRAMS = 9999, 100_000
COUNTS = (1, 10, 100)
ANY = "0.0.0.0"  # bound to no address: the route lookup (the mark's) chooses the source


def _cgroup2():
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split(" - ")[1].startswith("cgroup2 ")]
    return "/sys/fs/cgroup" if "/sys/fs/cgroup" in points else points[0]


class AppPair:
    """A packet.Pair whose tunnel has app_slot 3 and *count* configured cgroups below *base*."""

    def __init__(self, tag, base, count):
        self.pair = packet.Pair(tag, tunnels=1)
        c = self.pair.client
        top = _cgroup2()
        self.cgroups = [os.path.join(base, f"{tag}-{i}") for i in range(count)]
        for path in self.cgroups:
            os.makedirs(path)
        names = ", ".join(f'"{os.path.relpath(p, top)}"' for p in self.cgroups)
        c.write_config(c.config.read_text() + f"app_slot = 3\ncgroups = [{names}]\n")
        env = {"VPNSPLIT_CONFIG": str(c.config), "VPNSPLIT_STATE_DIR": str(c.state_dir)}
        c.call([PY, "-I", "-m", "vpnsplit", "up", "vpn"], env=env)
        self.pair.server.call(["nft", "-f", "-"], input="table inet sink { chain c { type filter hook prerouting priority -400; "
                                                        f"udp dport {SINK_PORT} drop; }}; }}\n")

    def run(self, argv, in_cgroup):
        """*argv* in the client namespace, in the first configured cgroup if *in_cgroup*: its stdout."""
        def enter():
            with open(os.path.join(self.cgroups[0], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        with self.pair.client.inside():
            p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120,
                               preexec_fn=enter if in_cgroup else None)
        if p.returncode:
            raise RuntimeError(f"{argv[:3]}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
        return p.stdout

    def iperf(self, seconds, in_cgroup):
        src = [] if in_cgroup else ["-B", packet.ALIAS]
        out = json.loads(self.run(["iperf3", "-c", packet.SERVER, *src, "-p", str(packet.IPERF_PORT), "-t", str(seconds), "-J"],
                                         in_cgroup))
        if "error" in out:
            raise RuntimeError(f"iperf3: {out['error']}")
        return out["end"]["sum_received"]["bits_per_second"] / 1e9

    def connrate(self, seconds, in_cgroup):
        src = ANY if in_cgroup else packet.ALIAS
        return json.loads(self.run([PY, "-I", packet.CONNRATE, "client", src, packet.SERVER, str(packet.CONN_PORT),
                                           str(seconds), "200000"], in_cgroup))

    def sendcost(self):
        return float(self.run([PY, "-I", SENDCOST, ANY, packet.SERVER, str(SINK_PORT), str(DATAGRAMS)], True))

    def marks_seen(self):
        """The source address the server sees from a program in the cgroup (untimed check): the tunnel address."""
        out = self.run([PY, "-I", "-c", "import socket; s = socket.socket(); s.connect(('203.0.113.1', 5300)); "
                                        "print(s.getsockname()[0], hex(s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) & 0xffffffff))"], True)
        return out.split()

    def close(self):
        self.pair.close()


def _remove(base):
    for where in sorted((d for d, _, _ in os.walk(base)), key=len, reverse=True):
        os.rmdir(where)


def run(runs=7, conn_runs=15, send_runs=21, seconds=3, conn_seconds=1, budget=300):
    base = os.path.join(_cgroup2(), f"vsb-apps-{os.getpid()}")
    os.makedirs(base)
    pairs = {}
    try:
        for n in COUNTS:
            pairs[n] = AppPair(f"ap{n}", base, n)
        one = pairs[1]
        seen = one.marks_seen()
        one.iperf(1, False), one.iperf(1, True), one.connrate(0.5, False), one.connrate(0.5, True)  # warm-up
        label = {False: "bound to the alias", True: "in the tunnel's cgroup, unbound"}
        iperf = {f"{label[k]} (Gbit/s)": (lambda k=k: one.iperf(seconds, k)) for k in (False, True)}
        tput = packet.sample_stats(packet.interleave_calls(iperf, runs, budget / 3))
        conns = {f"{label[k]} (conn/s)": (lambda k=k: one.connrate(conn_seconds, k)) for k in (False, True)}
        raw = packet.interleave_calls(conns, conn_runs, budget / 3)
        sends = {f"{n} configured cgroup{'s' if n > 1 else ''} (CPU ns per datagram)": (lambda p=p: p.sendcost()) for n, p in pairs.items()}
        send = packet.sample_stats(packet.interleave_calls(sends, send_runs, budget / 3))
    finally:
        for p in pairs.values():
            p.close()
        _remove(base)
    figures, conn, cpu = packet.connection_figures(raw, tput, conn_seconds)
    t = [tput[f"{label[k]} (Gbit/s)"]["median"] for k in (False, True)]
    c = [conn[f"{label[k]} (conn/s)"]["median"] for k in (False, True)]
    u = [cpu[f"{label[k]} (conn/s)"]["median"] for k in (False, True)]
    d = [s["median"] for s in send.values()]
    return {
        **figures,
        "cpu_per_datagram": send,
        "checks": {"source and mark of a program in the cgroup": seen},
        "derived": {
            "throughput cgroup / alias": t[1] / t[0],
            "conn/s cgroup / alias": c[1] / c[0],
            "CPU per connection alias / cgroup": u[0] / u[1],
            "CPU per datagram 100 cgroups / 1": d[2] / d[0],
            "CPU per datagram 10 cgroups / 1": d[1] / d[0],
        },
        "commands": {"app_slot (untimed set-up)": "cgroups = [N paths] and app_slot = 3 in the section; vpnsplit up vpn",
                     "alias": f"iperf3 -c {packet.SERVER} -B {packet.ALIAS}; bench/connrate.py client {packet.ALIAS} ...",
                     "cgroup": f"echo $$ > CGROUP/cgroup.procs; iperf3 -c {packet.SERVER}; bench/connrate.py client {ANY} ...",
                     "datagrams": f"(in the cgroup) python3 bench/sendcost.py {ANY} {packet.SERVER} {SINK_PORT} {DATAGRAMS}"},
    }

