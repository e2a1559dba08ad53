"""Issue 11 part 5: vpnsplit next to other tools on one host.

Docker-style MASQUERADE (real iptables-nft, `-s SUBNET ! -o BRIDGE -j MASQUERADE`) loaded before
and after vpnsplit's table: nat chains on one hook run in priority order, the first binding wins,
and at equal priority the chain registered last runs first. vpnsplit's SNAT (priority 99) must
bind the source subnet's connections, whichever was loaded last: the MASQUERADE rule's counter
stays 0 and the far end sees the tunnel address.
"""

import pytest

from tests.kernel.test_sources_forward import CONFIG, fam, leaked, received, world  # noqa: F401 (fixtures)

# the aliases on the tunnel device, as in the report (MASQUERADE would pick one of the tunnel's addresses)
ON_TUNNEL = CONFIG.replace('alias_device = "lo"\n', "")


def masquerade(ns, fam):
    tables = "iptables" if fam.fam == 4 else "ip6tables"
    ns.exec(tables, "-t", "nat", "-A", "POSTROUTING", "-s", fam.sources, "!", "-o", "ctr0", "-j", "MASQUERADE", check=True)

    def count():
        out = ns.exec(tables, "-t", "nat", "-L", "POSTROUTING", "-v", "-x", "-n", check=True).stdout
        return sum(int(line.split()[0]) for line in out.splitlines() if "MASQUERADE" in line)

    return count


@pytest.mark.parametrize("order", ["masquerade first", "vpnsplit first"])
def test_sources_are_snated_by_vpnsplit_whichever_nat_table_came_last(world, fam, order):
    ns, ctr, far, isp = world
    assert ON_TUNNEL != CONFIG
    ns.write_config(ON_TUNNEL)
    if order == "masquerade first":
        count = masquerade(ns, fam)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    if order == "vpnsplit first":
        count = masquerade(ns, fam)
    for port in (5100, 5101):
        assert received(far, fam.internet, port, ctr, "tcp") == ("sent", f"{fam.tunnel} hello")
    assert count() == 0


def test_a_foreign_rule_shadowing_the_tunnel_is_a_warning_and_a_check_problem(world, fam):
    """wg-quick without Table = off: `not fwmark 0xca6c lookup 51820` at 10002, ahead of the tunnel's
    rules at 10012-10015. The kernel is asked where the alias, the tunnel address and the sources go."""
    ns, ctr, far, isp = world
    # loose reverse-path filter (the systemd default): with strict, IPv4 sources captured this way are dropped on arrival
    ns.exec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", check=True)
    assert ns.vpnsplit("up", "vpn").returncode == 0
    assert ns.vpnsplit("check").returncode == 0
    v = f"-{fam.fam}"
    ns.ip(v, "route", "add", "default", "via", fam.isp, "table", "51820")
    ns.ip(v, "rule", "add", "priority", "10002", "not", "fwmark", "0xca6c", "lookup", "51820")
    proc = ns.vpnsplit("check")
    assert proc.returncode == 3, proc.stderr
    culprit = "rule '10002: not from all fwmark 0xca6c lookup 51820' captures it before vpnsplit's rules"
    for src in (fam.alias, fam.tunnel, f"{fam.sources} (a host in it, in via ctr0)"):
        assert f"traffic from {src} is routed by table 51820, not the tunnel's 10003: {culprit}" in proc.stderr, proc.stderr
    # the hook says so when it applies something
    assert ns.vpnsplit("down", "vpn").returncode == 0
    up = ns.vpnsplit("up", "vpn")
    assert up.returncode == 0 and f"tunnel vpn: traffic from {fam.alias} is routed by table 51820" in up.stderr
    # the backstop keeps the alias's packets off the uplink all the while (a local sender sees EPERM)
    assert ns.send(fam.internet, 5003, source=fam.alias) == "EPERM"
    assert leaked(isp) == 0
    ns.ip(v, "rule", "del", "priority", "10002")
    assert ns.vpnsplit("check").returncode == 0
