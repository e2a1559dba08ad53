"""Issue 16's edge cases of a program under `vpnsplit run NAME` (test_apps' world: IPv4 and IPv6, rp_filter = 1,
strict, app_slot = 3): a socket bound to another address of the host while the tunnel is up (SNAT to the
tunnel address, appsnat.AppSnatKind), one bound to the uplink device, and the RSTs of its connections after
the tunnel went down. The far end sees the source address; the isp counts every packet for the internet host.
"""

import subprocess
import sys
import time

from tests.kernel.applab import app_cgroup, apps  # noqa: F401 (fixtures)
from tests.kernel.test_apps import MARK, MASK, app_world, received  # noqa: F401 (fixtures)
from tests.kernel.test_backstop import outside
from tests.kernel.test_sources_forward import PRIO, fam, world  # noqa: F401 (fixtures)

# far: accept connections, send each one byte (the program never reads it), hold them open
HOLD_FAR = """
import socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(8); print("ready", flush=True)
held = []
while True:
    c, _ = s.accept(); c.sendall(b"x"); held.append(c)
"""
# the program: N connections, then on each stdin line "I unread|linger" closes connection I that way
CONNECTIONS = """
import socket, struct, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = []
for _ in range(n):
    c = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(5); c.connect((addr, port)); conns.append(c)
time.sleep(0.3)  # far's byte has arrived: unread data
print("ready", flush=True)
for line in sys.stdin:
    i, how = line.split()
    c = conns[int(i)]
    if how == "linger":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("closed", flush=True)
"""


def test_a_program_bound_to_another_host_address_leaves_as_the_tunnel_address(app_world, fam):
    ns, far, isp, apps = app_world
    count = outside(isp)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    for port, proto in ((5700, "udp"), (5701, "tcp")):
        # the uplink's address: the mark's rules still send it into the tunnel, SNAT-ed to the tunnel address (the peer
        # drops any other source); TCP's SYN-ACK, de-NAT-ed to the uplink address, passes rp_filter by its restored mark
        got, seen = received(far, fam.internet, port, lambda: apps.send(proto, fam.internet, port, source=fam.uplink), proto)
        assert (got[0], got[2], seen) == ("sent", MARK, f"{fam.tunnel} hello"), proto
    # bound to the uplink device (and its address): the tunnel's table has no route out of it, main has; the apps
    # chain drops it (UDP: EPERM) or resets it (TCP): nothing leaves
    for how in ({"device": "eth0"}, {"device": "eth0", "source": fam.uplink}):
        for proto in ("udp", "tcp"):
            out = apps.send(proto, fam.internet, 5702, **how)[0]
            assert out == ("EPERM" if proto == "udp" else "ECONNREFUSED"), (proto, how, out)
    assert count() == 0


def test_rsts_of_a_programs_connections_after_the_tunnel_went_down_never_leave(app_world, fam):
    """Connections made while up; the tunnel goes down (strict); the program closes them with unread data
    and with SO_LINGER 0: the kernel sends an RST with the socket's mark, which meets the unreachable route
    (and the apps chain). Control: without the mark's rule and the apps chain it leaves by the isp."""
    ns, far, isp, apps = app_world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    holder = subprocess.Popen(["ip", "netns", "exec", far.name, sys.executable, "-c", HOLD_FAR, fam.internet, "5710"],
                              stdout=subprocess.PIPE, text=True)
    program = None
    try:
        assert holder.stdout.readline().strip() == "ready"
        program = apps.start(sys.executable, "-c", CONNECTIONS, fam.internet, 5710, 3)
        assert ns.vpnsplit("down", "vpn").returncode == 0
        count = outside(isp)
        for i, how in ((0, "unread"), (1, "linger")):
            program.stdin.write(f"{i} {how}\n")
            program.stdin.flush()
            assert program.stdout.readline().strip() == "closed"
        assert count() == 0
        ns.ip(f"-{fam.fam}", "rule", "del", "priority", str(PRIO + 3), "fwmark", f"{MARK:#x}/{MASK:#x}")
        ns.exec("nft", "flush", "chain", "inet", "vpnsplit", "apps", check=True)
        program.stdin.write("2 linger\n")
        program.stdin.flush()
        assert program.stdout.readline().strip() == "closed"
        deadline = time.monotonic() + 3
        while count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count() > 0
    finally:
        for proc in (holder, program):
            if proc is not None:
                proc.kill()
                proc.wait()


