"""Issue 15: the bridge per VPN with a real wg-quick tunnel (configs/wireguard/wg0.conf). At boot
(`vpnsplit up --all`, no client yet) vpnsplit creates br-wg with its addresses; a container
namespace attached to it by veth is refused at once; once wg-quick is up it reaches the internet
host through the tunnel as the tunnel address, IPv4 and IPv6; after wg-quick down it is refused
again, and the isp link never sees a packet from it. The bridge stays through it all.

Run it alone:  .venv/bin/python -m pytest tests/test_lab_bridge.py -v
"""

import json
import os

import pytest

from tests.lab import checks
from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.lab

WG_ADDR, WG_ADDR6 = "10.9.0.2", "fd09::2"  # Address in configs/wireguard/wg0.conf
CTR, CTR6 = "10.20.4.5", "fd20:4::5"  # on br-wg: 10.20.4.1/24 and fd20:4::1/64, from id = 4 (IPv6: alias6 is set)


def bridge_addresses(lab, bridge):
    out = lab.run("host", ["ip", "-j", "addr", "show", "dev", bridge], check=False).stdout
    return sorted(f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]") for a in link["addr_info"]
                  if a.get("scope") == "global")


def refused(lab):
    """One Check per family: a datagram from the container to the internet host fails."""
    found = []
    for src in (CTR, CTR6):
        seen = lab.whoami(src, checks.plain(src).target, "udp", role="ctr", timeout=1)
        found.append(checks.Check(f"UDP from {src} with the tunnel down", "an error", seen, passed=seen.startswith("error")))
    return found


def test_a_container_on_the_bridge_leaves_through_wg_quick_and_never_by_the_isp(lab):  # noqa: F811
    client, _ = lab.wireguard_pair()
    if not os.path.exists("/proc/sys/net/ipv6/conf/all/force_forwarding"):  # before Linux 6.17: the admin's switch (README)
        lab.sysctl("host", "net.ipv6.conf.all.forwarding", "1")
    lab.write_vpnsplit_config(wg=dict(device=client.ifname, id=4, alias6="fd10:192:9::1", alias_device="lo", bridge=True))
    lab.vpnsplit("up", "--all")  # at boot, before the client
    assert bridge_addresses(lab, "br-wg") == ["10.20.4.1/24", "fd20:4::1/64"], lab.diagnostics()
    lab.attach_container("br-wg", CTR, CTR6, "10.20.4.1", "fd20:4::1")
    checks.start_listeners(lab)
    counter = lab.isp_counter([CTR, CTR6])
    found = refused(lab)
    client.up()
    found += [*checks.seen_from(lab, CTR, WG_ADDR, role="ctr"), *checks.seen_from(lab, CTR6, WG_ADDR6, role="ctr")]
    client.down()
    found += refused(lab)
    found.append(checks.Check("br-wg after wg-quick down", "['10.20.4.1/24', 'fd20:4::1/64']", str(bridge_addresses(lab, "br-wg"))))
    counts = counter.counts()
    found += [checks.Check(f"packets from {src} on the isp link", "0", str(counts[src])) for src in (CTR, CTR6)]
    checks.assert_ok(found, lab)
