"""The guard: the alias and the tunnel address answer only through the tunnel, never from the LAN."""

import pytest

from tests.kernel.nslab import NetnsLab

CONFIG = '[tunnel.p]\ndevice = "tun0"\ntable = 100\npriority = 1000\nalias = "10.192.8.1"\nalias_device = "lo"\n'


@pytest.fixture
def lan(ns, tmp_path):
    """A LAN neighbour on a veth pair, with routes to the host's alias and tunnel address."""
    other = NetnsLab(tmp_path / "lan")
    try:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", other.name)
        ns.ip("addr", "add", "198.51.100.10/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        other.ip("addr", "add", "198.51.100.20/24", "dev", "eth0")
        other.ip("link", "set", "eth0", "up")
        for dst in ("10.192.8.1", "10.8.0.2"):
            other.ip("route", "add", dst, "via", "198.51.100.10")
        yield other
    finally:
        other.close()


def pings(ns, dst):
    return ns.exec("ping", "-c", "1", "-W", "1", dst).returncode == 0


def delivered(ns, lan, dst):
    """Does a UDP datagram sent from the LAN to *dst* reach a socket bound to it on the host?"""
    listener = ns.listen(dst, 5000, timeout=2)
    try:
        for _ in range(5):
            lan.send(dst, 5000)
        return listener.communicate(timeout=10)[0].strip().endswith("hello")
    finally:
        listener.kill()


def test_alias_and_tunnel_address_unreachable_from_the_lan(ns, lan):
    ns.write_config(CONFIG)
    ns.add_tun("tun0", "10.8.0.2/24")
    assert ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0").returncode == 0
    assert pings(lan, "198.51.100.10")  # control: the LAN reaches the host itself
    assert not delivered(ns, lan, "10.192.8.1")
    assert not delivered(ns, lan, "10.8.0.2")
    assert pings(ns, "10.192.8.1")  # the host itself still reaches its alias
    # without vpnsplit's table the same datagrams arrive: the guard is what stops them
    ns.exec("nft", "delete", "table", "inet", "vpnsplit", check=True)
    assert delivered(ns, lan, "10.192.8.1")
    assert delivered(ns, lan, "10.8.0.2")


def test_alias_stays_guarded_while_the_tunnel_is_down(ns, lan):
    ns.write_config(CONFIG)
    ns.add_tun("tun0", "10.8.0.2/24")
    assert ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0").returncode == 0
    assert ns.openvpn("down", "tun0", "10.8.0.2", "255.255.255.0").returncode == 0
    assert "10.192.8.1" in ns.addresses("lo")
    assert not delivered(ns, lan, "10.192.8.1")
