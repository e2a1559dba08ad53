"""`make demo`: vpnsplit on a real OpenVPN tunnel, in throwaway network namespaces.

    .venv/bin/python -m tests.lab.demo        (as root, from the checkout)

Builds the lab (see tests/lab/netns.py), connects configs/openvpn/client.conf to a lab
OpenVPN server with configs/vpnsplit.toml, and prints what vpnsplit did and what the
packets did. Everything it creates is removed again; this machine's own network
namespace is never touched. Exit status: 0 all checks passed, 1 a check failed or the
lab broke, 2 the lab cannot run here (not root, software missing).
"""

import os
import subprocess
import sys
import tempfile
import time

from . import checks
from .fixtures import missing_reason
from .lab import CONFIGS, Lab
from .netns import HOST_ADDR, ISP_LAN, LAN_NEIGHBOUR, SERVER, TARGET
from .pki import make_pki

EXAMPLE_TOML = os.path.join(CONFIGS, "vpnsplit.toml")
OUR_RULE_PRIORITIES = range(1, 32766)  # the kernel's own rules are 0, 32766, 32767


def say(text=""):
    print(text, flush=True)


def indent(text, prefix="     "):
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    return "\n".join(prefix + line for line in lines) or prefix + "(nothing)"


def example_tunnel():
    """The first [tunnel.*] of the example config: the demo follows whatever it says."""
    from vpnsplit import config  # the checkout's package, installed in .venv by `make dev`

    return next(iter(config.load(EXAMPLE_TOML, check_owner=False).tunnels.values()))


def vpnsplit_rules(lab):
    return "\n".join(line for line in lab.rules().splitlines()
                     if int(line.split(":")[0]) in OUR_RULE_PRIORITIES)


def show_checks(title, found):
    say(title)
    for check in found:
        say("     " + check.line())
    return found


def demo(pki_dir):
    tunnel = example_tunnel()
    results = []
    with Lab(pki_dir) as lab:
        say(f"1. The lab: namespaces {lab.prefix}-{{host,lan,isp,vpn}}")
        say(f"     host {HOST_ADDR} on a LAN with neighbour {LAN_NEIGHBOUR}, default route via the isp router {ISP_LAN}")
        say(f"     VPN server {SERVER} behind the isp; an internet host {TARGET} reachable both ways")
        with open(EXAMPLE_TOML) as f:
            lab.write("vpnsplit.toml", f.read())
        say(f"     vpnsplit config: configs/vpnsplit.toml, [tunnel.{tunnel.name}] device {tunnel.device}, "
            f"table {tunnel.table}, alias {tunnel.alias}, strict {str(tunnel.strict).lower()}")
        checks.start_listeners(lab)
        lab.openvpn_server("subnet")

        started = time.monotonic()
        client = lab.openvpn_client("client.conf")
        address = lab.address_of(tunnel.device)
        say()
        say(f"2. OpenVPN (configs/openvpn/client.conf) connected in {time.monotonic() - started:.1f} s: "
            f"{tunnel.device} got {address} from the server's pool")
        say("   vpnsplit's up hook, as OpenVPN logged it:")
        say(indent("\n".join(line for line in client.log().splitlines() if line.startswith("vpnsplit "))))
        say("   ip rule (host), vpnsplit's rules:")
        say(indent(vpnsplit_rules(lab)))
        say(f"   ip route show table {tunnel.table}:")
        say(indent(lab.routes(tunnel.table)))
        say("   nft table inet vpnsplit, its source NAT map (alias . out device : tunnel address):")
        nft = lab.run("host", ["nft", "list", "map", "inet", "vpnsplit", "snat4"], check=False).stdout
        say(indent("\n".join(line.strip() for line in nft.splitlines() if "elements" in line)))
        say()
        results += show_checks("3. Packets, as the far end saw them (who-am-I listeners) and as the isp router counted them:",
                               checks.tunnel_checks(lab, str(tunnel.alias), address))

        say()
        say("4. The tunnel goes down (SIGTERM to OpenVPN; its down hook runs):")
        client.stop()
        say(indent("\n".join(line for line in client.log().splitlines() if line.startswith("vpnsplit down"))))
        say("   what stays so the alias fails closed (ip rule / table):")
        say(indent(vpnsplit_rules(lab) + "\n" + lab.routes(tunnel.table)))
        if tunnel.alias_device in (None, tunnel.device):
            say(f"   (the alias lived on {tunnel.device}, so it went with the device and nothing can even bind to it;")
            say("    with alias_device = \"lo\" it stays, and the unreachable route above refuses its packets)")
        results += show_checks("   and the packets:", checks.fail_closed_checks(lab, str(tunnel.alias)))
        results += show_checks("   and the host's own traffic, still untouched:", checks.lan_checks(lab, ("tcp",)))
    say()
    say(f"5. Removed the namespaces and files; `ip netns list` has no {lab.prefix}-* left: "
        f"{'yes' if not _leftover(lab.prefix) else 'NO'}")
    return results + [checks.Check("lab removed", "yes", "no" if _leftover(lab.prefix) else "yes")]


def _leftover(prefix):
    return prefix in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def main():
    reason = missing_reason()
    if reason:
        say(f"make demo: cannot run: {reason}")
        return 2
    say("vpnsplit demo: a real OpenVPN tunnel wired to vpnsplit, in throwaway network namespaces")
    say("(this machine's own network is not touched)")
    say()
    with tempfile.TemporaryDirectory(prefix="vpnsplit-demo-pki-") as pki_dir:
        try:
            results = demo(make_pki(pki_dir))
        except Exception as e:  # a broken lab is a failed demo, explained, not a traceback
            say(f"\nmake demo: FAILED: {e}")
            return 1
    bad = checks.failed(results)
    say()
    if bad:
        say(f"RESULT: {len(bad)} of {len(results)} checks FAILED:")
        for check in bad:
            say("     " + check.line())
        return 1
    say(f"RESULT: all {len(results)} checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
