"""Issue 11 part 7: boot. A default VPN over WireGuard (wg-quick + wireguard-go, configs/wireguard/
wg0.conf with FwMark = 0x20000000) after `vpnsplit up --all` at boot: the kill switch is on before
the client starts, no `servers` are configured and no endpoint is known yet. The client's marked
handshake passes the kill switch (rule 31990, the backstop's CLIENT_MARK exception), so traffic
flows at once; without it the first handshake is dropped and WireGuard retries after 5 s.

Run it alone:  .venv/bin/python -m pytest tests/test_lab_boot.py -v
"""

import sys
import time

import pytest

from tests.lab import checks
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.lab import PROBE_PORT
from tests.lab.netns import TARGET

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
