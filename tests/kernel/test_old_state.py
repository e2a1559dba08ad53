"""A state directory written by vpnsplit 0.1 (commit 4384ba2, before the records became one
typed value) is read by today's code: `up --all` converges on it and `check` finds no drift.

The records in tests/data/state_0.1/ were made by 0.1's own hooks in the scene below
(regenerate: `.venv/bin/python -m tests.kernel.test_old_state OLD_LIB`, OLD_LIB being
`lib/` of a checkout of 4384ba2): provider up with IPv4 and IPv6 source subnets (so
forwarding records of both families) and a VPN server, work up, and provider chosen as
the default VPN.
"""

import json
import shutil
import sys
from pathlib import Path

from tests.kernel.convergence import ok
from tests.kernel.nslab import PROVIDER, WORK, NetnsLab

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "state_0.1"
CONFIG = PROVIDER + 'sources = ["10.20.1.0/24", "fd20:1::/64"]\n' + WORK
PROVIDER_ENV = {"ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64", "trusted_ip": "203.0.113.2"}


def scene(ns):
    """The devices and config the records were written for; nothing of vpnsplit's applied."""
    ns.write_config(CONFIG)
    ns.add_container_link()
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.add_tun("tun1", "10.9.0.6", peer="10.9.0.5")


def records(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.name != "lock"}


def test_records_of_0_1_converge_and_check_clean(ns):
    scene(ns)
    ns.state_dir.mkdir()
    for path in FIXTURE.iterdir():
        shutil.copy(path, ns.state_dir / path.name)
    old = records(ns.state_dir)
    assert {"provider.json", "provider.addr", "work.json", "work.addr", "default"} <= set(old)
    assert json.loads(old["provider.json"])["forwarding"] == ["ctr0", "tun0"]

    ok(ns.vpnsplit("up", "--all"))
    ok(ns.vpnsplit("check"))
    # the recorded leases are the ones applied: rules from both tunnel addresses, the aliases
    # SNAT-ed to them, the default VPN's server exception from the recorded trusted_ip
    rules = {rule[:3] for rule in ns.rules()}
    assert {(1000, "10.8.0.2/32", 100), (1000, "fd00:8::1000/128", 100), (1100, "10.9.0.6/32", 101)} <= rules, rules
    assert (1003, "10.20.1.0/24", 100) in rules and (32003, "all", 100) in rules, rules
    assert [r for r in ns.dump()["rules"] if r.get("FRA_PRIORITY") == 32002 and r.get("FRA_DST") == "203.0.113.2"]
    snat4 = next(item["map"]["elem"] for item in ns.dump()["nft"] if item.get("map", {}).get("name") == "snat4")
    assert [{"concat": ["10.192.8.1", "tun0"]}, "10.8.0.2"] in snat4, snat4
    switches = ns.forwarding()
    assert switches["ipv4/ctr0/forwarding"] == switches["ipv4/tun0/forwarding"] == "1"
    if "ipv6/ctr0/force_forwarding" in switches:  # Linux 6.17+, as where the records were written
        assert switches["ipv6/ctr0/force_forwarding"] == switches["ipv6/tun0/force_forwarding"] == "1"
        # the leases read as recorded; each record rewritten once, to hold what vpnsplit applied (ownership by
        # record; 0.1 did not say) and, for the default VPN's tunnel, the src_valid_mark vpnsplit switched on
        # for its DNS redirect (issue 12)
        new = records(ns.state_dir)
        assert {k: v for k, v in new.items() if k.endswith(".addr") or k == "default"} == {
            k: v for k, v in old.items() if k.endswith(".addr") or k == "default"}
        for name in ("provider", "work"):
            was, now = json.loads(old[f"{name}.json"]), json.loads(new[f"{name}.json"])
            assert now["lease"] == {**was["lease"], "dns": []} and now["applied"]["rules"], now
            assert now["src_valid_mark"] == (["tun0"] if name == "provider" else []) and now["route_localnet"] == [], now
            assert {k: v for k, v in now.items() if k not in ("src_valid_mark", "route_localnet", "lease", "when", "applied")} == {
                k: v for k, v in was.items() if k not in ("lease", "when")}
        ok(ns.vpnsplit("up", "--all"))
        assert records(ns.state_dir) == new  # in place: not rewritten again
    ok(ns.vpnsplit("down", "--all"))
    ok(ns.vpnsplit("check"))
    # both strict: their fail-closed skeleton stays, and so do the records saying so, without a lease
    after = records(ns.state_dir)
    assert set(after) == {"default", "provider.json", "work.json"}, set(after)
    assert all(json.loads(after[f"{n}.json"])["lease"] is None for n in ("provider", "work"))


# -- regenerating the fixture with 0.1's code ----------------------------------------------

OLD = """
import sys
sys.path.insert(0, sys.argv[1])
from vpnsplit import cli, hooks
entry = {"hook": hooks.main, "cli": cli.main}[sys.argv[2]]
sys.exit(entry(sys.argv[3:]))
"""


def generate(old_lib, tmp):
    """Write the fixture with the vpnsplit package in *old_lib*, run by Debian's python3."""
    ns = NetnsLab(tmp)
    try:
        scene(ns)

        def old(entry, *args, env=None):
            envargs = [f"{k}={v}" for k, v in ns.env(env).items()]
            return ok(ns.exec("/usr/bin/env", "-i", *envargs, "/usr/bin/python3", "-I", "-c", OLD, old_lib, entry, *args))

        ovpn = {"dev_type": "tun", "script_type": "up", "script_context": "init", "ifconfig_netmask": "255.255.255.0"}
        old("hook", "up", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init",
            env={**ovpn, "dev": "tun0", "ifconfig_local": "10.8.0.2", **PROVIDER_ENV})
        old("hook", "up", "tun1", "1500", "0", "10.9.0.6", "10.9.0.5", "init",
            env={"dev_type": "tun", "script_type": "up", "script_context": "init", "dev": "tun1", "ifconfig_local": "10.9.0.6",
                 "ifconfig_remote": "10.9.0.5"})
        old("cli", "default", "provider")
        ok(ns.exec("/usr/bin/env", "-i", *[f"{k}={v}" for k, v in ns.env().items()], "/usr/bin/python3", "-I", "-c", OLD, old_lib,
                   "cli", "check"))
        shutil.rmtree(FIXTURE, ignore_errors=True)
        FIXTURE.mkdir(parents=True)
        for name, data in records(ns.state_dir).items():
            (FIXTURE / name).write_bytes(data)
    finally:
        ns.close()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        generate(sys.argv[1], tmp)
    print("\n".join(sorted(p.name for p in FIXTURE.iterdir())))
