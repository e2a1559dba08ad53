"""Where a tunnel's resolvers come from: the config key, OpenVPN's environment (dhcp-option and
2.6's --dns variables), wg-quick's DNS line; pushed values are hostile input."""

import ipaddress

import pytest

from vpnsplit import config, dns, openvpn
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease

A = ipaddress.ip_address
SIX = ["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"]
BASE = {"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"}


def pushed(**env):
    return openvpn.parse(SIX, {**BASE, **env}).lease.dns


def test_dhcp_option_dns_in_foreign_option_order():
    got = pushed(foreign_option_2="dhcp-option DNS 10.8.0.53", foreign_option_1="dhcp-option DOMAIN example.net",
                 foreign_option_10="dhcp-option DNS6 fd00:8::53", foreign_option_3="dhcp-option DNS 10.8.0.54")
    assert got == (A("10.8.0.53"), A("10.8.0.54"), A("fd00:8::53"))


def test_no_push_no_resolvers():
    assert pushed() == () and pushed(foreign_option_1="dhcp-option DOMAIN example.net") == ()


def test_dns_variables_override_dhcp_option_and_sort_by_server_id():
    got = pushed(foreign_option_1="dhcp-option DNS 10.8.0.53",
                 dns_server_1_address_1="10.8.0.2", dns_server_0_address_2="fd00:8::1", dns_server_0_address_1="10.8.0.1",
                 dns_server_0_resolve_domain_1="example.net", dns_search_domain_1="example.net")
    assert got == (A("10.8.0.1"), A("fd00:8::1"), A("10.8.0.2"))


def test_dns_servers_that_are_not_plain_port_53_are_left_out(caplog):
    got = pushed(dns_server_0_address_1="10.8.0.1", dns_server_0_transport="DoT",
                 dns_server_1_address_1="10.8.0.2", dns_server_1_port_1="5353", dns_server_2_address_1="10.8.0.3")
    assert got == (A("10.8.0.3"),)
    assert "not plain DNS on port 53" in caplog.text


def test_duplicates_collapse():
    assert pushed(foreign_option_1="dhcp-option DNS 10.8.0.53", foreign_option_2="dhcp-option DNS 10.8.0.53") == (A("10.8.0.53"),)


@pytest.mark.parametrize("env, named", [
    ({"foreign_option_1": "dhcp-option DNS 10.8.0.53;reboot"}, "foreign_option_1"),
    ({"foreign_option_1": "dhcp-option DNS 10.8.0.53 10.8.0.54"}, "foreign_option_1"),
    ({"foreign_option_1": "dhcp-option DNS"}, "foreign_option_1"),
    ({"foreign_option_1": "dhcp-option DNS6 10.8.0.53"}, "foreign_option_1"),
    ({"foreign_option_1": "dhcp-option DNS 127.0.0.1"}, "loopback"),
    ({"foreign_option_1": "dhcp-option DNS fe80::1%eth0"}, "zone id"),
    ({"foreign_option_1": "dhcp-option DNS 224.0.0.1"}, "multicast"),
    ({"foreign_option_1": "dhcp-option DNS 10.8.0.53\nnameserver 1.2.3.4"}, "printable"),
    ({"dns_server_0_address_1": "10.8.0.1:53"}, "dns_server_0_address_1"),
    ({"dns_server_0_address_1": "10.8.0.1", "dns_server_0_port_1": "0"}, "port"),
    ({"dns_server_0_address_1": "10.8.0.1", "dns_server_0_transport": "carrier-pigeon"}, "transport"),
])
def test_hostile_pushes_are_refused_with_one_line(env, named):
    with pytest.raises(InputError) as e:
        pushed(**env)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_too_many_resolvers_refused():
    env = {f"foreign_option_{n}": f"dhcp-option DNS 10.8.0.{n}" for n in range(1, 40)}
    with pytest.raises(InputError, match="at most"):
        pushed(**env)


def test_config_key():
    cfg = config.parse({"tunnel": {"p": {"device": "tun0", "id": 1, "dns": ["10.8.0.1", "fd00:8::1"]}}})
    assert cfg.tunnels["p"].dns == (A("10.8.0.1"), A("fd00:8::1"))
    for bad in ("10.8.0.1", ["10.8.0.1/24"], ["::1"], [5]):
        with pytest.raises(InputError, match="dns"):
            config.parse({"tunnel": {"p": {"device": "tun0", "id": 1, "dns": bad}}})


def test_wg_config_dns_line(tmp_path):
    conf = tmp_path / "wg0.conf"
    conf.write_text("[Interface]\nAddress = 10.9.0.2/24\nDNS = 10.9.0.1, fd09::1 , example.net # the VPN's\n"
                    "[Peer]\nDNS = 10.1.1.1\n")
    assert dns.from_wg_config(str(conf)) == (A("10.9.0.1"), A("fd09::1"))
    assert dns.from_wg_config(str(tmp_path / "absent.conf")) == ()
    with pytest.raises(InputError, match="does not exist"):
        dns.from_wg_config(str(tmp_path / "absent.conf"), required=True)
    conf.write_text("[Interface]\nDNS = 10.9.0.999\n")
    with pytest.raises(InputError, match="line 2"):
        dns.from_wg_config(str(conf))


def test_the_lease_wins_over_the_key_and_round_trips():
    tunnel = config.parse({"tunnel": {"p": {"device": "tun0", "id": 1, "dns": ["10.8.0.1"]}}}).tunnels["p"]
    lease = Lease("tun0", local4=ipaddress.ip_interface("10.8.0.2/24"))
    assert dns.resolvers(tunnel, lease) == (A("10.8.0.1"),) and dns.resolvers(tunnel, None) == (A("10.8.0.1"),)
    pushed_lease = lease._replace(dns=(A("10.8.0.53"),))
    assert dns.resolvers(tunnel, pushed_lease) == (A("10.8.0.53"),)
    assert Lease.from_json(pushed_lease.to_json(), "test") == pushed_lease
    old = pushed_lease.to_json()
    del old["dns"]  # a record written before DNS was recorded
    assert Lease.from_json(old, "test").dns == ()
