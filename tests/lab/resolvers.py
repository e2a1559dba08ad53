"""Real DNS resolvers in the lab (dnsmasq from Debian's dnsmasq-base), each counting its queries.

    tunnel's  192.0.2.53     2001:db8:2::53    in `vpn` (lo), behind the VPN server: what the VPN pushes
    LAN's     198.51.100.53  2001:db8:51::53   in `lan` (br0): the home router's resolver, on-link for the host
    ISP's     203.0.113.53   2001:db8:113::53  in `isp` (wan0): reachable through the uplink only

Each answers NAME with an address of its own, so an answer tells who gave it, and SERVER_NAME
(the VPN server's host name, for `remote`/`Endpoint` given by name) with the VPN server's address; each logs every
query with its source address (--log-queries to a file in the lab directory). The tunnel's
resolver lies OUTSIDE the tunnel's subnet on purpose: a resolver inside it hides the reverse-path
and source-address traps of a DNS redirect. `resolv_conf(role, server)` points a namespace's libc at a
resolver the way `ip netns exec` looks for it (/etc/netns/NS/resolv.conf, bind-mounted over
/etc/resolv.conf); `remove()` takes that away again.
"""

import os
import re
import shutil
import subprocess
import time

from .netns import SERVER

NAME = "probe.vpnsplit.test"
SERVER_NAME = "vpn.vpnsplit.test"
RESOLVERS = {
    # name: (role, device, address, IPv6 address, the address it answers NAME with)
    "tunnel": ("vpn", "lo", "192.0.2.53", "2001:db8:2::53", "192.0.2.201"),
    "lan": ("lan", "br0", "198.51.100.53", "2001:db8:51::53", "198.51.100.201"),
    "isp": ("isp", "wan0", "203.0.113.53", "2001:db8:113::53", "203.0.113.201"),
}
TUNNEL_RESOLVER, LAN_RESOLVER, ISP_RESOLVER = (RESOLVERS[n][2] for n in ("tunnel", "lan", "isp"))
TUNNEL_RESOLVER6, LAN_RESOLVER6, ISP_RESOLVER6 = (RESOLVERS[n][3] for n in ("tunnel", "lan", "isp"))
_QUERY = re.compile(r"query\[\w+\] (\S+) from (\S+)")


class Resolver:
    def __init__(self, lab, name):
        self.lab, self.name = lab, name
        self.role, self.device, self.address, self.address6, self.answer = RESOLVERS[name]
        self.log = lab.path(f"dnsmasq-{name}.log")
        prefix, prefix6 = ("/32", "/128") if self.device == "lo" else ("/24", "/64")
        lab.ip(self.role, "addr", "add", self.address + prefix, "dev", self.device)
        lab.ip(self.role, "-6", "addr", "add", self.address6 + prefix6, "dev", self.device, "nodad")
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={self.address},{self.address6}", "--log-queries", f"--log-facility={self.log}", f"--address=/{NAME}/{self.answer}", f"--address=/{SERVER_NAME}/{SERVER}",
                f"--pid-file={lab.path(f'dnsmasq-{name}.pid')}", "--user=root", "--cache-size=0"]
        self.proc = lab.popen(self.role, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lab.listeners.append(self.proc)  # the lab kills it at teardown
        deadline = time.monotonic() + 5
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq {name} did not start: {self.proc.stderr.read().decode() if self.proc.poll() is not None else 'timeout'}")
            time.sleep(0.05)

    def _ready(self):
        return os.path.exists(self.log) and "started" in open(self.log).read()

    def queries(self, name=NAME):
        """[(name, source address)] of every query for *name* so far."""
        with open(self.log) as f:
            return [(q, src) for q, src in _QUERY.findall(f.read()) if q == name]

    def count(self):
        return len(self.queries())


def start_all(lab):
    """{name: Resolver} for the tunnel's, the LAN's and the ISP's resolver."""
    lab.ip("isp", "route", "add", f"{TUNNEL_RESOLVER}/32", "via", "203.0.113.2")
    lab.ip("isp", "-6", "route", "add", f"{TUNNEL_RESOLVER6}/128", "via", "2001:db8:113::2")
    return {name: Resolver(lab, name) for name in RESOLVERS}


class ResolvConf:
    """/etc/netns/NS/resolv.conf for the lab's namespaces; remove() deletes every one it wrote."""

    def __init__(self, lab):
        self.lab, self.dirs = lab, []

    def point(self, role, server):
        d = os.path.join("/etc/netns", self.lab.ns[role])
        os.makedirs(d, exist_ok=True)
        if d not in self.dirs:
            self.dirs.append(d)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write(f"nameserver {server}\n")

    def remove(self):
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


def lookup(lab, role, tool="getent", server=None, tcp=False, timeout=15):
    """(answer or None, seconds): a libc lookup of NAME (getent ahostsv4) or dig's, in *role*. The
    seconds are the tool's own run, timed inside the namespace (not `ip netns exec`'s set-up)."""
    if tool == "getent":
        argv = ["getent", "ahostsv4", NAME]
    else:
        argv = ["dig", "+short", "+tries=1", "+time=5", *(["+tcp"] if tcp else []), *([f"@{server}"] if server else []), NAME, "A"]
    timed = 'a=$(date +%s%N); "$@"; rc=$?; b=$(date +%s%N); echo "took $(( (b - a) / 1000 ))"; exit $rc'
    try:
        out = lab.run(role, ["sh", "-c", timed, "lookup", *argv], check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, float(timeout)
    took = int(re.search(r"^took (\d+)$", out.stdout, re.MULTILINE).group(1)) / 1e6
    found = re.findall(r"^(\d+\.\d+\.\d+\.\d+)", out.stdout, re.MULTILINE)
    return (found[0] if out.returncode == 0 and found else None), took
