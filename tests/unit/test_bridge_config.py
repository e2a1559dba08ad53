"""Issue 15: the `bridge` and `bridge_address` keys of a tunnel section (bridge.parse via config.parse)."""

import ipaddress
import re

import pytest

from vpnsplit import config
from vpnsplit.errors import InputError


def tunnel(name="provider", **keys):
    return config.parse({"tunnel": {name: {"device": "tun0", **keys}}}).tunnels[name]


def test_bridge_true_is_br_name_with_the_seeds_address_and_its_subnet_among_the_sources():
    t = tunnel(id=3, bridge=True, sources=["10.30.0.0/24"])
    assert (t.bridge, t.bridge_addresses) == ("br-provider", (ipaddress.ip_interface("10.20.3.1/24"),))
    assert t.sources == (ipaddress.ip_network("10.30.0.0/24"), ipaddress.ip_network("10.20.3.0/24"))


def test_ipv6_by_default_when_the_section_says_the_tunnel_carries_it():
    for six in ({"alias6": "fd10::1"}, {"gateway6": "fd08::1"}):
        t = tunnel(id=12, bridge=True, **six)
        assert [str(i) for i in t.bridge_addresses] == ["10.20.12.1/24", "fd20:12::1/64"]
        assert [str(n) for n in t.sources] == ["10.20.12.0/24", "fd20:12::/64"]


def test_explicit_name_and_addresses_need_no_id_and_a_listed_subnet_is_not_doubled():
    t = tunnel(table=5, priority=100, bridge="br0", bridge_address=["10.9.0.1/16", "fd09::1/64"], sources=["10.9.0.0/16"])
    assert t.bridge == "br0" and [str(n) for n in t.sources] == ["10.9.0.0/16", "fd09::/64"]
    assert tunnel(id=1, bridge="br0", bridge_address="10.9.0.1/24").bridge_addresses == (ipaddress.ip_interface("10.9.0.1/24"),)


@pytest.mark.parametrize("name, keys, says", [
    ("provider-long", {"id": 3, "bridge": True}, "bridge 'br-provider-long' is 16 characters; an interface name has at most 15"),
    ("p", {"id": 3, "bridge": "br-a-very-long-one"}, "bridge 'br-a-very-long-one' is 18 characters"),
    ("p", {"id": 3, "bridge": "br/x"}, "'br/x' is not a valid interface name"),
    ("p", {"table": 5, "priority": 100, "bridge": True}, "bridge = true needs id = N"),
    ("p", {"table": 5, "priority": 100, "bridge": "br0"}, "bridge without id needs bridge_address"),
    ("p", {"id": 3, "bridge": "tun0"}, "is the tunnel's own device"),
    ("p", {"id": 3, "bridge": 1}, "bridge = 1 must be true or a device name"),
    ("p", {"id": 3, "bridge_address": "10.9.0.1/24"}, "needs a bridge"),
    ("p", {"id": 3, "bridge": True, "bridge_address": "10.9.0.0/24"}, "10.9.0.0 is the network address"),
    ("p", {"id": 3, "bridge": True, "bridge_address": "10.9.0.1"}, "must be an address with its prefix length"),
    ("p", {"id": 3, "bridge": True, "bridge_address": "10.9.0.1/33"}, "must be an address with its prefix length"),
    ("p", {"id": 3, "bridge": True, "bridge_address": "10.9.0.1/31"}, "leaves no room for containers"),
    ("p", {"id": 3, "bridge": True, "bridge_address": "127.0.0.1/8"}, "loopback"),
    ("p", {"id": 3, "bridge": True, "bridge_address": ["10.9.0.1/24", "10.8.0.1/24"]}, "two IPv4 addresses"),
    ("p", {"id": 3, "bridge": True, "bridge_address": []}, "or a list of one per IP version"),
])
def test_bad_bridges_are_refused_naming_the_value(name, keys, says):
    with pytest.raises(InputError, match="^config .*" + re.escape(says)) as e:
        tunnel(name, **keys)
    assert "\n" not in str(e.value)


def test_two_tunnels_never_share_a_bridge_or_its_name_with_a_device_or_its_subnet():
    a = {"device": "tun0", "id": 1, "bridge": "br0"}
    for b, says in (({"device": "tun1", "id": 2, "bridge": "br0"}, "device br0 is already used by"),
                    ({"device": "br0", "id": 2}, "device br0 is already used by"),
                    ({"device": "tun1", "id": 2, "bridge": True, "bridge_address": "10.20.1.9/24"},
                     "source subnet 10.20.1.0/24 is already used by")):
        with pytest.raises(InputError, match=says):
            config.parse({"tunnel": {"a": a, "b": b}})
