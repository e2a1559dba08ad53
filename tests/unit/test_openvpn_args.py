"""OpenVPN's positional arguments and environment, as seen with OpenVPN 2.6 (reference notes)."""

import ipaddress

import pytest

from vpnsplit import openvpn
from vpnsplit.errors import InputError


def parse(argv, **env):
    return openvpn.parse(argv, env)


def test_topology_subnet():
    call = parse(["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], dev="tun0", ifconfig_local="10.8.0.2", ifconfig_netmask="255.255.255.0")
    assert call.device == "tun0"
    assert call.lease.local4 == ipaddress.ip_interface("10.8.0.2/24")
    assert call.lease.dev_type == "tun" and call.lease.gateway4 is None


def test_net30_and_p2p_give_a_host_address():
    call = parse(["tun0", "1500", "0", "10.8.0.6", "10.8.0.5", "init"], dev="tun0", ifconfig_remote="10.8.0.5")
    assert call.lease.local4 == ipaddress.ip_interface("10.8.0.6/32")


def test_without_environment_a_netmask_is_told_from_a_peer():
    assert parse(["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"]).lease.local4.network.prefixlen == 24
    assert parse(["tun0", "1500", "0", "10.8.0.6", "10.8.0.5", "restart"]).lease.local4.network.prefixlen == 32


def test_tap_takes_route_vpn_gateway():
    call = parse(["tap0", "1500", "0", "10.9.0.2", "255.255.255.0", "init"], dev="tap0", dev_type="tap", route_vpn_gateway="10.9.0.1")
    assert call.lease.dev_type == "tap" and str(call.lease.gateway4) == "10.9.0.1"


def test_ipv6_comes_from_the_environment_only():
    call = parse(["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], dev="tun0",
                 ifconfig_ipv6_local="fd00:8::1000", ifconfig_ipv6_netbits="64", ifconfig_ipv6_remote="fd00:8::1")
    assert call.lease.local6 == ipaddress.ip_interface("fd00:8::1000/64")
    assert call.lease.gateway6 is None  # tun: routes go through the device, no gateway


def test_ipv6_only_tunnel():
    call = parse(["tun0", "1500", "0", "", "", "init"], dev="tun0", ifconfig_ipv6_local="fd00:8::2", ifconfig_ipv6_netbits="64")
    assert call.lease.local4 is None and call.lease.local6 is not None


def test_extra_words_come_first():
    call = parse(["--tunnel", "provider", "--config=/etc/x.toml", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "restart"], dev="tun0")
    assert (call.tunnel, call.config) == ("provider", "/etc/x.toml")


def test_down_root_plugin_passes_only_its_words():
    call = openvpn.parse(["--tunnel", "provider"], {"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"}, want_lease=False)
    assert call.device == "tun0" and call.tunnel == "provider" and call.lease is None


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["tun0", "1500", "0", "", "", "init"], {}, "no tunnel address"),
        (["tun0", "1500", "0", "10.8.0.300", "255.255.255.0", "init"], {}, "'10.8.0.300'"),
        (["tun0", "1500", "0", "10.8.0.0", "255.255.255.0", "init"], {}, "network address"),
        (["tun0", "1500", "0", "10.8.0.255", "255.255.255.0", "init"], {}, "broadcast address"),
        (["tun0", "1500", "0", "224.0.0.1", "255.255.255.0", "init"], {}, "multicast"),
        (["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"dev": "tun1"}, "disagrees"),
        (["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"ifconfig_ipv6_local": "fe80::1%tun0"}, "fe80::1%tun0"),
        (["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"ifconfig_ipv6_local": "fd00::2", "ifconfig_ipv6_netbits": "129"}, "'129'"),
        (["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"dev_type": "null"}, "'null'"),
        (["a" * 16, "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {}, "a" * 16),
        ([], {}, "no device"),
    ],
)
def test_bad_calls_name_the_value(argv, env, named):
    with pytest.raises(InputError, match=None) as e:
        openvpn.parse(argv, env)
    assert named in str(e.value)


@pytest.mark.parametrize("index,bad,name", [(1, "-1", "tun_mtu"), (1, "", "tun_mtu"), (1, "1500x", "tun_mtu"), (2, "-5", "link_mtu"),
                                            (3, "10.8.0", "local"), (4, "255.255.255", "remote"), (4, "fd00::1", "remote")])
def test_all_six_positional_arguments_are_checked(index, bad, name):
    argv = ["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"]
    argv[index] = bad
    assert openvpn.six_problems(argv) == [openvpn.six_problems(argv)[0]] and f"argument {name} {bad!r}" in openvpn.six_problems(argv)[0]
    with pytest.raises(InputError, match=name):
        parse(argv, dev="tun0", ifconfig_local="10.8.0.2", ifconfig_netmask="255.255.255.0")
    openvpn.parse(argv, {"dev": "tun0"}, want_lease=False)  # down: the caller logs them, the teardown goes on


def test_empty_local_and_remote_are_valid():
    argv = ["tun0", "1500", "0", "", "", "init"]
    assert openvpn.six_problems(argv) == []
    call = parse(argv, dev="tun0", ifconfig_ipv6_local="fd00:8::1000", ifconfig_ipv6_netbits="64")
    assert call.lease.local4 is None and str(call.lease.local6) == "fd00:8::1000/64"
