"""`make install` gives hooks that run from /usr/lib/vpnsplit with no PATH (staged under DESTDIR)."""

import subprocess

from tests.kernel.nslab import REPO


def test_make_install_hooks_work_from_the_install_dir(ns, tmp_path):
    dest = tmp_path / "root"
    proc = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
