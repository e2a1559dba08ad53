"""Issue 2's kernel-level contract: what the hooks leave in a real kernel, run as the VPN clients run them."""

import json
import sys

import pytest

from tests.kernel.nslab import PROTO, PROVIDER, REPO, WORK

V4, V6 = 4, 6
UNICAST, UNREACHABLE = 1, 7
METRIC, FAIL_METRIC = 1024, 0xFF000000

TWO_TUNNELS = PROVIDER + WORK + "strict       = false\n"


@pytest.fixture
def two(ns):
    ns.write_config(TWO_TUNNELS)
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.add_tun("tun1", "10.9.0.6", peer="10.9.0.5")
    return ns


def up0(ns, local="10.8.0.2", context="init", v6="fd00:8::1000"):
    env = {"ifconfig_ipv6_local": v6, "ifconfig_ipv6_netbits": "64"} if v6 else {}
    return ns.openvpn("up", "tun0", local, "255.255.255.0", context, env=env)


def up1(ns, local="10.9.0.6", context="init"):
    return ns.openvpn("up", "tun1", local, "10.9.0.5", context)


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def provider_up_state(local="10.8.0.2", local6="fd00:8::1000"):
    rules = [(1000, f"{local}/32", 100, PROTO), (1000, f"{local6}/128", 100, PROTO),
             (1001, "10.192.8.1/32", 100, PROTO), (1001, "fd10:192::1/128", 100, PROTO)]
    table = [(V4, UNICAST, "default", "tun0", None, METRIC, PROTO), (V4, UNREACHABLE, "default", None, None, FAIL_METRIC, PROTO),
             (V6, UNICAST, "default", "tun0", None, METRIC, PROTO), (V6, UNREACHABLE, "default", None, None, FAIL_METRIC, PROTO)]
    return sorted(rules), sorted(table, key=repr)


def test_up_applies_table_rules_alias_and_snat(two):
    ok(up0(two))
    rules, table = provider_up_state()
    assert two.rules(100) == rules
    assert two.table(100) == table
    assert {"10.192.8.1", "fd10:192::1"} <= set(two.addresses("tun0"))
    assert two.snat() == {("10.192.8.1", "tun0"): "10.8.0.2", ("fd10:192::1", "tun0"): "fd00:8::1000"}
    assert two.guards() == {("10.192.8.1", "tun0"), ("fd10:192::1", "tun0"), ("10.8.0.2", "tun0"), ("fd00:8::1000", "tun0")}
    state = json.loads((two.state_dir / "provider.json").read_text())
    assert state["lease"]["local4"] == "10.8.0.2/24" and state["lease"]["device"] == "tun0"
    assert (two.state_dir / "provider.addr").read_text() == "10.8.0.2\n"


def test_up_twice_is_idempotent(two):
    ok(up0(two))
    first = two.dump()
    second_run = ok(up0(two))
    assert two.dump() == first
    assert "already in place" in second_run.stderr


def test_restart_with_new_address_replaces_rule_and_snat(two):
    ok(up0(two))
    two.ip("addr", "del", "10.8.0.2/24", "dev", "tun0")
    two.ip("addr", "add", "10.8.0.7/24", "dev", "tun0")
    two.ip("addr", "del", "fd00:8::1000/64", "dev", "tun0")
    two.ip("addr", "add", "fd00:8::1007/64", "dev", "tun0", "nodad")
    ok(up0(two, "10.8.0.7", "restart", v6="fd00:8::1007"))
    rules, table = provider_up_state("10.8.0.7", "fd00:8::1007")
    assert two.rules(100) == rules
    assert two.table(100) == table
    assert two.snat() == {("10.192.8.1", "tun0"): "10.8.0.7", ("fd10:192::1", "tun0"): "fd00:8::1007"}
    dump = json.dumps(two.dump())
    assert '"10.8.0.2"' not in dump and '"fd00:8::1000"' not in dump


def _plant_foreign(ns):
    """Objects of other tools, some at vpnsplit's own priority: they must survive everything."""
    ns.ip("rule", "add", "from", "192.0.2.9", "lookup", "200", "priority", "1000")
    ns.ip("rule", "add", "from", "10.192.8.1", "lookup", "200", "priority", "1001")
    ns.ip("rule", "add", "fwmark", "51820", "lookup", "51820", "priority", "32764")
    ns.ip("route", "add", "unreachable", "192.0.2.0/24", "table", "200")
    ns.nft("table ip wg-quick-wg0 {\n chain preraw {\n type filter hook prerouting priority -300;\n }\n}\n"
           "table inet filter {\n chain input {\n type filter hook input priority 0;\n counter\n }\n}\n")


def _foreign(dump):
    """The part of a dump that is not vpnsplit's."""
    return {
        "rules": [r for r in dump["rules"] if r.get("FRA_PROTOCOL") != PROTO],
        # (the kernel's own routes for the tunnels' addresses change with them: not compared)
        "routes": [r for r in dump["routes"] if r["proto"] != PROTO and r["dev"] not in ("tun0", "tun1")],
        "nft": [i for i in dump["nft"] if "vpnsplit" not in json.dumps(i)],
    }


def test_down_removes_what_up_added_and_keeps_strict_skeleton(two):
    before = two.dump()
    ok(up0(two))
    ok(two.openvpn("down", "tun0", "10.8.0.2", "255.255.255.0"))
    after = two.dump()
    # strict: the aliases keep their rule into the table, which keeps only the unreachable defaults
    assert two.rules(100) == [(1001, "10.192.8.1/32", 100, PROTO), (1001, "fd10:192::1/128", 100, PROTO)]
    assert two.table(100) == [(V4, UNREACHABLE, "default", None, None, FAIL_METRIC, PROTO),
                              (V6, UNREACHABLE, "default", None, None, FAIL_METRIC, PROTO)]
    assert two.snat() == {}
    assert two.guards() == {("10.192.8.1", "tun0"), ("fd10:192::1", "tun0")}  # the alias stays unreachable from the LAN
    assert set(two.addresses("tun0")) == {"10.8.0.2", "fd00:8::1000"} | {a for a in two.addresses("tun0") if a.startswith("fe80")}
    # the record stays without a lease: it says what of vpnsplit's is still applied (ownership by record)
    assert json.loads((two.state_dir / "provider.json").read_text())["lease"] is None
    assert not (two.state_dir / "provider.addr").exists()
    assert _foreign(after) == _foreign(before)


def test_down_without_strict_restores_the_kernel_exactly(two):
    before = two.dump()
    ok(up1(two))
    assert two.addresses("lo") == ["10.192.9.1", "127.0.0.1", "::1"]
    ok(two.openvpn("down", "tun1", "10.9.0.6", "10.9.0.5"))
    assert two.dump() == before


def test_down_after_device_is_gone(two):
    ok(up0(two))
    two.ip("link", "del", "tun0")
    proc = ok(two.openvpn("down", "tun0", "10.8.0.2", "255.255.255.0"))
    assert "Traceback" not in proc.stderr
    assert two.rules(100) == [(1001, "10.192.8.1/32", 100, PROTO), (1001, "fd10:192::1/128", 100, PROTO)]
    assert [r[1] for r in two.table(100)] == [UNREACHABLE, UNREACHABLE]
    assert two.snat() == {}


def test_foreign_rules_routes_and_nft_tables_survive_up_restart_down(two):
    _plant_foreign(two)
    before = _foreign(two.dump())
    ok(up0(two))
    ok(up1(two))
    two.ip("addr", "add", "10.8.0.9/24", "dev", "tun0")
    ok(up0(two, "10.8.0.9", "restart"))
    ok(two.openvpn("down", "tun0", "10.8.0.9", "255.255.255.0"))
    ok(two.openvpn("down", "tun1", "10.9.0.6", "10.9.0.5"))
    assert _foreign(two.dump()) == before


def test_two_tunnels_do_not_disturb_each_other(two):
    ok(up0(two))
    provider = (two.rules(100), two.table(100))
    ok(up1(two))
    work = (two.rules(101), two.table(101))
    assert work == ([(1100, "10.9.0.6/32", 101, PROTO), (1101, "10.192.9.1/32", 101, PROTO)],
                    [(V4, UNICAST, "default", "tun1", None, METRIC, PROTO)])
    assert (two.rules(100), two.table(100)) == provider
    # restart and down of one leave the other exactly as it was
    two.ip("addr", "add", "10.9.0.10", "peer", "10.9.0.5", "dev", "tun1")
    ok(up1(two, "10.9.0.10", "restart"))
    assert (two.rules(100), two.table(100)) == provider
    ok(two.openvpn("down", "tun1", "10.9.0.10", "10.9.0.5"))
    assert (two.rules(100), two.table(100)) == provider
    assert two.snat() == {("10.192.8.1", "tun0"): "10.8.0.2", ("fd10:192::1", "tun0"): "fd00:8::1000"}
    ok(up1(two))
    ok(two.openvpn("down", "tun0", "10.8.0.2", "255.255.255.0"))
    assert (two.rules(101), two.table(101)) == work
    assert two.snat() == {("10.192.9.1", "tun1"): "10.9.0.6"}


def test_vpnsplit_up_by_hand_repairs_from_recorded_state(two):
    ok(up0(two))
    good = two.dump()
    two.ip("rule", "del", "from", "10.8.0.2", "lookup", "100", "priority", "1000")
    two.ip("route", "flush", "table", "100")
    two.exec("nft", "delete", "table", "inet", "vpnsplit", check=True)
    check = two.vpnsplit("check")
    assert check.returncode == 3, check.stderr
    assert "missing: rule from 10.8.0.2/32" in check.stderr
    ok(two.vpnsplit("up", "provider"))
    assert two.dump() == good
    assert ok(two.vpnsplit("check")).returncode == 0


def test_status_json_shows_wanted_and_present(two):
    ok(up0(two))
    two.ip("addr", "del", "10.192.8.1/32", "dev", "tun0")
    report = json.loads(ok(two.vpnsplit("status", "--json")).stdout)
    provider = {t["tunnel"]: t for t in report["tunnels"]}["provider"]
    assert provider["state"] == "up" and provider["lease"]["local4"] == "10.8.0.2/24"
    present = {o["object"]: o["present"] for o in provider["objects"]}
    assert present["address 10.192.8.1/32 on tun0"] is False
    assert present["rule from 10.8.0.2/32 lookup 100 priority 1000"] is True
    assert present["snat 10.192.8.1 -> 10.8.0.2 out tun0"] is True
    assert provider["in_sync"] is False
    human = ok(two.vpnsplit("status", "provider")).stdout
    assert "MISSING  address 10.192.8.1/32 on tun0" in human


def test_vpnsplit_up_by_hand_follows_an_address_changed_underneath(two):
    ok(up0(two))
    two.ip("addr", "del", "10.8.0.2/24", "dev", "tun0")
    two.ip("addr", "add", "10.8.0.3/24", "dev", "tun0")
    ok(two.vpnsplit("up", "provider"))
    assert (1000, "10.8.0.3/32", 100, PROTO) in two.rules(100)
    assert (1000, "10.8.0.2/32", 100, PROTO) not in two.rules(100)
    assert two.snat()[("10.192.8.1", "tun0")] == "10.8.0.3"


def test_wg_hooks_read_addresses_from_the_interface(ns):
    ns.write_config('[tunnel.wg]\ndevice = "wg0"\ntable = 300\npriority = 3000\nalias = "10.192.10.1"\nalias_device = "lo"\n')
    ns.add_tun("wg0", "10.66.0.2/32", "fd66::2/128")
    ok(ns.hook("wg-up", "wg0"))
    assert ns.rules(300) == sorted([(3000, "10.66.0.2/32", 300, PROTO), (3000, "fd66::2/128", 300, PROTO), (3001, "10.192.10.1/32", 300, PROTO)])
    assert ns.snat() == {("10.192.10.1", "wg0"): "10.66.0.2"}
    assert "10.192.10.1" in ns.addresses("lo")
    ok(ns.hook("wg-down", "wg0"))
    assert ns.rules(300) == [(3001, "10.192.10.1/32", 300, PROTO)]  # strict: alias still steered into the dead table
    assert "10.192.10.1" in ns.addresses("lo")  # services stay bound
    assert ns.snat() == {}


def test_net30_and_tap(ns):
    ns.write_config(
        '[tunnel.p2p]\ndevice = "tun5"\ntable = 105\npriority = 1500\nalias = "10.192.5.1"\n'
        '[tunnel.eth]\ndevice = "tap0"\ntable = 106\npriority = 1600\ngateway = "10.10.0.1"\n'
    )
    ns.add_tun("tun5", "10.8.0.6", peer="10.8.0.5")
    ns.add_tun("tap0", "10.10.0.2/24", mode="tap")
    ok(ns.openvpn("up", "tun5", "10.8.0.6", "10.8.0.5"))
    assert (1500, "10.8.0.6/32", 105, PROTO) in ns.rules(105)
    assert (V4, UNICAST, "default", "tun5", None, METRIC, PROTO) in ns.table(105)
    # tap: route_vpn_gateway wins over the config's gateway
    ok(ns.openvpn("up", "tap0", "10.10.0.2", "255.255.255.0", env={"route_vpn_gateway": "10.10.0.254"}))
    assert (V4, UNICAST, "default", "tap0", "10.10.0.254", METRIC, PROTO) in ns.table(106)
    assert (V4, UNICAST, "10.10.0.0/24", "tap0", None, METRIC, PROTO) in ns.table(106)
    ok(ns.openvpn("up", "tap0", "10.10.0.2", "255.255.255.0", context="restart"))  # route-nopull: config gateway
    assert (V4, UNICAST, "default", "tap0", "10.10.0.1", METRIC, PROTO) in ns.table(106)
    assert not any(r[4] == "10.10.0.254" for r in ns.table(106))


def test_down_root_plugin_call_uses_the_environment(two):
    ok(up0(two))
    # openvpn-plugin-down-root passes only the plugin's words; the env is the up-time snapshot
    proc = ok(two.hook("down", env={"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0", "script_context": "init"}))
    assert "tunnel provider down" in proc.stderr
    assert two.rules(100) == [(1001, "10.192.8.1/32", 100, PROTO), (1001, "fd10:192::1/128", 100, PROTO)]


def test_unprivileged_down_says_the_fix_and_exits_0(two):
    ok(up0(two))
    before = two.dump()
    two.state_dir.chmod(0o755)
    envargs = [f"{k}={v}" for k, v in two.env({"dev": "tun0"}).items()]
    proc = two.exec("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                    "/usr/bin/env", "-i", *envargs, REPO / "hooks/down", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init")
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    assert "openvpn-plugin-down-root.so" in proc.stderr
    # the fix names the hook that ran, not the install path
    assert f"replace 'down {REPO}/hooks/down' with 'plugin " in proc.stderr and "/usr/lib/vpnsplit/down" not in proc.stderr, proc.stderr
    assert two.dump() == before
    # the next up as root converges
    ok(up0(two))
    assert two.dump() == before


def test_example_config_verbatim(ns):
    ns.config = REPO / "configs/vpnsplit.toml"
    ns.add_tun("tun0", "10.8.0.2/24")
    ok(ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0"))
    assert ns.rules(100) == [(1000, "10.8.0.2/32", 100, PROTO), (1001, "10.192.8.1/32", 100, PROTO)]
    assert ns.snat() == {("10.192.8.1", "tun0"): "10.8.0.2"}


def test_up_all_brings_present_tunnels_up_and_absent_ones_fail_closed(two):
    two.ip("link", "del", "tun1")
    ok(two.vpnsplit("up", "--all"))
    rules, table = provider_up_state()
    assert two.rules(100) == rules and two.table(100) == table  # read off tun0 itself
    # tun1 is absent and work is not strict: nothing of it in the kernel
    assert two.rules(101) == [] and two.table(101) == []
    assert "10.192.9.1" not in two.addresses("lo")
    first = two.dump()
    assert "already in place" in ok(two.vpnsplit("up", "--all")).stderr
    assert two.dump() == first
    ok(two.vpnsplit("down", "--all"))
    assert two.rules(100) == [(1001, "10.192.8.1/32", 100, PROTO), (1001, "fd10:192::1/128", 100, PROTO)]
    assert ok(two.vpnsplit("check")).returncode == 0


def test_up_all_before_any_vpn_connects_fails_closed(ns):
    ns.write_config(TWO_TUNNELS.replace("strict       = false", "strict       = true"))
    ok(ns.vpnsplit("up", "--all"))
    assert ns.rules(100) == [(1001, "10.192.8.1/32", 100, PROTO), (1001, "fd10:192::1/128", 100, PROTO)]
    assert ns.rules(101) == [(1101, "10.192.9.1/32", 101, PROTO)]
    assert [r[1] for r in ns.table(101)] == [UNREACHABLE, UNREACHABLE]
    assert "10.192.9.1" in ns.addresses("lo")  # services can bind now, and cannot leak
    ns.add_tun("up0", "192.0.2.100/24")  # the host's uplink, with its default route
    ns.ip("route", "add", "default", "dev", "up0")
    assert send_udp(ns, None) == "sent"  # control: unbound traffic leaves by the uplink
    assert send_udp(ns, "10.192.9.1") == "EHOSTUNREACH"  # the unreachable route answers at once


def send_udp(ns, source):
    """Send one datagram to an 'internet' address, optionally bound to *source*: 'sent' or the errno name."""
    code = (
        "import errno, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(({source or ''!r}, 0))\n"
        "try:\n    s.sendto(b'x', ('192.0.2.1', 9)); print('sent')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    return ns.exec(sys.executable, "-c", code).stdout.strip()
