"""Issue 16: the DNS of programs under `vpnsplit run NAME` follows tunnel NAME (dns.DnsApp, DnsAppBlock),
in test_apps' world with real resolvers (dnsmasq from dnsmasq-base, each answering NAME with an
address of its own, so an answer tells who gave it, and logging every query with its source):

    tunnel's  192.0.2.53, 2001:db8:2::53    on far (lo), behind the tunnel: the `dns` key
    LAN's     198.51.100.1, 2001:db8:51::1  on isp (eth0), a `lan` exception: the host's resolver
    stub      127.0.0.53, ::1 (port 53)     on the host (lo): a local stub (systemd-resolved's), which would ask the LAN in the clear

A counter on isp counts every DNS packet that reaches it.
"""

import json
import subprocess
import sys
import time

import pytest

from tests.kernel.applab import app_cgroup, apps  # noqa: F401 (fixtures)
from tests.kernel.test_apps import APP_CONFIG, app_world  # noqa: F401 (fixtures)
from tests.kernel.test_sources_forward import fam, world  # noqa: F401 (fixtures)

NAME = "probe.vpnsplit.test"
RESOLVERS = {  # role: (IPv4, IPv6, answer)
    "tunnel": ("192.0.2.53", "2001:db8:2::53", "192.0.2.201"),
    "lan": ("198.51.100.1", "2001:db8:51::1", "198.51.100.201"),
    "stub": ("127.0.0.53", "::1", "127.0.0.201"),
}


class Dnsmasq:
    def __init__(self, where, role, tmp_path):
        self.where = where
        self.log = tmp_path / f"dnsmasq-{role}.log"
        v4, v6, answer = RESOLVERS[role]
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={v4},{v6}", "--log-queries", f"--log-facility={self.log}", f"--address=/{NAME}/{answer}",
                f"--pid-file={tmp_path / f'dnsmasq-{role}.pid'}", "--user=root", "--cache-size=0"]
        self.proc = subprocess.Popen(["ip", "netns", "exec", where.name, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while not (self.log.exists() and "started" in self.log.read_text()):
            assert self.proc.poll() is None and time.monotonic() < deadline, f"dnsmasq {role}: {self.proc.stderr.read()}"
            time.sleep(0.05)

    def queries(self):
        """The source address of each query for NAME so far."""
        return [line.split(" from ")[1] for line in self.log.read_text().splitlines() if f"] {NAME} from " in line]


@pytest.fixture
def dns_world(app_world, tmp_path):
    ns, far, isp, apps = app_world
    ns.write_config(APP_CONFIG + f'dns = ["{RESOLVERS["tunnel"][0]}", "{RESOLVERS["tunnel"][1]}"]\n')
    far.ip("addr", "add", "192.0.2.53/32", "dev", "lo")
    far.ip("-6", "addr", "add", "2001:db8:2::53/128", "dev", "lo")
    ns.ip("addr", "add", "127.0.0.53/8", "dev", "lo")
    isp.nft("table inet dns {\n chain c {\n type filter hook prerouting priority 0;\n th dport 53 counter\n }\n}\n")
    servers = {role: Dnsmasq(where, role, tmp_path) for role, where in (("tunnel", far), ("lan", isp), ("stub", ns))}
    try:
        yield ns, isp, apps, servers
    finally:
        for server in servers.values():
            server.proc.kill()
            server.proc.wait()


def at_isp(isp):
    rules = json.loads(isp.exec("nft", "-j", "list", "chain", "inet", "dns", "c", check=True).stdout)["nftables"]
    return sum(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)


def lookup(apps, fam, server, tcp=False, tunnel="vpn"):
    """What `dig` (in tunnel's program cgroup, or outside with tunnel None) got: the answer's address, or its error."""
    done = apps.run("dig", f"-{fam.fam}", "+short", "+time=1", "+tries=1", *(["+tcp"] if tcp else []), f"@{server}",
                    NAME, "A", tunnel=tunnel)
    return done.stdout.strip() if done.returncode == 0 else "failed: " + done.stdout


def test_a_programs_dns_goes_to_the_tunnels_resolver_and_never_out_by_the_uplink(dns_world, fam):
    ns, isp, apps, servers = dns_world
    lan, stub = RESOLVERS["lan"][fam.fam == 6], RESOLVERS["stub"][fam.fam == 6]
    # control: outside `vpnsplit run` the host's resolver answers, by the uplink
    assert lookup(apps, fam, lan, tunnel=None) == "198.51.100.201" and at_isp(isp) > 0
    asked = len(servers["lan"].queries())
    before = at_isp(isp)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    for tcp in (False, True):
        # the host's LAN resolver, asked by the program: the tunnel's answers, asked from the tunnel address
        assert lookup(apps, fam, lan, tcp) == "192.0.2.201", tcp
        assert servers["tunnel"].queries()[-1] == fam.tunnel
    # a stub on this host (systemd-resolved's 127.0.0.53) is not asked either: the tunnel's resolver answers, asked
    # from the tunnel address (appsnat: route_localnet lets the redirected query out, SNAT rewrites its loopback source).
    # IPv6 has no route_localnet: a query to ::1 redirected off the host gets no answer (nothing leaves)
    if fam.fam == 4:
        assert lookup(apps, fam, stub) == "192.0.2.201" and servers["tunnel"].queries()[-1] == fam.tunnel
    else:
        assert "timed out" in lookup(apps, fam, stub)
    assert (len(servers["lan"].queries()), at_isp(isp), servers["stub"].queries()) == (asked, before, [])
    # tunnel down (strict): refused or unreachable at once (not a timeout), wherever it asks; nothing leaves,
    # the stub hears nothing
    assert ns.vpnsplit("down", "vpn").returncode == 0
    answered = len(servers["tunnel"].queries())
    for server in (lan, stub, RESOLVERS["tunnel"][fam.fam == 6]):
        for tcp in (False, True):
            got = lookup(apps, fam, server, tcp)
            assert got.startswith("failed") and ("unreachable" in got or "refused" in got), (server, tcp, got)
    assert (len(servers["lan"].queries()), at_isp(isp), servers["stub"].queries()) == (asked, before, [])
    assert len(servers["tunnel"].queries()) == answered


def test_explain_pid_says_where_the_programs_dns_goes_as_the_kernel_does(dns_world, fam):
    """`explain --pid PID DST`'s dns part: the redirect to the tunnel's resolver, with the kernel's route for it (port 53,
    the program's mark); what the program's own lookup then does agrees: answered by that resolver, from that source."""
    ns, isp, apps, servers = dns_world
    lan, resolver = RESOLVERS["lan"][fam.fam == 6], RESOLVERS["tunnel"][fam.fam == 6]
    assert ns.vpnsplit("up", "vpn").returncode == 0
    sleeper = apps.start(sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)")
    try:
        explained = apps.vpnsplit("explain", "--pid", str(sleeper.pid), lan, "--json")
        dns = json.loads(explained.stdout)["dns"]
        assert (dns["action"], dns["to"], dns["device"], dns["source"]) == ("redirect", resolver, "vpn0", fam.tunnel), explained.stderr
        text = apps.vpnsplit("explain", "--pid", str(sleeper.pid), lan).stdout
        assert f"  dns to {lan} (port 53): redirected to {resolver} (the tunnel's resolver), whatever resolver it asks: " \
               f"table 10003, dev vpn0, source {fam.tunnel}" in text, text
        assert lookup(apps, fam, lan) == "192.0.2.201" and servers["tunnel"].queries()[-1] == dns["source"]
        assert ns.vpnsplit("down", "vpn").returncode == 0
        text = apps.vpnsplit("explain", "--pid", str(sleeper.pid), lan).stdout
        assert f"  dns to {lan} (port 53): refused at once (strict: the tunnel is down)" in text, text
        got = lookup(apps, fam, lan)
        assert got.startswith("failed") and ("refused" in got or "unreachable" in got), got
    finally:
        sleeper.kill()
        sleeper.wait()


# far: a DNS query for NAME to 127.0.0.53 as a raw Ethernet frame onto the tunnel's link (far's own stack would keep
# anything for 127.0.0.0/8 on its lo): what a hostile tunnel peer could send
INJECT = """
import socket, struct, sys
dev, dst_mac, name = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3]
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
dns = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
udp = struct.pack("!HHHH", 40053, 53, 8 + len(dns), 0) + dns
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton("10.8.0.1"), socket.inet_aton("127.0.0.53"))
total = sum(struct.unpack("!10H", hdr))
while total >> 16: total = (total & 0xffff) + (total >> 16)
hdr = hdr[:10] + struct.pack("!H", ~total & 0xffff) + hdr[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
src_mac = open(f"/sys/class/net/{dev}/address").read().strip()
for _ in range(3):
    s.send(dst_mac + bytes.fromhex(src_mac.replace(":", "")) + b"\\x08\\x00" + hdr + udp)
"""


def test_the_tunnel_peer_never_reaches_the_hosts_loopback(dns_world, fam):
    """route_localnet on the per-app tunnel (for a program's stub query, above) would let packets from the tunnel for
    127.0.0.0/8 in: app_replies drops them before any de-NAT. Control: without that chain the stub hears the peer."""
    if fam.fam == 6:
        pytest.skip("IPv6 has no route_localnet: ::1 from the wire is dropped by the kernel itself")
    ns, isp, apps, servers = dns_world
    far = servers["tunnel"].where
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.exec("cat", "/proc/sys/net/ipv4/conf/vpn0/route_localnet").stdout.strip() == "1"
    mac = json.loads(ns.ip("-j", "link", "show", "vpn0"))[0]["address"]
    far.exec(sys.executable, "-c", INJECT, "eth0", mac, NAME, check=True)
    time.sleep(0.5)
    assert servers["stub"].queries() == []
    ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "app_replies", check=True)
    far.exec(sys.executable, "-c", INJECT, "eth0", mac, NAME, check=True)
    deadline = time.monotonic() + 3
    while not servers["stub"].queries() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers["stub"].queries()[:1] == ["10.8.0.1"]
