"""Issue 15 part 2: vpnsplit-default@.service runs, in a namespace, exactly the commands of its
ExecStart= and ExecStop= lines (the instance name substituted as systemd does for %i): one default
VPN at a time, and stopping an instance that is no longer the default changes nothing."""

import shlex

from tests.kernel.nslab import REPO
from tests.kernel.test_default_vpn import CONFIG
from tests.kernel.test_sources_forward import TABLE, world  # noqa: F401 (fixture)

UNIT = REPO / "systemd/vpnsplit-default@.service"
# a tunnel name with a dash: systemd's %I would unescape it to "work/2"
SECOND = '[tunnel.work-2]\ndevice = "tun9"\nid = 2\n'


def unit_command(key, instance):
    """The argv of the unit's *key* line (ExecStart, ExecStop) for *instance*, %i and %I as systemd expands them."""
    line = next(v for k, _, v in (line.partition("=") for line in UNIT.read_text().splitlines()) if k == key)
    argv = shlex.split(line.replace("%i", instance).replace("%I", instance.replace("-", "/")))
    assert argv[0] == "/usr/sbin/vpnsplit", argv  # what `make install` and the package install
    return argv[1:]


def systemctl(ns, verb, instance):
    """`systemctl start|stop vpnsplit-default@INSTANCE` as far as vpnsplit sees it: the unit's command."""
    proc = ns.vpnsplit(*unit_command({"start": "ExecStart", "stop": "ExecStop"}[verb], instance))
    assert proc.returncode == 0, proc.stderr
    return proc


def default_rules(ns):
    return [r for r in ns.rules() if r[0] in range(32000, 32004)]


def test_the_units_start_and_stop_commands_keep_one_default_vpn(world):
    ns, ctr, far, isp = world
    ns.write_config(SECOND + CONFIG)
    assert ns.vpnsplit("up", "--all").returncode == 0
    before = ns.dump()
    systemctl(ns, "start", "vpn")
    assert (32003, "all", TABLE, 118) in default_rules(ns)
    systemctl(ns, "start", "work-2")  # starting B switches the default to B
    assert [r for r in default_rules(ns) if r[0] == 32003] == [(32003, "all", 10002, 118)] * 2
    switched = ns.dump()
    proc = systemctl(ns, "stop", "vpn")  # A is no longer the default: its stop leaves B's kill switch alone
    assert "the default VPN is work-2, not vpn: nothing changed" in proc.stderr
    assert ns.dump() == switched
    systemctl(ns, "stop", "work-2")  # B's stop gives the host its own routing back exactly
    after = ns.dump()
    assert not default_rules(ns) and after["rules"] == before["rules"] and after["nft"] == before["nft"]
