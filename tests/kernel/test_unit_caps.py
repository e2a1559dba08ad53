"""Issue 16: the units' CapabilityBoundingSet= is enough for the per-app tunnels' cgroup program.

Each unit of systemd/ that runs vpnsplit's tunnels (vpnsplit.service, -watch, -default@) bounds its
capabilities; a run there attaches the socket-mark program to the configured cgroups, and a later run
finds it again by name (idempotent attach, retire). Here a process limited to exactly the unit's
bounding set (setpriv, as root like the unit) does both on a cgroup of the test's own; the kernel's
query then holds the program once. With fewer capabilities (the units' old CAP_NET_ADMIN alone, or
CAP_BPF instead of CAP_SYS_ADMIN) it fails: the test can fail. No network namespace is touched.
"""

import subprocess
import sys

import pytest

from tests.kernel.applab import app_cgroup  # noqa: F401 (fixture)
from tests.kernel.nslab import REPO
from vpnsplit import bpf

UNITS = ["vpnsplit.service", "vpnsplit-watch.service", "vpnsplit-default@.service"]
SLOT = 7
# attach twice (the second finds the first by name: BPF_PROG_GET_FD_BY_ID), as two runs of the unit would
ATTACH_TWICE = f"""
import sys
sys.path.insert(0, {str(REPO / "lib")!r})
from vpnsplit import apps, bpf
print(bpf.attach(sys.argv[1], apps.mark({SLOT}), {SLOT}), bpf.attach(sys.argv[1], apps.mark({SLOT}), {SLOT}))
"""


def bounding_set(unit):
    """The capabilities of the unit's CapabilityBoundingSet= line, as setpriv spells them."""
    lines = (REPO / "systemd" / unit).read_text().splitlines()
    caps = next(line.partition("=")[2].split() for line in lines if line.startswith("CapabilityBoundingSet="))
    return [c.removeprefix("CAP_").lower() for c in caps]


def attach_with(caps, cgroup):
    """ATTACH_TWICE as root with only *caps* (bounding, so permitted and effective too)."""
    bounding = ",".join(["-all", *(f"+{c}" for c in caps)])
    return subprocess.run(["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", sys.executable, "-I", "-c",
                           ATTACH_TWICE, cgroup], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("unit", UNITS)
def test_the_units_capabilities_attach_and_find_the_program(unit, app_cgroup):  # noqa: F811
    proc = attach_with(bounding_set(unit), app_cgroup)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]  # attached, then found: unchanged
    assert bpf.attached(app_cgroup) == [bpf.name_of(SLOT)]


@pytest.mark.parametrize("caps", [["net_admin"], ["net_admin", "bpf"]])
def test_fewer_capabilities_are_not_enough(caps, app_cgroup):  # noqa: F811
    proc = attach_with(caps, app_cgroup)
    assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, (proc.stdout, proc.stderr)
