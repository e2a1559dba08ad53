"""Issue 6, part 3: `vpnsplit default NAME` sends all of the host's internet traffic through a
tunnel, for IPv4 and IPv6 alike (the `fam` fixture)."""

import json

from tests.kernel.convergence import killing
from tests.kernel.test_sources_forward import CONFIG as FORWARD_CONFIG
from tests.kernel.test_sources_forward import TABLE, fam, received, world  # noqa: F401 (fixtures)

CONFIG = """
[tunnel.vpn]
device   = "vpn0"
id       = 3
gateway  = "10.8.0.1"
gateway6 = "fd08::1"
servers  = ["203.0.113.2", "2001:db8:113::2"]
"""

# an internet host connects to the host's uplink address from the isp side
CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), 3, (sys.argv[2], 0)); s.sendall(b'hi'); print('sent')
"""


def main_table(dump):
    """The main table's routes, IPv4 and IPv6."""
    return [r for r in dump["routes"] if r.get("RTA_TABLE") == 254]


def udp_counter(isp):
    """Datagrams from anywhere to the internet host that reached the isp."""
    isp.nft("table inet seen {\n chain c {\n type filter hook prerouting priority 0;\n udp dport 6000 counter\n }\n}\n")

    def count():
        rules = json.loads(isp.exec("nft", "-j", "list", "chain", "inet", "seen", "c", check=True).stdout)["nftables"]
        return next(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)

    return count


def test_default_vpn_carries_the_host_and_off_restores_it_exactly(world, fam):
    ns, ctr, far, isp = world
    ns.write_config(CONFIG)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    before = ns.dump()
    proc = ns.vpnsplit("default", "vpn")
    assert proc.returncode == 0, proc.stderr
    rules = [r for r in ns.rules(family=fam.fam) if r[0] in range(32000, 32004)]
    # replies: by the conntrack mark (any source), IPv4 also by the uplink address
    uplink = [(32001, f"{fam.uplink}/{fam.host_len}", 254, 118)] if fam.fam == 4 else []
    assert rules == [(32000, "all", 254, 118), *uplink, (32001, "all", 254, 118), (32002, "all", 254, 118), (32003, "all", TABLE, 118)]
    assert "fwmark 0x10000000/0x10000000" in ns.exec("ip", f"-{fam.fam}", "rule", "show", "priority", "32001").stdout
    assert "fwmark 0x20000000/0x20000000 lookup main" in ns.exec("ip", f"-{fam.fam}", "rule", "show", "priority", "31990").stdout
    # an unbound socket now leaves through the tunnel, with the tunnel's address
    assert received(far, fam.internet, 5000, ns) == ("sent", f"{fam.tunnel} hello")
    # the LAN stays direct
    assert received(isp, fam.isp, 5001, ns) == ("sent", f"{fam.uplink} hello")
    # the VPN's own server is never routed into the tunnel
    assert "dev eth0" in ns.exec("ip", "route", "get", fam.server).stdout
    # a connection from the internet to the host's uplink address is answered through the uplink
    listener = ns.listen(fam.uplink, 7000, "tcp")
    sent = isp.exec("python3", "-c", CONNECT, fam.uplink, fam.internet).stdout.strip()
    assert (sent, listener.communicate(timeout=10)[0].strip()) == ("sent", f"{fam.internet} hi")
    # the tunnel drops: strict turns the default into a kill switch
    count = udp_counter(isp)
    assert ns.vpnsplit("down", "vpn").returncode == 0
    assert [r for r in ns.rules(family=fam.fam) if r[0] in range(32000, 32004)] == rules
    assert ns.send(fam.internet, 6000) in ("EHOSTUNREACH", "ENETUNREACH")
    assert count() == 0
    assert received(isp, fam.isp, 5002, ns) == ("sent", f"{fam.uplink} hello")  # the LAN still works
    # inbound to the uplink address: IPv4 is answered; IPv6 not, because the reply's first route
    # lookup (mark 0) already meets the kill switch, before the output hook could mark it
    listener = ns.listen(fam.uplink, 7001, "tcp")
    sent = isp.exec("python3", "-c", CONNECT.replace("7000", "7001"), fam.uplink, fam.internet).stdout.strip()
    answered = ("sent", f"{fam.internet} hi") if fam.fam == 4 else ("", "nothing")
    assert (sent, listener.communicate(timeout=10)[0].strip()) == answered
    # back up, then off: the host gets its own routing back exactly (both families)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "--off").returncode == 0
    after = ns.dump()
    assert after["rules"] == before["rules"] and after["nft"] == before["nft"]
    assert main_table(after) == main_table(before)
    assert ns.send(fam.internet, 6000) == "sent" and count() == 1  # control: the counter sees unbound traffic now


def test_default_is_chosen_at_boot_by_the_config(world):
    ns, ctr, far, isp = world
    ns.write_config(CONFIG.replace('servers', 'default  = true\nservers'))
    assert ns.vpnsplit("up", "--all").returncode == 0
    assert (32003, "all", TABLE, 118) in ns.rules()


def test_several_defaults_the_lowest_id_chooses_and_says_so(world):
    ns, ctr, far, isp = world
    # both say default = true: b's id 2 is lower than vpn's 3 (b's device is absent: a kill switch until it connects)
    ns.write_config('[tunnel.b]\ndevice = "tun9"\nid = 2\ndefault = true\n' + CONFIG.replace('servers', 'default  = true\nservers'))
    proc = ns.vpnsplit("up", "--all")
    assert proc.returncode == 0, proc.stderr
    assert "default = true in b, vpn: tunnel b is the default VPN" in proc.stderr
    assert [r for r in ns.rules() if r[0] == 32003] == [(32003, "all", 10002, 118)] * 2


def test_default_without_name_applies_the_configured_choice(world):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "vpn").returncode == 0
    before = ns.dump()
    proc = ns.vpnsplit("default")
    assert proc.returncode == 2 and "no [tunnel.*] section" in proc.stderr and "says default = true" in proc.stderr
    assert ns.dump() == before  # refused before any change
    ns.write_config(CONFIG.replace('servers', 'default  = true\nservers'))
    assert ns.vpnsplit("default", "--off").returncode == 0  # recorded off: the config no longer decides
    proc = ns.vpnsplit("default")
    assert proc.returncode == 0, proc.stderr
    assert [r for r in ns.rules() if r[0] == 32003] == [(32003, "all", TABLE, 118)] * 2
    assert received(far, "192.0.2.80", 5003, ns) == ("sent", "10.8.0.2 hello")


def test_off_with_a_name_lifts_only_that_tunnels_default(world):
    """`systemctl stop vpnsplit-default@NAME` runs `default --off NAME`: after another tunnel
    became the default it must leave that one's kill switch alone."""
    ns, ctr, far, isp = world
    ns.write_config('[tunnel.b]\ndevice = "tun9"\nid = 2\n' + CONFIG)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "b").returncode == 0  # b (not connected): a kill switch
    before = ns.dump()
    proc = ns.vpnsplit("default", "--off", "vpn")
    assert proc.returncode == 0 and "the default VPN is b, not vpn: nothing changed" in proc.stderr, proc.stderr
    assert ns.dump() == before
    assert ns.vpnsplit("default", "--off", "nosuch").returncode == 2
    proc = ns.vpnsplit("default", "--off", "b")
    assert proc.returncode == 0, proc.stderr
    assert not [r for r in ns.rules() if r[0] in range(32000, 32004)]


def test_server_exception_learnt_at_up_stays_while_the_tunnel_is_down(world):
    """OpenVPN reconnects without persist-tun: down, handshake with the server, up. The
    handshake must pass the kill switch, so the trusted_ip exception outlives down."""
    ns, ctr, far, isp = world
    without_servers = "\n".join(line for line in CONFIG.splitlines() if not line.startswith("servers"))
    assert without_servers != CONFIG
    ns.write_config(without_servers)
    env = {"trusted_ip": "203.0.113.7", "dev_type": "tap", "route_vpn_gateway": "10.8.0.1"}
    assert ns.openvpn("up", "vpn0", "10.8.0.2", "255.255.255.0", env=env).returncode == 0
    assert ns.vpnsplit("default", "vpn").returncode == 0
    server_rule = (32002, "all", 254, 118)
    assert server_rule in ns.rules()
    assert "dev eth0" in ns.exec("ip", "route", "get", "203.0.113.7").stdout
    assert ns.openvpn("down", "vpn0", "10.8.0.2", "255.255.255.0", context="restart", env=env).returncode == 0
    assert server_rule in ns.rules() and "dev eth0" in ns.exec("ip", "route", "get", "203.0.113.7").stdout
    killed = ns.exec("ip", "route", "get", "192.0.2.80")  # everything else meets the kill switch
    assert killed.returncode != 0 and "No route to host" in killed.stderr
    assert ns.vpnsplit("default", "--off").returncode == 0
    assert [r for r in ns.rules() if r[0] in range(32000, 32004)] == []


def test_status_and_check_cover_the_default_vpn(world):
    ns, ctr, far, isp = world
    ns.write_config(CONFIG)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "vpn").returncode == 0
    assert ns.vpnsplit("check").returncode == 0
    ns.ip("-4", "rule", "del", "priority", "32003")  # say, a firewall script
    proc = ns.vpnsplit("check")
    assert proc.returncode == 3 and f"default VPN: missing: rule from 0.0.0.0/0 lookup {TABLE} priority 32003" in proc.stderr
    status = ns.vpnsplit("status")
    assert f"MISSING  rule from 0.0.0.0/0 lookup {TABLE} priority 32003" in status.stdout, status.stdout
    assert "ok       rule from 0.0.0.0/0 to 203.0.113.2/32 lookup 254 priority 32002" in status.stdout
    assert json.loads(ns.vpnsplit("status", "--json").stdout)["default"]["tunnel"] == "vpn"
    assert ns.vpnsplit("up", "vpn").returncode == 0  # the default tunnel's up repairs its rules
    assert ns.vpnsplit("check").returncode == 0
    ns.exec("nft", "delete", "chain", "inet", "vpnsplit", "replies_out", check=True)  # the reply marking
    proc = ns.vpnsplit("check")
    assert proc.returncode == 3 and "default VPN: missing: mark replies of connections arriving not via vpn0" in proc.stderr, proc.stderr
    assert ns.vpnsplit("up", "vpn").returncode == 0 and ns.vpnsplit("check").returncode == 0
    assert "ct mark" in ns.exec("nft", "list", "chain", "inet", "vpnsplit", "replies_out", check=True).stdout
    assert ns.vpnsplit("default", "--off").returncode == 0
    assert ns.vpnsplit("check").returncode == 0 and "default VPN" not in ns.vpnsplit("status").stdout


def test_default_before_the_first_connect_is_a_kill_switch_at_once(world, fam):
    """`vpnsplit default NAME` while the tunnel's device does not exist yet (at boot, say): its
    strict skeleton goes in with the rules, so 32003 leads to `unreachable`, not to an empty table
    the lookup falls through."""
    ns, ctr, far, isp = world
    ns.write_config(CONFIG.replace('device   = "vpn0"', 'device   = "vpn9"'))
    count = udp_counter(isp)
    assert ns.vpnsplit("default", "vpn").returncode == 0
    assert (32003, "all", TABLE, 118) in ns.rules(family=fam.fam)
    assert ns.send(fam.internet, 6000) in ("EHOSTUNREACH", "ENETUNREACH")
    assert count() == 0
    assert ns.vpnsplit("check").returncode == 0
    assert ns.vpnsplit("default", "--off").returncode == 0
    assert ns.send(fam.internet, 6000) == "sent" and count() == 1  # control: the counter sees it now


def test_a_refused_default_keeps_the_previous_choice(world):
    """The choice is recorded before the kernel changes and put back when the kernel refuses
    a step: a map of another type sits where vpnsplit's snat4 belongs."""
    ns, ctr, far, isp = world
    ns.write_config(CONFIG)
    assert ns.vpnsplit("default", "--off").returncode == 0
    ns.exec("nft", "delete", "table", "inet", "vpnsplit", check=False)
    ns.nft("table inet vpnsplit {\n map snat4 {\n type ipv4_addr : ipv4_addr\n elements = { 192.0.2.1 : 192.0.2.2 }\n }\n}\n")
    before = ns.dump()
    proc = ns.vpnsplit("default", "vpn")
    assert proc.returncode == 1 and "nft batch in table inet vpnsplit" in proc.stderr, proc.stderr
    assert (ns.state_dir / "default").read_text() == "\n"  # still --off
    assert ns.dump() == before


def test_a_default_killed_midway_leaves_its_choice_for_check_and_a_rerun(world):
    """Killed after its first kernel step, `vpnsplit default NAME` has already recorded the
    choice: `check` reports the half-made rules and the tunnel's next run finishes them (the
    old choice's hooks can no longer quietly undo the command)."""
    ns, ctr, far, isp = world
    ns.write_config(CONFIG)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "--off").returncode == 0
    assert killing(ns, 1).vpnsplit("default", "vpn").returncode == -9
    assert (ns.state_dir / "default").read_text() == "vpn\n"
    assert ns.vpnsplit("check").returncode == 3
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("check").returncode == 0
    assert [r[0] for r in ns.rules(family=4) if r[0] in range(31990, 32004)] == [31990, 31991, 32000, 32001, 32001, 32002, 32003]


def test_ipv6_kill_switch_holds_when_the_client_dies_without_down(world):
    """The VPN client is SIGKILLed: its device vanishes with its routes, no down hook runs, every
    rule of ours stays. An unbound IPv6 socket must still meet the kill switch: the kernel retries
    the failed lookup with the uplink address as source, and no rule may let that out."""
    ns, ctr, far, isp = world
    ns.write_config(CONFIG)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "vpn").returncode == 0
    assert received(far, "2001:db8:2::80", 5004, ns) == ("sent", "fd08::2 hello")  # through the tunnel while up
    count = udp_counter(isp)
    ns.ip("link", "del", "vpn0")  # the crash: no down hook
    assert ns.send("2001:db8:2::80", 6000) in ("EHOSTUNREACH", "ENETUNREACH")
    assert count() == 0
    assert received(isp, "2001:db8:51::1", 5005, ns) == ("sent", "2001:db8:51::10 hello")  # the LAN still works


def test_port_forwards_and_sources_are_not_marked_as_replies(world, fam):
    """The reply mark is for connections that come to the host from outside the tunnel: a port
    forward arrives through the tunnel (its replies must go back into it), a source subnet's
    traffic is forwarded, not for this host."""
    ns, ctr, far, isp = world
    ns.write_config(FORWARD_CONFIG + 'servers  = ["203.0.113.2", "2001:db8:113::2"]\n')
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("default", "vpn").returncode == 0
    # count what leaves the host with the reply mark: from the alias, a container or the tunnel address
    # (before SNAT), and from the uplink address
    ip = "ip" if fam.fam == 4 else "ip6"
    ns.nft("table inet probe {\n chain c {\n type filter hook postrouting priority 0;\n"
           f" meta mark & 0x10000000 != 0 {ip} saddr {{ {fam.alias}, {fam.ctr}, {fam.tunnel} }} counter\n"
           f" meta mark & 0x10000000 != 0 {ip} saddr {fam.uplink} counter\n }}\n}}\n")

    def marked():
        rules = json.loads(ns.exec("nft", "-j", "list", "chain", "inet", "probe", "c", check=True).stdout)["nftables"]
        return [e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e]

    for proto, port in (("tcp", 8080), ("udp", 5353)):  # far knows only the tunnel: replies must come back through it
        assert received(ns, fam.alias, port, far, proto, to=fam.tunnel) == ("sent", f"{fam.far} hello"), proto
    assert received(far, fam.internet, 5006, ctr) == ("sent", f"{fam.tunnel} hello")  # a source subnet: through the tunnel
    assert marked() == [0, 0]  # nothing of the forwards or the sources carried the mark
    # the control: a connection from the isp side to the uplink address is answered, marked
    listener = ns.listen(fam.uplink, 7002, "tcp")
    sent = isp.exec("python3", "-c", CONNECT.replace("7000", "7002"), fam.uplink, fam.internet).stdout.strip()
    assert (sent, listener.communicate(timeout=10)[0].strip()) == ("sent", f"{fam.internet} hi")
    assert marked()[1] > 0
