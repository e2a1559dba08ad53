"""A throw-away network namespace for kernel-level tests of vpnsplit.

Every kernel test gets its own namespace (`vsk-<pid>-<n>`), its own state directory and
config file; the hooks run inside it exactly as OpenVPN or wg-quick would run them (an
`env -i` environment without PATH). `dump()` reads everything the kernel holds there
(rules, routes of every table, addresses, the whole nft ruleset) so tests can compare
complete states, not just the objects they expect.
"""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "hooks"
VPNSPLIT = [str(REPO / ".venv/bin/python3"), "-I", "-m", "vpnsplit"]
_serial = itertools.count()

# The tunnels most kernel tests use: `provider` (IPv4 + IPv6, aliases on the tunnel device,
# strict by default) and `work` (IPv4, alias on lo); tests add keys after each section.
PROVIDER = """
[tunnel.provider]
device   = "tun0"
table    = 100
priority = 1000
alias    = "10.192.8.1"
alias6   = "fd10:192::1"
"""
WORK = """
[tunnel.work]
device       = "tun1"
table        = 101
priority     = 1100
alias        = "10.192.9.1"
alias_device = "lo"
"""

_LISTEN = """
import socket, sys
proto, addr, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the address may appear a moment later
s.bind((addr, port)); s.settimeout(timeout)
if proto == "tcp":
    s.listen(1)
print("ready", flush=True)
try:
    if proto == "udp":
        data, peer = s.recvfrom(100)
    else:
        conn, peer = s.accept(); conn.settimeout(timeout); data = conn.recv(100)
    print(peer[0], data.decode())
except OSError:
    print("nothing")
"""

_SEND = """
import errno, socket, sys
proto, addr, port, source, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.settimeout(3)
try:
    if source:
        s.bind((source, 0))
    if proto == "udp":
        s.sendto(payload.encode(), (addr, port))
    else:
        s.connect((addr, port)); s.sendall(payload.encode())
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
"""

_FORWARDING = """
import glob, json
keys = ("forwarding", "force_forwarding")
paths = [p for v in ("ipv4", "ipv6") for k in keys for p in glob.glob(f"/proc/sys/net/{v}/conf/*/{k}")]
print(json.dumps({p[len("/proc/sys/net/"):].replace("/conf/", "/"): open(p).read().strip() for p in sorted(paths)}))
"""


def _iproute_in(netns):
    """IPRoute inside *netns* (flags=0: never create it); pyroute2 0.7.2 (Debian 12) has no
    IPRoute(netns=) and opens it with NetNS."""
    try:
        return IPRoute(netns=netns, flags=0)
    except TypeError:
        from pyroute2 import NetNS

        return NetNS(netns, flags=0)


def run(argv, check=False, env=None, timeout=60, input=None):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout, input=input, check=check)


class NetnsLab:
    """One namespace; `close()` deletes it (and so every device and process tied to it)."""

    def __init__(self, tmp_path):
        self.name = f"vsk-{os.getpid()}-{next(_serial)}"
        self.tmp = Path(tmp_path)
        self.state_dir = self.tmp / "state"
        self.config = self.tmp / "vpnsplit.toml"
        run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")

    def close(self):
        pids = run(["ip", "netns", "pids", self.name]).stdout.split()
        for pid in pids:
            run(["kill", "-9", pid])
        run(["ip", "netns", "del", self.name])

    # -- setting the scene ---------------------------------------------------------------
    def write_config(self, text):
        self.config.write_text(text)
        self.config.chmod(0o644)
        return self.config

    def ip(self, *args, check=True):
        return run(["ip", "-n", self.name, *args], check=check).stdout

    def nft(self, text):
        """Load an nft script (another tool's tables) into the namespace."""
        return run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=text, check=True)

    def exec(self, *argv, check=False, env=None, timeout=60):
        return run(["ip", "netns", "exec", self.name, *argv], check=check, env=env, timeout=timeout)

    def add_tun(self, dev, v4=None, v6=None, peer=None, mode="tun"):
        """A tun/tap device, up, with the addresses a VPN client would have given it."""
        self.ip("tuntap", "add", dev, "mode", mode)
        self.ip("link", "set", dev, "up")
        if v4:
            self.ip("addr", "add", v4, *(["peer", peer] if peer else []), "dev", dev)
        if v6:
            self.ip("-6", "addr", "add", v6, "dev", dev, "nodad")

    # -- running vpnsplit as the VPN clients do --------------------------------------------
    def env(self, extra=None):
        env = {"VPNSPLIT_CONFIG": str(self.config), "VPNSPLIT_STATE_DIR": str(self.state_dir)}
        env.update(extra or {})
        return env

    def hook(self, hook, *args, env=None, timeout=60):
        """Run hooks/HOOK in the namespace with only *env* (OpenVPN passes no PATH)."""
        envargs = [f"{k}={v}" for k, v in self.env(env).items()]
        return self.exec("/usr/bin/env", "-i", *envargs, HOOKS / hook, *args, timeout=timeout)

    def openvpn(self, hook, dev, local, remote, context="init", env=None, words=()):
        """An OpenVPN up/down call: its six arguments plus the environment it sets."""
        ovpn = {"dev": dev, "dev_type": "tap" if dev.startswith("tap") else "tun", "script_type": hook, "script_context": context}
        if local:
            ovpn["ifconfig_local"] = local
            ovpn["ifconfig_netmask" if remote.startswith("255.") else "ifconfig_remote"] = remote
        ovpn.update(env or {})
        return self.hook(hook, *words, dev, "1500", "0", local, remote, context, env=ovpn)

    def vpnsplit(self, *args, env=None):
        return self.exec("/usr/bin/env", "-i", *[f"{k}={v}" for k, v in self.env(env).items()], *VPNSPLIT, *args)

    # -- reading the kernel ----------------------------------------------------------------
    def dump(self):
        """Everything the namespace's kernel holds, normalised for comparison."""
        with _iproute_in(self.name) as ipr:
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
            rules, routes, addrs = [], [], []
            for fam in (socket.AF_INET, socket.AF_INET6):
                for m in ipr.get_rules(family=fam):
                    rules.append(_attrs(m, ("family", "src_len", "dst_len", "action"), "FRA_"))
                for m in ipr.route("dump", family=fam):
                    r = _attrs(m, ("family", "dst_len", "type", "proto", "scope"), "RTA_", skip=("RTA_CACHEINFO", "RTA_EXPIRES"))
                    r["dev"] = names.get(r.pop("RTA_OIF", None))
                    routes.append(r)
            for m in ipr.get_addr():
                addrs.append((names.get(m["index"]), m.get_attr("IFA_ADDRESS"), m.get_attr("IFA_LOCAL"), m["prefixlen"]))
        nft = json.loads(self.exec("nft", "-j", "list", "ruleset", check=True).stdout)["nftables"]
        for item in nft:
            for body in item.values():
                if isinstance(body, dict):
                    body.pop("handle", None)
        return {"rules": sorted(rules, key=repr), "routes": sorted(routes, key=repr), "addresses": sorted(addrs, key=repr), "nft": nft[1:]}

    def rules(self, table=None, family=None):
        """`(priority, src, table, proto)` for every non-kernel rule (of one *family*, 4 or 6, if given)."""
        out = []
        af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family)
        for r in self.dump()["rules"]:
            if r.get("FRA_TABLE") in (253, 254, 255) and r.get("FRA_PRIORITY") in (None, 32766, 32767):
                continue
            src = f"{r['FRA_SRC']}/{r['src_len']}" if r.get("FRA_SRC") else "all"
            if (table is None or r.get("FRA_TABLE") == table) and af in (None, r["family"]):
                out.append((r.get("FRA_PRIORITY"), src, r.get("FRA_TABLE"), r.get("FRA_PROTOCOL")))
        return sorted(out)

    def table(self, table):
        """`(type, dst, dev, gateway, metric, proto)` for the routes of one table."""
        out = []
        for r in self.dump()["routes"]:
            if r.get("RTA_TABLE") == table:
                dst = f"{r['RTA_DST']}/{r['dst_len']}" if r.get("RTA_DST") else "default"
                fam = 4 if r["family"] == socket.AF_INET else 6
                dev = None if r["type"] == 7 else r["dev"]
                out.append((fam, r["type"], dst, dev, r.get("RTA_GATEWAY"), r.get("RTA_PRIORITY"), r["proto"]))
        return sorted(out, key=repr)

    def snat(self):
        """The SNAT map entries: {(alias, device): to}."""
        out = {}
        for item in self.dump()["nft"]:
            m = item.get("map")
            if m and m.get("table") == "vpnsplit":
                for key, to in m.get("elem", []):
                    out[tuple(key["concat"])] = to
        return out

    def guards(self):
        """The anti-spoofing entries: {(address, the only device it may arrive on)}."""
        out = set()
        for item in self.dump()["nft"]:
            s = item.get("set")
            if s and s.get("table") == "vpnsplit" and s["name"].startswith("guard_path"):
                out |= {tuple(e["concat"]) for e in s.get("elem", [])}
        return out

    # -- packets --------------------------------------------------------------------------
    def listen(self, address, port, proto="udp", timeout=3):
        """Start a one-shot listener, bound when this returns; `.communicate()[0]` is then
        "PEER-ADDRESS PAYLOAD", or "nothing"."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", _LISTEN, proto, address, str(port), str(timeout)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", f"listener on {address}:{port} did not start"
        return proc

    def send(self, address, port, proto="udp", source=None, payload="hello"):
        """Send *payload* (UDP datagram or TCP connection), optionally bound to *source*: "sent" or the errno name."""
        return self.exec(sys.executable, "-c", _SEND, proto, address, str(port), source or "", payload).stdout.strip()

    def forwarding(self):
        """Every forwarding switch in the namespace, read from its /proc: {"ipv6/ctr0/force_forwarding": "1", ...}
        (IPv4 and IPv6 forwarding, IPv6 force_forwarding, of every device, all and default)."""
        return json.loads(self.exec(sys.executable, "-c", _FORWARDING, check=True).stdout)

    def addresses(self, dev):
        return sorted(a[2] or a[1] for a in self.dump()["addresses"] if a[0] == dev)


def _attrs(msg, fields, prefix, skip=()):
    out = {f: msg[f] for f in fields}
    for name, value in msg["attrs"]:
        if name.startswith(prefix) and name not in skip:
            out[name] = value
    return out
