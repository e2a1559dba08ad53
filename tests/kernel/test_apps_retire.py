"""Issue 16, ownership by record: an `app_slot` taken out of a section, or the section removed, leaves
no socket-mark program attached to any cgroup (a bpf(2) query of each one below the test's cgroup),
and no rule or nft entry of the slot: the kernel and the record equal a fresh apply of the new config.
In test_apps' world; the programs' cgroups: a configured one (svc/a) and `vpnsplit run`'s.
"""

import os

from tests.kernel.applab import app_cgroup, apps  # noqa: F401 (fixtures)
from tests.kernel.convergence import canon, state_files
from tests.kernel.test_apps import APP_CONFIG, MARK, app_world  # noqa: F401 (fixtures)
from tests.kernel.test_sources_forward import CONFIG, world  # noqa: F401 (fixtures)
from vpnsplit import bpf

PROGRAM = bpf.name_of(3)
OTHER = '[tunnel.other]\ndevice = "vpn9"\nid = 9\n'  # a config whose only tunnel is not the world's


def attached(apps):
    """The cgroups below the test's (relative paths) holding slot 3's program."""
    return sorted(os.path.relpath(where, apps.cgroup) for where, _, _ in os.walk(apps.cgroup) if PROGRAM in bpf.attached(where))


def program_runs(ns, apps):
    """The apps' cgroups with slot 3 attached: svc/a by `up`, `vpnsplit run`'s by running a program."""
    os.makedirs(os.path.join(apps.cgroup, "svc/a"), exist_ok=True)
    ns.write_config(APP_CONFIG + 'cgroups = ["svc/a"]\n')
    assert apps.vpnsplit("up", "vpn").returncode == 0
    assert apps.send("udp", "192.0.2.80", 5500)[::2] == ("sent", MARK)
    assert attached(apps) == ["svc/a", "vpnsplit/vpn"]


def snapshot(ns):
    return canon(ns.dump()), state_files(ns)


def test_app_slot_taken_out_detaches_its_programs_as_a_fresh_apply(app_world):
    ns, far, isp, apps = app_world
    ns.write_config(CONFIG + 'cgroups = []\n')
    assert apps.vpnsplit("up", "vpn").returncode == 0
    fresh = snapshot(ns)
    program_runs(ns, apps)
    ns.write_config(CONFIG + 'cgroups = []\n')
    up = apps.vpnsplit("up", "vpn")
    assert up.returncode == 0, up.stderr
    assert attached(apps) == [] and snapshot(ns) == fresh
    assert "per-app slot 3 is no tunnel's any more" in up.stderr, up.stderr
    # a program in the cgroup now: no mark, the host's route (the uplink)
    assert apps.send("udp", "192.0.2.80", 5501, tunnel=None, below="svc/a")[::2] == ("sent", 0)
    assert apps.vpnsplit("up", "vpn").returncode == 0 and snapshot(ns) == fresh  # idempotent


def test_a_slot_another_section_takes_over_keeps_programs_only_where_a_fresh_apply_has_them(app_world):
    ns, far, isp, apps = app_world
    program_runs(ns, apps)
    os.makedirs(os.path.join(apps.cgroup, "svc/b"))
    # the section goes, another takes the slot: only that one's cgroups keep the program, as a fresh apply of the
    # new config has it (svc/a and `vpnsplit run vpn`'s were vpn's: their new sockets now go as the host's)
    ns.write_config(OTHER + 'app_slot = 3\ncgroups = ["svc/b"]\n')
    assert apps.vpnsplit("up", "other").returncode == 0
    down = apps.vpnsplit("down", "vpn")  # the section is gone: torn down from its record
    assert down.returncode == 0, down.stderr
    assert attached(apps) == ["svc/b"] and not state_files(ns).get("vpn.json"), down.stderr
    assert "per-app slot 3 is tunnel other's now: its socket-mark program detached from" in down.stderr, down.stderr
    assert apps.send("udp", "192.0.2.80", 5502, tunnel=None, below="svc/a")[::2] == ("sent", 0)
    # no section takes it any more: detached
    ns.write_config(OTHER)
    assert apps.vpnsplit("up", "other").returncode == 0
    assert attached(apps) == []
    assert not [r for r in ns.dump()["rules"] if r.get("FRA_FWMARK") == MARK]
