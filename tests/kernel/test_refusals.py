"""Issue 11 part 4: an alias or source subnet that would cut the host off is refused: exit 2,
one line naming the clash, the full kernel dump unchanged, and the LAN still reaches the host.

    lan (198.51.100.20, 2001:db8:51::20) --eth0-- host (198.51.100.10, 2001:db8:51::10; default
    via 198.51.100.1 / 2001:db8:51::1), tun0 10.8.0.2/24 fd00:8::1000/64 (tunnel provider)
"""

import pytest

from tests.kernel.nslab import NetnsLab

BASE = """
[tunnel.provider]
device   = "tun0"
table    = 100
priority = 1000
"""
LEASE = {"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0", "trusted_ip": "203.0.113.9",
         "ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64"}
SIX = ("tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init")

CLASHES = {
    "alias-uplink": ('alias = "198.51.100.10"', "alias 198.51.100.10 is an address this host holds on eth0"),
    "alias6-uplink": ('alias6 = "2001:db8:51::10"', "alias6 2001:db8:51::10 is an address this host holds on eth0"),
    "alias-gateway": ('alias = "198.51.100.1"', "alias 198.51.100.1 is the gateway 198.51.100.1 of the main table (dev eth0)"),
    "alias6-gateway": ('alias6 = "2001:db8:51::1"', "alias6 2001:db8:51::1 is the gateway 2001:db8:51::1 of the main table"),
    "alias-servers": ('alias = "203.0.113.2"\nservers = ["203.0.113.2"]', "alias 203.0.113.2 is the address of a VPN server"),
    "alias-trusted-ip": ('alias = "203.0.113.9"', "alias 203.0.113.9 is the address of a VPN server"),
    "sources-lan": ('sources = ["198.51.100.0/25"]', "sources entry 198.51.100.0/25 overlaps 198.51.100.0/24, a network connected to this host on eth0"),
    "sources6-lan": ('sources = ["2001:db8:51::/48"]', "sources entry 2001:db8:51::/48 overlaps 2001:db8:51::/64"),
}


@pytest.fixture
def world(ns, tmp_path):
    lan = NetnsLab(tmp_path / "lan")
    try:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", lan.name)
        for side, v4, v6 in ((ns, "198.51.100.10/24", "2001:db8:51::10/64"), (lan, "198.51.100.20/24", "2001:db8:51::20/64")):
            side.exec("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0", check=True)  # the link-local address at once
            side.ip("addr", "add", v4, "dev", "eth0")
            side.ip("-6", "addr", "add", v6, "dev", "eth0", "nodad")
            side.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", "198.51.100.1")
        ns.ip("-6", "route", "add", "default", "via", "2001:db8:51::1")
        ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
        yield ns, lan
    finally:
        lan.close()


def lan_reaches_host(lan):
    return all(lan.exec("ping", f"-{v}", "-c1", "-W2", addr).returncode == 0 for v, addr in ((4, "198.51.100.10"), (6, "2001:db8:51::10")))


@pytest.mark.parametrize("clash", CLASHES, ids=list(CLASHES))
def test_a_clash_is_refused_and_changes_nothing(world, clash):
    ns, lan = world
    line, expect = CLASHES[clash]
    ns.write_config(BASE + line + "\n")
    assert lan_reaches_host(lan)
    before = ns.dump()
    for how, proc in (("openvpn up", lambda: ns.hook("up", *SIX, env=LEASE)), ("vpnsplit up", lambda: ns.vpnsplit("up", "provider"))):
        if clash == "alias-trusted-ip" and how == "vpnsplit up":
            continue  # the server is known from the lease OpenVPN passes
        run = proc()
        assert run.returncode == 2, (how, run.stderr)
        assert expect in run.stderr and run.stderr.count("\n") == 1, (how, run.stderr)
        assert ns.dump() == before, how
    assert lan_reaches_host(lan)


def test_own_addresses_and_own_subnets_are_no_clash(world, tmp_path):
    """The control: an alias of its own, a source subnet on its own device, go up."""
    ns, lan = world
    ns.ip("link", "add", "ctr0", "type", "veth", "peer", "name", "ctr0p")
    ns.ip("addr", "add", "10.20.1.1/24", "dev", "ctr0")
    ns.ip("link", "set", "ctr0", "up")
    ns.write_config(BASE + 'alias = "10.192.8.1"\nalias_device = "lo"\nsources = ["10.20.1.0/24"]\nservers = ["203.0.113.2"]\n')
    for _ in range(2):  # twice: the alias then sits on lo, its own device
        run = ns.hook("up", *SIX, env=LEASE)
        assert run.returncode == 0, run.stderr
    assert "10.192.8.1" in ns.addresses("lo")
    assert lan_reaches_host(lan)
