"""The lab's network: four namespaces wired like a home network with a VPN provider.

    lan ns (br0 198.51.100.20)          isp ns                    vpn ns
    +-- bridge --------------+      +-------------------+      +-------------------+
    | host0 <-> host (eth0)  |      |                   |      |                   |
    | isp0  <-> isp (lan0) ----->  198.51.100.1  wan0 ----->  203.0.113.2 (eth0)  |
    +------------------------+      |   203.0.113.1     |      |  OpenVPN/WG server|
                                    +-------------------+      |  192.0.2.80 (lo): |
                                                               |  "internet" host  |
                                                               +-------------------+

`host` (198.51.100.10, default via the isp router) runs the VPN client and vpnsplit.
Every link is dual-stack: the IPv6 addresses mirror the IPv4 ones in 2001:db8::/32
(LAN 2001:db8:51::/64, isp-vpn 2001:db8:113::/64, the internet host 2001:db8:2::80).
Only documentation ranges are used, and nothing is ever added to the caller's own
namespace: every command runs under `ip netns exec`, and teardown kills whatever still
runs in the namespaces before deleting them.
"""

import itertools
import os
import signal
import subprocess
import time

HOST_ADDR = "198.51.100.10"
LAN_NEIGHBOUR = "198.51.100.20"
ISP_LAN = "198.51.100.1"
ISP_WAN = "203.0.113.1"
SERVER = "203.0.113.2"  # the VPN server's public address (OpenVPN/WireGuard endpoint)
# An "internet" host behind the VPN server: reachable straight through the isp and through
# the tunnel. The probe listener runs here, not on SERVER, because OpenVPN drops packets
# routed into the tunnel towards its own endpoint ("Recursive routing detected").
TARGET = "192.0.2.80"
ISP_LINK = "lan0"  # the isp router's interface towards the host: the link captures watch
HOST_ADDR6, LAN_NEIGHBOUR6, ISP_LAN6 = "2001:db8:51::10", "2001:db8:51::20", "2001:db8:51::1"
ISP_WAN6, SERVER6, TARGET6 = "2001:db8:113::1", "2001:db8:113::2", "2001:db8:2::80"
# add_container(): a container subnet behind the host (the example `sources`)
CONTAINER_NET, CONTAINER, CONTAINER_GW = "10.20.1.0/24", "10.20.1.5", "10.20.1.1"
CONTAINER_NET6, CONTAINER6, CONTAINER_GW6 = "fd20:1::/64", "fd20:1::5", "fd20:1::1"

ROLES = ("host", "lan", "isp", "vpn")
_serial = itertools.count()


class CommandFailed(RuntimeError):
    """A lab command failed; the message carries its stderr so a failing test explains itself."""


def run(argv, check=True, env=None, timeout=30, input=None):
    """Run *argv* (no shell), capturing text output; raise CommandFailed with stderr if asked."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} -> rc {proc.returncode}\n{proc.stdout}{proc.stderr}".rstrip())
    return proc


class Network:
    """The four namespaces and their links. Use as a context manager: exit always tears down."""

    def __init__(self):
        # pid + serial: parallel pytest workers and several labs in one run never collide.
        self.prefix = f"vs-{os.getpid()}-{next(_serial)}"
        self.ns = {role: f"{self.prefix}-{role}" for role in ROLES}
        self.created = []

    # -- running things ---------------------------------------------------------------
    def argv(self, role, argv):
        """*argv* prefixed so it runs inside the namespace of *role*."""
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def run(self, role, argv, **kw):
        return run(self.argv(role, argv), **kw)

    def ip(self, role, *args, **kw):
        """`ip -n NS ARGS` and its stdout."""
        return run(["ip", "-n", self.ns[role], *args], **kw).stdout

    def popen(self, role, argv, **kw):
        return subprocess.Popen(self.argv(role, argv), **kw)

    # -- building -----------------------------------------------------------------------
    def __enter__(self):
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()

    def build(self):
        for role in ROLES:
            self._namespace(role)
        # The LAN is a bridge in the neighbour's namespace, with the host and the router on it.
        self.ip("lan", "link", "add", "br0", "type", "bridge")
        self._addresses("lan", "br0", f"{LAN_NEIGHBOUR}/24", f"{LAN_NEIGHBOUR6}/64")
        self.ip("lan", "link", "set", "br0", "up")
        self._veth("lan", "host0", "host", "eth0", f"{HOST_ADDR}/24", f"{HOST_ADDR6}/64")
        self._veth("lan", "isp0", "isp", ISP_LINK, f"{ISP_LAN}/24", f"{ISP_LAN6}/64")
        for port in ("host0", "isp0"):
            self.ip("lan", "link", "set", port, "master", "br0", "up")
        self._veth("isp", "wan0", "vpn", "eth0", f"{SERVER}/24", f"{SERVER6}/64")
        self._addresses("isp", "wan0", f"{ISP_WAN}/24", f"{ISP_WAN6}/64")
        self.ip("isp", "link", "set", "wan0", "up")
        for role, (gateway, gateway6) in {"host": (ISP_LAN, ISP_LAN6), "lan": (ISP_LAN, ISP_LAN6), "vpn": (ISP_WAN, ISP_WAN6)}.items():
            self.ip(role, "route", "add", "default", "via", gateway)
            self.ip(role, "-6", "route", "add", "default", "via", gateway6)
        self._addresses("vpn", "lo", f"{TARGET}/32", f"{TARGET6}/128")
        self.ip("isp", "route", "add", f"{TARGET}/32", "via", SERVER)
        self.ip("isp", "-6", "route", "add", f"{TARGET6}/128", "via", SERVER6)
        self.sysctl("isp", "net.ipv4.ip_forward", "1")
        self.sysctl("isp", "net.ipv6.conf.all.forwarding", "1")
        # Like a real provider, the server side drops packets whose source it would not
        # route back the same way: so when the listener sees a tunnel address, the packet
        # really came through the tunnel (and a host-LAN source really came via the isp).
        self.sysctl("vpn", "net.ipv4.conf.all.rp_filter", "1")
        # The host's own reverse-path filter stays at the kernel default on purpose: the
        # lab must not hide a vpnsplit rp_filter problem, nor invent one.

    def add_container(self):
        """A `ctr` namespace behind the host (CONTAINER_NET*, host side ctr0): a container whose
        subnet a tunnel's `sources` sends through it."""
        self._namespace("ctr")
        self._veth("host", "ctr0", "ctr", "eth0", f"{CONTAINER}/24", f"{CONTAINER6}/64")
        self._addresses("host", "ctr0", f"{CONTAINER_GW}/24", f"{CONTAINER_GW6}/64")
        self.ip("host", "link", "set", "ctr0", "up")
        self.ip("ctr", "route", "add", "default", "via", CONTAINER_GW)
        self.ip("ctr", "-6", "route", "add", "default", "via", CONTAINER_GW6)

    def attach_container(self, bridge, addr, addr6, gateway, gateway6):
        """A `ctr` namespace attached to *bridge* on the host: a veth whose host end (vctr) is a port of
        the bridge, *addr*/24 and *addr6*/64 on the container's end, default routes via the gateways."""
        self._namespace("ctr")
        self._veth("host", "vctr", "ctr", "eth0", f"{addr}/24", f"{addr6}/64")
        self.ip("host", "link", "set", "vctr", "master", bridge, "up")
        self.ip("ctr", "route", "add", "default", "via", gateway)
        self.ip("ctr", "-6", "route", "add", "default", "via", gateway6)

    def _namespace(self, role):
        self.ns[role] = f"{self.prefix}-{role}"
        run(["ip", "netns", "add", self.ns[role]])
        self.created.append(role)
        self.ip(role, "link", "set", "lo", "up")
        # no duplicate address detection: IPv6 addresses (link-local ones too, which
        # neighbour discovery needs) are usable at once, as IPv4 ones are
        for conf in ("all", "default"):
            self.sysctl(role, f"net.ipv6.conf.{conf}.accept_dad", "0")

    def _veth(self, role_a, name_a, role_b, name_b, *addrs_b):
        """A veth pair from *role_a* to *role_b*; *addrs_b* go on the far end."""
        self.ip(role_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", self.ns[role_b])
        self._addresses(role_b, name_b, *addrs_b)
        self.ip(role_b, "link", "set", name_b, "up")

    def _addresses(self, role, dev, *addrs):
        for addr in addrs:
            self.ip(role, "addr", "add", addr, "dev", dev)

    def sysctl(self, role, key, value):
        self.run(role, ["sysctl", "-qw", f"{key}={value}"])

    # -- teardown -----------------------------------------------------------------------
    def teardown(self):
        """Kill every process left in our namespaces, then delete them. Never raises."""
        for role in reversed(self.created):
            name = self.ns[role]
            kill_namespace_processes(name)
            run(["ip", "netns", "del", name], check=False)
        self.created.clear()


def namespace_pids(name):
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split()]


def kill_namespace_processes(name, grace=3.0):
    """SIGTERM (so OpenVPN runs its down hook), then SIGKILL what is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace_pids(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and namespace_pids(name):
            time.sleep(0.05)


def pid_alive(pid):
    """True while *pid* runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
