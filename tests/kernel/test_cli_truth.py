"""Issue 10 part 2 and issue 11 part 6: status, check and the command line never mislead.

Not applied yet is not damage; the fix status names is a command that works (also after the
VPN client died: `up NAME` on an absent device applies the down state); options anywhere,
--version, one prefix per message, "1 tunnel"; OpenVPN's six positional arguments validated
(up refuses, down logs and still tears down); a device without the lease's address refused.
"""

import json

import pytest

from tests.kernel.nslab import PROVIDER

SIX = ("1500", "0", "10.8.0.2", "255.255.255.0", "init")


@pytest.fixture
def tun0(ns):
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.write_config(PROVIDER)
    return ns


def test_nothing_applied_yet_is_not_drift(tun0):
    tun0.write_config(PROVIDER + "default = true\n")
    status = tun0.vpnsplit("status")
    assert status.returncode == 0, status.stderr
    assert "not applied yet" in status.stdout and "damaged" not in status.stdout and "MISSING" not in status.stdout, status.stdout
    assert "default VPN: tunnel provider (default = true), not applied yet" in status.stdout, status.stdout
    report = json.loads(tun0.vpnsplit("status", "--json").stdout)
    assert (report["tunnels"][0]["state"], report["tunnels"][0]["in_sync"], report["default"]["in_sync"]) == ("not applied", True, True)
    check = tun0.vpnsplit("check")
    assert check.returncode == 0, check.stderr
    # applied, then damaged: that is drift again
    assert tun0.vpnsplit("up", "provider").returncode == 0
    tun0.exec("nft", "delete", "table", "inet", "vpnsplit", check=True)
    assert tun0.vpnsplit("check").returncode == 3


def test_status_advice_after_the_client_died_works(tun0):
    assert tun0.vpnsplit("up", "provider").returncode == 0
    tun0.ip("link", "del", "tun0")  # the VPN client was killed: no down hook ran
    status = tun0.vpnsplit("status", "provider").stdout
    assert "DRIFT: run vpnsplit up provider" in status, status
    up = tun0.vpnsplit("up", "provider")
    assert up.returncode == 0, up.stderr
    assert "tunnel provider is not connected (no device tun0)" in up.stderr, up.stderr
    assert tun0.vpnsplit("check").returncode == 0
    # the strict skeleton: the alias still fails closed into table 100
    assert {(fam, rtype) for fam, rtype, *_ in tun0.table(100)} == {(4, 7), (6, 7)}  # unreachable defaults only
    assert (1001, "10.192.8.1/32", 100, 118) in tun0.rules(100)
    assert json.loads(tun0.vpnsplit("status", "--json").stdout)["tunnels"][0]["state"] == "down"


def test_options_anywhere_version_and_one_prefix(tun0):
    elsewhere = {"VPNSPLIT_CONFIG": "/nonexistent.toml"}
    for argv in (("status", "--config", str(tun0.config)), ("up", "provider", "--config", str(tun0.config), "-q"),
                 ("--config", str(tun0.config), "check")):
        proc = tun0.vpnsplit(*argv, env=elsewhere)
        assert proc.returncode == 0, (argv, proc.stderr)
    version = tun0.vpnsplit("--version")
    assert version.returncode == 0 and version.stdout.startswith("vpnsplit 0."), version
    unknown = tun0.vpnsplit("up", "prov")
    assert unknown.returncode == 2 and unknown.stderr.startswith("vpnsplit up: no tunnel 'prov' in "), unknown.stderr
    assert "vpnsplit: vpnsplit" not in unknown.stderr and unknown.stderr.count("vpnsplit up") == 1, unknown.stderr
    every = tun0.vpnsplit("up", "--all")
    assert every.returncode == 0 and "vpnsplit up: 1 tunnel up: " in every.stderr and "1 tunnels" not in every.stderr, every.stderr


def test_openvpn_positional_arguments_are_validated(tun0):
    before = tun0.dump()
    for name, bad in (("tun_mtu", "-1"), ("link_mtu", "x"), ("remote", "255.255.255"), ("tun_mtu", "")):
        six = list(SIX)
        six[("tun_mtu", "link_mtu", "local", "remote").index(name)] = bad
        proc = tun0.hook("up", "tun0", *six, env={"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"})
        assert proc.returncode == 2, (name, bad, proc.stderr)
        assert f"argument {name} {bad!r}" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert tun0.dump() == before, name
    ok = tun0.hook("up", "tun0", *SIX, env={"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"})
    assert ok.returncode == 0, ok.stderr
    # down: logged, never blocking the teardown
    down = tun0.hook("down", "tun0", "-1", "0", "10.8.0.2", "255.255.255.0", "init", env={"dev": "tun0"})
    assert down.returncode == 0 and "argument tun_mtu '-1'" in down.stderr, down.stderr
    assert "tunnel provider down" in down.stderr and not (tun0.state_dir / "provider.addr").exists()


def test_empty_local_and_remote_stay_valid(ns):
    """A tunnel without IPv4: OpenVPN passes local and remote empty."""
    ns.add_tun("tun0", v6="fd00:8::1000/64")
    ns.write_config(PROVIDER)
    env = {"dev": "tun0", "ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64"}
    proc = ns.hook("up", "tun0", "1500", "0", "", "", "init", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (1000, "fd00:8::1000/128", 100, 118) in ns.rules(100)


def test_a_device_without_the_lease_address_is_refused(ns):
    """OpenVPN with ifconfig-noexec: the device carries no address; SNAT to the lease's would send from nowhere."""
    ns.add_tun("tun0")
    ns.write_config(PROVIDER)
    before = ns.dump()
    proc = ns.hook("up", "tun0", *SIX, env={"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"})
    assert proc.returncode == 2, proc.stderr
    assert "device tun0 does not carry 10.8.0.2" in proc.stderr and "ifconfig-noexec" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert ns.dump() == before
    # another address than the lease's: named too
    ns.ip("addr", "add", "10.8.0.9/24", "dev", "tun0")
    before = ns.dump()
    proc = ns.hook("up", "tun0", *SIX, env={"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"})
    assert proc.returncode == 2 and "it carries 10.8.0.9" in proc.stderr, proc.stderr
    assert ns.dump() == before
