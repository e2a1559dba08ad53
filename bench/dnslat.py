"""Part 6: DNS lookup latency through the default VPN's redirect vs direct to the same resolver.

Two namespaces: `host` runs vpnsplit (tunnel `provider` on tun0, a veth standing in for the
tunnel so that no VPN daemon's scheduling adds noise, dns = ["192.0.2.53"], rp_filter = 1)
and `far` holds the resolver (dnsmasq on 192.0.2.53, answering from its own data, no cache
misses, no upstream) at the tunnel's far end and the LAN router's address on the uplink.

- direct: the default VPN off, a socket bound to the tunnel address asks 192.0.2.53: the
  plain tunnel path (rule P, table, tun0) any tunnel traffic takes;
- redirect: `vpnsplit default provider` on, an unbound socket asks the LAN resolver
  198.51.100.53 (on-link): marked in the route chain, rule 31991, DNAT-ed to 192.0.2.53,
  masqueraded to the tunnel address, the reply's mark restored for the reverse-path check.

Each query is a new UDP socket (a new conntrack entry and NAT binding, as each libc lookup is),
timed from sendto to the answer inside the namespace (setns, no process per query). Blocks of
QUERIES queries alternate direct/redirect so that both share the machine's noise.
"""

import os
import random
import socket
import statistics
import struct
import subprocess
import time

from bench.core import HOOKS, Netns
from bench.scene import VPNSPLIT

RESOLVER, LAN_RESOLVER, TUNNEL_ADDR = "192.0.2.53", "198.51.100.53", "10.8.0.2"
CONFIG = f'[tunnel.provider]\ndevice = "tun0"\ntable = 100\npriority = 1000\ndns = ["{RESOLVER}"]\n'


def _query(qid):
    name = b"".join(bytes([len(p)]) + p for p in b"probe.vpnsplit.test".split(b".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


def _ask(server, bind):
    """Seconds from sending one query on a fresh socket to its answer."""
    qid = random.getrandbits(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        if bind:
            s.bind((bind, 0))
        t0 = time.perf_counter()
        s.sendto(_query(qid), (server, 53))
        while struct.unpack("!H", s.recv(512)[:2])[0] != qid:
            pass
        return time.perf_counter() - t0


def _scene():
    host, far = Netns("dns-host"), Netns("dns-far")
    host.ip("link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", far.name)
    host.ip("link", "add", "tun0", "type", "veth", "peer", "name", "tun1", "netns", far.name)
    host.ip("addr", "add", "198.51.100.10/24", "dev", "eth0")
    host.ip("addr", "add", f"{TUNNEL_ADDR}/24", "dev", "tun0")
    far.ip("addr", "add", "198.51.100.1/24", "dev", "lan0")
    far.ip("addr", "add", f"{LAN_RESOLVER}/24", "dev", "lan0")
    far.ip("addr", "add", "10.8.0.1/24", "dev", "tun1")
    far.ip("addr", "add", f"{RESOLVER}/32", "dev", "tun1")  # on-link for the host's `default dev tun0`
    for ns, devs in ((host, ("eth0", "tun0")), (far, ("lan0", "tun1"))):
        for dev in devs:
            ns.ip("link", "set", dev, "up")
    host.ip("route", "add", "default", "via", "198.51.100.1")
    host.call(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"])
    host.write_config(CONFIG)
    dnsmasq = subprocess.Popen(["ip", "netns", "exec", far.name, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                                "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={RESOLVER}",
                                f"--address=/probe.vpnsplit.test/{RESOLVER}", "--user=root", "--pid-file=",
                                "--log-facility=/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"VPNSPLIT_CONFIG": str(host.config), "VPNSPLIT_STATE_DIR": str(host.state_dir), "dev": "tun0", "dev_type": "tun",
           "ifconfig_local": TUNNEL_ADDR, "ifconfig_netmask": "255.255.255.0", "script_type": "up", "script_context": "init"}
    host.call([HOOKS / "up", "tun0", "1500", "0", TUNNEL_ADDR, "255.255.255.0", "init"], env=env)
    return host, far, dnsmasq, {k: env[k] for k in ("VPNSPLIT_CONFIG", "VPNSPLIT_STATE_DIR")}


def _block(host, contender, n):
    with host.inside():
        return [_ask(RESOLVER, TUNNEL_ADDR) if contender == "direct" else _ask(LAN_RESOLVER, None) for _ in range(n)]


def _summary(values):
    ms = sorted(v * 1000 for v in values)
    return {"n": len(ms), "median": statistics.median(ms), "p99": ms[int(0.99 * (len(ms) - 1))], "min": ms[0], "max": ms[-1]}


def run(queries=1000, block=100, budget=300):
    host, far, dnsmasq, env = _scene()
    try:
        for _ in range(50):  # dnsmasq up?
            if _try(host):
                break
            time.sleep(0.1)
        samples = {"direct": [], "redirect": []}
        start = time.monotonic()
        while min(len(v) for v in samples.values()) < queries and time.monotonic() - start < budget:
            for contender in ("direct", "redirect"):
                on = contender == "redirect"
                host.call([*VPNSPLIT, "default", "provider" if on else "--off"], env=env)
                samples[contender] += _block(host, contender, block)
        got = {name: _summary(v) for name, v in samples.items()}
        result = {"contenders": got, "block": block}
        result["derived"] = {"median redirect / direct": got["redirect"]["median"] / got["direct"]["median"],
                             "p99 redirect / direct": got["redirect"]["p99"] / got["direct"]["p99"]}
        result["commands"] = {"direct": f"dig @{RESOLVER} -b {TUNNEL_ADDR} probe.vpnsplit.test  # default VPN off",
                              "redirect": f"dig @{LAN_RESOLVER} probe.vpnsplit.test  # after vpnsplit default provider"}
        return result
    finally:
        dnsmasq.kill()
        dnsmasq.wait()
        host.close()
        far.close()


def _try(host):
    try:
        _block(host, "direct", 1)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    import json

    print(json.dumps(run(queries=int(os.environ.get("QUERIES", "1000"))), indent=1))
