"""Issue 11 part 7: boot and names. A default VPN over WireGuard (wg-quick + wireguard-go, configs/wireguard/
wg0.conf with FwMark = 0x20000000) after `vpnsplit up --all` at boot: the kill switch is on before
the client starts, no `servers` are configured and no endpoint is known yet. The client's marked
handshake passes the kill switch (rule 31990, the backstop's CLIENT_MARK exception), so traffic
flows at once; without it the first handshake is dropped and WireGuard retries after 5 s.
The same at boot for OpenVPN with `mark 536870912` (configs/openvpn/client.conf), which never
connects without it; and for either client given its server by host name (in `servers`), with
dnsmasq as the host's resolver on the LAN and off it, at boot and on a reconnect that resolves anew.

Run it alone:  .venv/bin/python -m pytest tests/test_lab_boot.py -v
"""

import sys
import time

import pytest

from tests.lab import checks
from tests.lab.checks import PLAIN
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.lab import PROBE_PORT
from tests.lab.netns import SERVER, TARGET
from tests.lab.resolvers import ISP_RESOLVER, LAN_RESOLVER, SERVER_NAME
from tests.test_lab_dns import dnslab  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.lab

# seconds from argv[1] (a wall-clock time) until the internet host first answers a datagram from an unbound socket
FIRST_ANSWER = """
import socket, sys, time
start, target, port = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
while time.time() - start < 15:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        try:
            s.connect((target, port)); s.send(b"who am i"); s.recv(2048)
            print(f"{time.time() - start:.3f}"); break
        except OSError:
            time.sleep(0.02)
else:
    print("none")
"""


def test_wireguard_default_vpn_passes_traffic_within_1s_of_wg_quick_up(lab):  # noqa: F811
    client, _ = lab.wireguard_pair()
    lab.write_vpnsplit_config(wg=dict(device=client.ifname, table=101, priority=1100, default=True))
    checks.start_listeners(lab)
    lab.vpnsplit("up", "--all")  # at boot: the kill switch before the client exists
    assert "31990:" in lab.rules() and "fwmark 0x20000000" in lab.rules(), lab.diagnostics()
    assert lab.whoami("0.0.0.0", TARGET, "udp", timeout=0.5).startswith("error"), "the kill switch is not on"
    client.up()
    delay = lab.run("host", [sys.executable, "-c", FIRST_ANSWER, str(time.time()), TARGET, str(PROBE_PORT)]).stdout.strip()
    print(f"boot delay: first answer {delay} s after wg-quick up returned")
    assert delay != "none" and float(delay) < 1.0, f"first answer after {delay} s\n{lab.diagnostics()}"


# -- OpenVPN's mark ---------------------------------------------------------------------------
MARK_LINE = "mark 536870912"  # configs/openvpn/client.conf: CLIENT_MARK, as README's wiring says


def ovpn_default(lab, **section):
    """The tunnel 'provider' over OpenVPN as the default VPN (`default = true`), no server known."""
    lab.write_vpnsplit_config(provider=dict(device="tun0", table=100, priority=1000, default=True, **section))
    lab.openvpn_server("subnet")
    checks.start_listeners(lab)


def carried(lab):
    """The host's unbound traffic reaches the internet host as the tunnel's address, none in the clear."""
    counter = lab.isp_counter([PLAIN[4].everything])
    seen = lab.whoami("0.0.0.0", TARGET, "udp")
    leaked = counter[PLAIN[4].everything]
    counter.remove()
    tunnel = lab.address_of("tun0")
    assert (seen, leaked) == (tunnel, 0), f"seen {seen} (tunnel {tunnel}), {leaked} in the clear\n{lab.diagnostics()}"


def test_openvpn_default_vpn_with_its_mark_connects_at_boot_and_reconnects(lab):  # noqa: F811
    """README's wiring: with a default VPN, `mark 536870912` in the OpenVPN config (the example has it).
    At boot (`vpnsplit up --all`, no `servers`, no trusted_ip known yet) the marked client reaches its
    server through the kill switch; unmarked (the control, first) it never connects."""
    ovpn_default(lab)
    lab.vpnsplit("up", "--all")
    assert lab.whoami("0.0.0.0", TARGET, "udp", timeout=0.5).startswith("error"), "the kill switch is not on"
    assert "32002:" not in lab.rules(), "no server exception may help here"

    unmarked = lab.openvpn_client("client.conf", replace={MARK_LINE: ""}, wait=False)
    time.sleep(5)
    assert unmarked.ready_count() == 0, f"connected without the mark?\n{unmarked.log()}"
    unmarked.stop()

    start = time.monotonic()
    client = lab.openvpn_client("client.conf")
    print(f"openvpn with the mark: connected {time.monotonic() - start:.2f} s after start at boot")
    carried(lab)
    client.reconnect()  # SIGUSR1: the tunnel goes down (down hook) and comes back through the kill switch
    carried(lab)


# -- VPN servers by host name ---------------------------------------------------------------------
def server_name_queries(resolvers):
    return {name: len(r.queries(SERVER_NAME)) for name, r in resolvers.items()}


class OpenVPNByName:
    device = "tun0"

    def __init__(self, lab):
        self.lab = lab
        lab.write_vpnsplit_config(provider=dict(device="tun0", table=100, priority=1000, default=True, servers=[SERVER_NAME]))
        lab.openvpn_server("subnet")

    def start(self):
        self.client = self.lab.openvpn_client("client.conf", replace={f"remote {SERVER} 1194": f"remote {SERVER_NAME} 1194"})

    def reconnect(self):
        self.client.reconnect()  # SIGUSR1, no persist-remote-ip: the client resolves the name again


class WireGuardByName:
    def __init__(self, lab):
        self.client, _ = lab.wireguard_pair(endpoint_host=SERVER_NAME)
        self.device = self.client.ifname
        lab.write_vpnsplit_config(wg=dict(device=self.device, table=101, priority=1100, default=True, servers=[SERVER_NAME]))

    def start(self):
        self.client.up()  # `wg setconf` resolves the Endpoint

    def reconnect(self):
        self.client.down()
        self.client.up()


def first_answer(lab):
    """Seconds until the internet host first answers an unbound socket (FIRST_ANSWER), from now."""
    out = lab.run("host", [sys.executable, "-c", FIRST_ANSWER, str(time.time()), TARGET, str(PROBE_PORT)]).stdout.strip()
    return None if out == "none" else float(out)


@pytest.mark.parametrize("resolver", [LAN_RESOLVER, ISP_RESOLVER], ids=["lan-resolver", "off-lan-resolver"])
@pytest.mark.parametrize("kind", [OpenVPNByName, WireGuardByName], ids=["openvpn", "wireguard"])
def test_a_server_given_by_host_name_connects_at_boot_and_reconnects(dnslab, kind, resolver):  # noqa: F811
    """`remote vpn.vpnsplit.test` / `Endpoint = vpn.vpnsplit.test:51820` with that name in `servers`,
    the kill switch on from `vpnsplit up --all`: the client's lookup leaves (to the LAN's resolver,
    on-link, or to the ISP's, off the LAN: rule 31992 and the names chain), from the uplink address,
    it connects, and again after a reconnect that resolves the name anew. (That no other name leaves
    so: tests/kernel/test_backstop.py.)"""
    lab, resolvers, conf = dnslab  # the lab with its three resolvers; the host asks the one *resolver* names
    vpn = kind(lab)
    conf.point("host", resolver)
    checks.start_listeners(lab)
    lab.vpnsplit("up", "--all")
    assert lab.whoami("0.0.0.0", TARGET, "udp", timeout=0.5).startswith("error"), "the kill switch is not on"

    start = time.time()
    vpn.start()
    delay = first_answer(lab)
    print(f"{kind.__name__} via {resolver}: first answer {time.time() - start:.2f} s after the client's start "
          f"({delay} s after it was up)")
    assert delay is not None, lab.diagnostics()
    asked = server_name_queries(resolvers)
    where = next(name for name, r in resolvers.items() if r.address == resolver)
    assert asked[where] >= 1 and sum(asked.values()) == asked[where], asked
    assert {src for _, src in resolvers[where].queries(SERVER_NAME)} == {PLAIN[4].host}, "asked from the uplink address"

    vpn.reconnect()
    assert first_answer(lab) is not None, lab.diagnostics()
    assert server_name_queries(resolvers)[where] > asked[where], "the reconnect did not resolve the name again"
