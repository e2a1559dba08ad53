"""Issue 5's read paths: what a run reads without pyroute2 must be what pyroute2 would read,
and a run that finds everything in place must not need pyroute2 at all."""

import json

from tests.kernel.nslab import PROVIDER, REPO, WORK

PY = REPO / ".venv/bin/python3"

COMPARE = """
import json
from pyroute2 import IPRoute
from vpnsplit import nldump
with IPRoute() as ipr:
    theirs = [[m["index"], m["family"], m["prefixlen"], m["scope"], m.get_attr("IFA_LOCAL"), m.get_attr("IFA_ADDRESS")] for m in ipr.get_addr()]
print(json.dumps({"nldump": [list(a) for a in nldump.addresses()], "pyroute2": theirs}))
"""

# the rules and routes a run observes, read both ways (nldump's tuples, from pyroute2's messages)
COMPARE_RULES_ROUTES = """
import json, socket
from pyroute2 import IPRoute
from vpnsplit import nldump
A = lambda m, name: m.get_attr(name)
out = {"nldump": [], "pyroute2": []}
with IPRoute() as ipr:
    for fam in (socket.AF_INET, socket.AF_INET6):
        out["nldump"].append([list(r) for r in nldump.rules(fam, 118)])
        sup = lambda m: None if A(m, "FRA_SUPPRESS_PREFIXLEN") in (None, 0xFFFFFFFF) else A(m, "FRA_SUPPRESS_PREFIXLEN")
        out["pyroute2"].append([[A(m, "FRA_PRIORITY") or 0, A(m, "FRA_TABLE"), A(m, "FRA_SRC"), m["src_len"], A(m, "FRA_DST"), m["dst_len"], sup(m),
                                 A(m, "FRA_FWMARK"), A(m, "FRA_FWMASK"), A(m, "FRA_IIFNAME"), A(m, "FRA_IP_PROTO"), A(m, "FRA_DPORT_RANGE")]
                                for m in ipr.get_rules(family=fam) if A(m, "FRA_PROTOCOL") == 118])
        for table in (100, 101, 254):
            out["nldump"].append([list(r) for r in nldump.routes(fam, table)])
            out["pyroute2"].append([[A(m, "RTA_DST"), m["dst_len"], m["proto"], m["type"], A(m, "RTA_OIF"), A(m, "RTA_GATEWAY"), A(m, "RTA_PRIORITY")]
                                    for m in ipr.get_routes(family=fam) if A(m, "RTA_TABLE") == table])
print(json.dumps(out))
"""

# Any import of pyroute2 fails, as if it were not installed: the run must not need it.
WITHOUT_PYROUTE2 = """
import sys
sys.modules["pyroute2"] = None
from vpnsplit import cli, hooks
entry = {"hook": hooks.main, "cli": cli.main}[sys.argv[1]]
sys.exit(entry(sys.argv[2:]))
"""

SIX = ["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"]
OPENVPN_ENV = {"dev": "tun0", "dev_type": "tun", "script_type": "up", "script_context": "init", "ifconfig_local": "10.8.0.2",
               "ifconfig_netmask": "255.255.255.0", "ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64"}


def scene(ns):
    ns.write_config(PROVIDER + WORK)
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.add_tun("tun1", "10.9.0.6", peer="10.9.0.5")


def without_pyroute2(ns, entry, *args, env=None):
    envargs = [f"{k}={v}" for k, v in ns.env(env).items()]
    return ns.exec("/usr/bin/env", "-i", *envargs, PY, "-I", "-c", WITHOUT_PYROUTE2, entry, *args)


def test_nldump_reads_every_address_as_pyroute2_does(ns):
    scene(ns)
    ns.ip("addr", "add", "10.192.9.1/32", "dev", "lo")
    ns.ip("-6", "addr", "add", "fd10:192::1/128", "dev", "tun0", "nodad")
    got = json.loads(ns.exec(PY, "-I", "-c", COMPARE, check=True).stdout)
    # p2p (IFA_LOCAL differs from IFA_ADDRESS, the peer), IPv6 (no IFA_LOCAL), host scope on lo
    assert ["10.9.0.6", "10.9.0.5"] in [a[4:] for a in got["pyroute2"]]
    assert got["nldump"] == got["pyroute2"]


def test_a_run_with_everything_in_place_needs_no_pyroute2(ns):
    scene(ns)
    assert ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0", env=OPENVPN_ENV).returncode == 0
    assert ns.openvpn("up", "tun1", "10.9.0.6", "10.9.0.5").returncode == 0
    before = ns.dump()

    hook = without_pyroute2(ns, "hook", "up", *SIX, env=OPENVPN_ENV)
    assert hook.returncode == 0 and "already in place" in hook.stderr, hook.stderr
    every = without_pyroute2(ns, "cli", "up", "--all")
    assert every.returncode == 0 and "already in place" in every.stderr, every.stderr
    status = without_pyroute2(ns, "cli", "check")
    assert status.returncode == 0, status.stderr
    assert ns.dump() == before

    # the control: with something to repair the same run needs pyroute2, and fails without it
    ns.ip("rule", "del", "priority", "1001", "from", "10.192.8.1")
    drifted = ns.dump()
    blocked = without_pyroute2(ns, "hook", "up", *SIX, env=OPENVPN_ENV)
    assert blocked.returncode != 0 and ns.dump() == drifted, blocked.stderr
    assert ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0", env=OPENVPN_ENV).returncode == 0
    assert ns.dump() == before


def test_nldump_reads_rules_and_routes_as_pyroute2_does(ns):
    scene(ns)
    assert ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0", env=OPENVPN_ENV).returncode == 0
    assert ns.openvpn("up", "tun1", "10.9.0.6", "10.9.0.5").returncode == 0
    # the shapes the default VPN uses: suppress_prefixlength, a destination, a fwmark, both families
    for fam in ("-4", "-6"):
        ns.ip(fam, "rule", "add", "priority", "32000", "lookup", "main", "suppress_prefixlength", "0", "proto", "118")
    ns.ip("rule", "add", "priority", "32002", "to", "203.0.113.2", "lookup", "main", "proto", "118")
    ns.ip("-6", "rule", "add", "priority", "32001", "fwmark", "0x10000000/0x10000000", "lookup", "main", "proto", "118")
    ns.ip("rule", "add", "priority", "31992", "iif", "lo", "ipproto", "udp", "dport", "53", "lookup", "main", "proto", "118")
    ns.ip("rule", "add", "priority", "1500", "from", "10.1.0.0/16", "lookup", "101", "proto", "static")  # not ours
    got = json.loads(ns.exec(PY, "-I", "-c", COMPARE_RULES_ROUTES, check=True).stdout)
    v4_rules = got["pyroute2"][0]
    assert [32000, 254, None, 0, None, 0, 0, None, None, None, None, None] in v4_rules and [32002, 254, None, 0, "203.0.113.2", 32, None, None, None, None, None, None] in v4_rules
    assert [1000, 100, "10.8.0.2", 32, None, 0, None, None, None, None, None, None] in v4_rules and not any(r[0] == 1500 for r in v4_rules)
    assert [32001, 254, None, 0, None, 0, None, 0x10000000, 0x10000000, None, None, None] in got["pyroute2"][4]  # IPv6's rules follow IPv4's 3 tables
    assert [31992, 254, None, 0, None, 0, None, None, None, "lo", 17, "53:53"] in v4_rules  # the server names' rule
    assert all(got["pyroute2"]), "every family's rules and every table's routes are non-empty"
    assert got["nldump"] == got["pyroute2"]
