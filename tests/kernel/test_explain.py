"""Issue 10 part 2: `explain` tells the truth. The table is the kernel's answer
(RTM_F_LOOKUP_TABLE); the rule is the kernel's walk replayed over every selector and shown
only when it leads to that table; a forwarded source is asked with its ingress device.

    host: eth0 198.51.100.10/24 (default via 198.51.100.1), tun0 10.8.0.2/24 ("provider"),
          ctr0 10.20.1.1/24 (a bridge of containers, provider's `sources`)
"""

import json

import pytest

from tests.kernel.nslab import PROVIDER

CONFIG = PROVIDER + 'sources = ["10.20.1.0/24"]\nservers = ["203.0.113.2"]\n'


@pytest.fixture
def host(ns):
    for dev, addr in (("eth0", "198.51.100.10/24"), ("ctr0", "10.20.1.1/24")):
        ns.ip("link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
        ns.ip("addr", "add", addr, "dev", dev)
        ns.ip("link", "set", dev, "up")
        ns.ip("link", "set", f"{dev}p", "up")
    ns.ip("route", "add", "default", "via", "198.51.100.1")
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.write_config(CONFIG)
    assert ns.vpnsplit("up", "provider").returncode == 0
    return ns


def explain(ns, *args):
    proc = ns.vpnsplit("explain", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_explain_reports_the_table_the_kernel_used(host):
    """IPv4 too: the query asks for the table (without RTM_F_LOOKUP_TABLE the kernel says 254)."""
    for alias in ("10.192.8.1", "fd10:192::1"):
        r = explain(host, alias)
        assert (r["table"], r["tunnel"], r["device"], r["rule"]["priority"]) == (100, "provider", "tun0", 1001), r
    assert explain(host, "198.51.100.10")["table"] == 254
    assert explain(host, "198.51.100.10", "198.51.100.10")["table"] == 255


def test_explain_replays_suppress_prefixlength(host):
    """With the default VPN on, the host's packet to its LAN is decided by 32000 (lookup main
    suppress_prefixlength 0: the LAN route is not a default), not by a later rule."""
    assert host.vpnsplit("default", "provider").returncode == 0
    lan = explain(host, "198.51.100.10", "198.51.100.20")
    assert (lan["rule"]["priority"], lan["table"], lan["device"]) == (32000, 254, "eth0"), lan
    assert "suppress_prefixlength 0" in lan["rule"]["text"]
    internet = explain(host, "198.51.100.10")
    assert (internet["rule"]["priority"], internet["table"]) == (32001, 254), internet


def test_explain_names_a_foreign_rule_in_front(host):
    """A wg-quick rule (`not fwmark 0xca6c lookup 51820`) ahead of vpnsplit's captures the alias:
    explain names that rule and its table, not vpnsplit's rule."""
    host.add_tun("wg0", "10.66.0.2/32")
    host.ip("route", "add", "default", "dev", "wg0", "table", "51820")
    host.ip("rule", "add", "not", "fwmark", "0xca6c", "lookup", "51820", "priority", "999")
    r = explain(host, "10.192.8.1")
    assert (r["table"], r["device"], r["tunnel"], r["rule"]["priority"], r["rule"]["vpnsplit"]) == (
        51820,
        "wg0",
        None,
        999,
        False,
    ), r
    assert r["rule"]["text"] == "999: not from all fwmark 0xca6c lookup 51820"


def test_explain_asks_with_the_ingress_device_and_blames_forwarding(host):
    """A container's packet is asked as arriving on ctr0. With the tunnel up and forwarding off on
    ctr0 the kernel refuses it: explain says forwarding is off there, and does not claim the tunnel is down."""
    up = explain(host, "10.20.1.5")
    assert (up["origin"], up["device"], up["rule"]["priority"]) == ("forwarded in via ctr0", "tun0", 1003)
    host.exec("sysctl", "-qw", "net.ipv4.conf.ctr0.forwarding=0", check=True)
    off = explain(host, "10.20.1.5")
    assert off["strict_drop"] is False, off
    assert (off["verdict"], off["forwarding"], off["strict_drop"], off["rule"], off["rule_status"]) == (
        "unreachable",
        False,
        False,
        None,
        "unknown",
    ), off
    human = host.vpnsplit("explain", "10.20.1.5").stdout
    assert "forwarding: off on ctr0" in human and "rule:   unknown" in human and "strict:" not in human, human
    # the tunnel really down: the kernel refuses at the unreachable route, and the rule is shown again
    assert host.vpnsplit("down", "provider").returncode == 0
    host.exec("sysctl", "-qw", "net.ipv4.conf.ctr0.forwarding=1", check=True)
    down = explain(host, "10.20.1.5")
    assert (down["verdict"], down["strict_drop"], down["tunnel"], down["rule"]["priority"]) == (
        "unreachable",
        True,
        "provider",
        1003,
    ), down


def test_explain_mixed_families_is_bad_input(host):
    proc = host.vpnsplit("explain", "10.192.8.1", "fe80::1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "IPv4" in proc.stderr and "IPv6" in proc.stderr, proc.stderr


def test_explain_refusals_blackhole_and_a_source_it_cannot_send_from(host):
    """A refusal names no table: the rule is shown only when the replayed walk refuses the same way."""
    stranger = explain(host, "192.0.2.77")  # on no device and no connected network: the kernel refuses it
    assert stranger["verdict"] != "blackhole" and stranger["rule_status"] == "unknown", stranger
    host.ip("rule", "add", "from", "10.192.8.1", "blackhole", "priority", "900")
    hole = explain(host, "10.192.8.1")
    assert (hole["verdict"], hole["rule"]["priority"], hole["rule"]["text"]) == ("blackhole", 900, "900: from 10.192.8.1/32 blackhole")
