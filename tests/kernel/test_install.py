"""`make install` gives hooks that run from /usr/lib/vpnsplit with no PATH, and systemd units
that `systemd-analyze verify` accepts (staged under DESTDIR)."""

import glob
import shutil
import subprocess

import pytest

from tests.kernel.nslab import REPO

UNITS = ("vpnsplit.service", "vpnsplit-watch.service", "vpnsplit-default@provider.service")


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    dest = tmp_path_factory.mktemp("stage") / "root"
    argv = ["make", "-C", str(REPO), "install", f"DESTDIR={dest}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def test_make_install_hooks_work_from_the_install_dir(ns, staged):
    dest = staged
    libdir = dest / "usr/lib/vpnsplit"
    assert {p.name for p in libdir.iterdir()} >= {"up", "down", "wg-up", "wg-down", "vpnsplit-hook", "venv"}
    assert (dest / "etc/vpnsplit/vpnsplit.toml").read_text() == (REPO / "configs/vpnsplit.toml").read_text()
    # installing again never overwrites an edited config
    (dest / "etc/vpnsplit/vpnsplit.toml").write_text("# mine\n")
    assert subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}"], capture_output=True, timeout=600).returncode == 0
    assert (dest / "etc/vpnsplit/vpnsplit.toml").read_text() == "# mine\n"

    ns.config = REPO / "configs/vpnsplit.toml"
    ns.add_tun("tun0", "10.8.0.2/24")
    envargs = [f"{k}={v}" for k, v in ns.env({"dev": "tun0"}).items()]
    up = ns.exec("/usr/bin/env", "-i", *envargs, libdir / "up", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init")
    assert up.returncode == 0, up.stderr
    assert (1000, "10.8.0.2/32", 100, 118) in ns.rules(100)
    status = ns.exec("/usr/bin/env", "-i", *envargs, dest / "usr/sbin/vpnsplit", "check")
    assert status.returncode == 0, status.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_verify_accepts_the_installed_units(staged, unit):
    """Offline, on the staged tree plus this system's targets (verify resolves sysinit.target
    etc. under --root): any message, a warning included, fails."""
    units = staged / "usr/lib/systemd/system"
    for target in glob.glob("/lib/systemd/system/*.target"):
        shutil.copy(target, units)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={staged}", "--man=no", f"/usr/lib/systemd/system/{unit}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
