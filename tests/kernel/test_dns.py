"""Issue 12 in one namespace: what the DNS redirect puts in the kernel, that it is idempotent and
goes away byte for byte, that a hostile push changes nothing, and what `explain --dns` says.
(Packets and real resolvers: tests/test_lab_dns.py.)"""

import json

from tests.kernel.nslab import PROVIDER

SOURCES = 'sources = ["10.20.1.0/24"]\n'
PUSH = {"foreign_option_1": "dhcp-option DOMAIN example.net", "foreign_option_2": "dhcp-option DNS 192.0.2.53"}


def scene(ns, extra=SOURCES):
    for conf in ("all", "default"):  # link-local addresses at once, not in the middle of a dump comparison
        ns.exec("sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0", check=True)
    ns.ip("link", "add", "ctr0", "type", "veth", "peer", "name", "ctr1")
    ns.ip("addr", "add", "10.20.1.1/24", "dev", "ctr0")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ns.ip("addr", "add", "198.51.100.10/24", "dev", "eth0")
    for dev in ("ctr0", "ctr1", "eth0", "eth1"):
        ns.ip("link", "set", dev, "up")
    ns.ip("route", "add", "default", "via", "198.51.100.1")
    ns.write_config(PROVIDER + extra)
    ns.add_tun("tun0", "10.8.0.2/24")


def up(ns, env=PUSH):
    return ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0", env=env)


def dns_nft(ns):
    """{set or map name: elements} of vpnsplit's DNS sets, and {chain: rule count} of its DNS chains."""
    sets, chains = {}, {}
    for item in ns.dump()["nft"]:
        kind, body = next(iter(item.items()))
        if body.get("table") == "vpnsplit" and body.get("name", body.get("chain", "")).startswith("dns_"):
            if kind in ("set", "map"):
                sets[body["name"]] = body.get("elem", [])
            elif kind == "rule":
                chains[body["chain"]] = chains.get(body["chain"], 0) + 1
    return sets, chains


def unordered(dump):
    """*dump* with the nft objects as a sorted list: chains re-created after the tunnel's return
    are listed in their new order."""
    return {**dump, "nft": sorted(json.dumps(item, sort_keys=True) for item in dump["nft"])}


def svm(ns, dev="tun0"):
    return ns.exec("cat", f"/proc/sys/net/ipv4/conf/{dev}/src_valid_mark").stdout.strip()


def test_sources_redirect_follows_the_lease_and_refuses_while_down(ns):
    scene(ns)
    assert up(ns).returncode == 0
    sets, chains = dns_nft(ns)
    assert sets["dns_src4"] == [[{"prefix": {"addr": "10.20.1.0", "len": 24}}, "192.0.2.53"]] and sets["dns_down4"] == []
    assert chains == {"dns_dstnat": 2, "dns_refuse": 4, "dns_app": 2, "dns_app_refuse": 2}  # nothing of the default VPN's
    status = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]
    assert (status["dns"], status["dns_from"], status["lease"]["dns"]) == (["192.0.2.53"], "vpn", ["192.0.2.53"])
    before = ns.dump()
    assert up(ns).returncode == 0 and ns.dump() == before  # idempotent
    report = json.loads(ns.vpnsplit("explain", "10.20.1.5", "--dns", "--json").stdout)
    assert (report["dns"]["action"], report["dns"]["to"], report["dst"], report["device"]) == ("redirect", "192.0.2.53", "192.0.2.53", "tun0")
    assert report["nat"] == "10.8.0.2"
    assert ns.openvpn("down", "tun0", "10.8.0.2", "255.255.255.0").returncode == 0
    sets, _ = dns_nft(ns)
    assert sets["dns_src4"] == [] and sets["dns_down4"] == [{"prefix": {"addr": "10.20.1.0", "len": 24}}]
    assert "refused at once" in ns.vpnsplit("explain", "10.20.1.5", "--dns").stdout
    assert ns.vpnsplit("check").returncode == 0


def test_a_hostile_push_changes_nothing(ns):
    scene(ns)
    before = ns.dump()
    r = up(ns, {"foreign_option_1": "dhcp-option DNS 192.0.2.53;reboot"})
    assert r.returncode == 2 and "foreign_option_1" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ns.dump() == before


def test_the_default_vpn_marks_redirects_and_goes_back_byte_for_byte(ns):
    scene(ns, extra="")
    assert up(ns).returncode == 0
    before, forwarding = ns.dump(), svm(ns)
    assert forwarding == "0"
    assert ns.vpnsplit("default", "provider").returncode == 0
    assert (31991, "all", 100, 118) in ns.rules(family=4) and (31991, "all", 100, 118) in ns.rules(family=6)
    _, chains = dns_nft(ns)
    assert chains == {"dns_dstnat": 2, "dns_refuse": 4, "dns_app": 2, "dns_app_refuse": 2, "dns_mark": 1, "dns_restore": 1, "dns_out": 1, "dns_masq": 1}
    assert svm(ns) == "1"
    assert ns.vpnsplit("check").returncode == 0
    on = ns.dump()
    assert ns.vpnsplit("default", "provider").returncode == 0 and ns.dump() == on  # idempotent
    assert "rule 31991 into tunnel provider" in ns.vpnsplit("explain", "198.51.100.10", "--dns").stdout
    # the tunnel goes down (strict): the host's DNS is refused, the switch goes back
    assert ns.openvpn("down", "tun0", "10.8.0.2", "255.255.255.0").returncode == 0
    assert "tunnel provider is down" in ns.vpnsplit("explain", "198.51.100.10", "--dns").stdout
    assert svm(ns) == "0" and ns.vpnsplit("check").returncode == 0
    assert up(ns).returncode == 0 and svm(ns) == "1" and unordered(ns.dump()) == unordered(on)
    assert ns.vpnsplit("default", "--off").returncode == 0
    assert ns.dump() == before and svm(ns) == "0"


def test_wg_up_takes_the_dns_line_of_the_wg_quick_config(ns, tmp_path):
    """wg-quick passes only %i; `--wg-config PATH` names its file, whose DNS line is recorded."""
    ns.write_config(PROVIDER.replace('"tun0"', '"wg0"') + 'dns = ["192.0.2.99"]\n')
    ns.add_tun("wg0", "10.9.0.2/24")
    conf = tmp_path / "wg0.conf"
    conf.write_text("[Interface]\nAddress = 10.9.0.2/24\nDNS = 10.9.0.1, vpn.example\nTable = off\n")
    r = ns.hook("wg-up", "wg0", "--wg-config", str(conf))
    assert r.returncode == 0, r.stderr
    status = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]
    assert (status["dns"], status["dns_from"]) == (["10.9.0.1"], "vpn")
    # a config naming none: the dns key
    conf.write_text("[Interface]\nAddress = 10.9.0.2/24\n")
    assert ns.hook("wg-up", "wg0", "--wg-config", str(conf)).returncode == 0
    status = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]
    assert (status["dns"], status["dns_from"]) == (["192.0.2.99"], "config")
    r = ns.hook("wg-up", "wg0", "--wg-config", str(tmp_path / "absent.conf"))
    assert r.returncode == 2 and "does not exist" in r.stderr
