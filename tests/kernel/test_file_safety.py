"""Files (issue 4): the config's owner and mode, the state directory's modes, atomic writes
that never follow a planted symlink, damaged state files, a full or read-only state disk.

The full and read-only disks are tmpfs mounts made inside a private mount namespace
(`unshare -m`) around one hook run, so they vanish with that process and the host's
mounts are never touched.
"""

import json
import os
import stat
import subprocess

import pytest

from tests.kernel.nslab import HOOKS

CONFIG = '[tunnel.provider]\ndevice = "tun0"\ntable = 100\npriority = 1000\nalias = "10.192.8.1"\n'
UP = ("tun0", "10.8.0.2", "255.255.255.0")


@pytest.fixture
def tun0(ns):
    ns.write_config(CONFIG)
    ns.add_tun("tun0", "10.8.0.2/24")
    return ns


def up(ns, **kw):
    return ns.openvpn("up", *UP, **kw)


def clean_up_state(ns, tmp_path):
    """The kernel state a clean `up` gives, in a state directory of its own; then back to none."""
    other = ns.env({"VPNSPLIT_STATE_DIR": str(tmp_path / "clean-state")})
    assert ns.openvpn("up", *UP, env=other).returncode == 0
    state = ns.dump()
    assert ns.openvpn("down", *UP, env=other).returncode == 0
    return state


def no_traceback(proc):
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


# -- the config file ---------------------------------------------------------------------------

@pytest.mark.parametrize("owner, mode", [(0, 0o664), (0, 0o646), (65534, 0o644), (65534, 0o600)])
def test_config_not_root_owned_or_writable_by_others_is_refused(tun0, owner, mode):
    os.chown(tun0.config, owner, -1)
    tun0.config.chmod(mode)
    before = tun0.dump()
    proc = up(tun0)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"must be owned by root and not group/world-writable (uid {owner}, mode {mode:04o})" in proc.stderr
    assert f"chmod go-w {tun0.config}" in proc.stderr  # the fix, in the same line
    assert tun0.dump() == before


def test_a_root_owned_config_readable_only_by_root_is_fine(tun0):
    tun0.config.chmod(0o600)
    assert up(tun0).returncode == 0


# -- the state directory -----------------------------------------------------------------------

def test_the_state_directory_is_created_0755_and_root_owned(tun0):
    old = os.umask(0)  # the hook must not depend on a friendly umask to be safe...
    try:
        proc = up(tun0)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    st = os.lstat(tun0.state_dir)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0
    for name in ("provider.json", "provider.addr"):
        assert not os.lstat(tun0.state_dir / name).st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@pytest.mark.parametrize("kind", ["world-writable", "group-writable", "symlink", "foreign-owner", "file"])
def test_an_unsafe_state_directory_is_refused_before_any_change(tun0, tmp_path, kind):
    real = tmp_path / "real-state"
    real.mkdir(mode=0o755)
    if kind == "symlink":
        tun0.state_dir.symlink_to(real)
    elif kind == "file":
        tun0.state_dir.write_text("")
    else:
        tun0.state_dir.mkdir()
        tun0.state_dir.chmod({"world-writable": 0o777, "group-writable": 0o775, "foreign-owner": 0o755}[kind])
        if kind == "foreign-owner":
            os.chown(tun0.state_dir, 65534, 65534)
    before = tun0.dump()
    proc = up(tun0)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"state directory {tun0.state_dir}:" in proc.stderr
    assert tun0.dump() == before
    assert list(real.iterdir()) == []  # nothing written through the link either


# -- writes never follow a planted symlink -------------------------------------------------------

def run_as_pid_1(ns, *hook_args, env):
    """Run a hook as pid 1 of a new pid namespace, so its temp file names (NAME.json.tmp<pid>) are known."""
    envargs = [f"{k}={v}" for k, v in ns.env(env).items()]
    argv = ["unshare", "--pid", "--fork", "ip", "netns", "exec", ns.name, "/usr/bin/env", "-i", *envargs, str(HOOKS / "up"), *hook_args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_planted_symlinks_in_the_state_directory_are_replaced_never_followed(tun0, tmp_path):
    tun0.state_dir.mkdir(mode=0o755)
    victims = {}
    for name in ("provider.json", "provider.addr", "provider.json.tmp1", "provider.addr.tmp1", "lock"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text(f"precious {name}\n")
        victims[name] = victim
        (tun0.state_dir / name).symlink_to(victim)
    ovpn = {"dev": "tun0", "dev_type": "tun", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"}
    proc = run_as_pid_1(tun0, "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init", env=ovpn)
    assert proc.returncode == 0, proc.stderr
    for name, victim in victims.items():
        assert victim.read_text() == f"precious {name}\n", name
    for name in ("provider.json", "provider.addr", "lock"):
        assert stat.S_ISREG(os.lstat(tun0.state_dir / name).st_mode), name  # the link itself was replaced
    for name in ("provider.json.tmp1", "provider.addr.tmp1"):
        assert not os.path.lexists(tun0.state_dir / name), name  # the stale temp name was removed, not written through
    assert json.loads((tun0.state_dir / "provider.json").read_text())["lease"]["local4"] == "10.8.0.2/24"
    assert (tun0.state_dir / "provider.addr").read_text() == "10.8.0.2\n"


def test_down_removes_planted_links_without_touching_their_targets(tun0, tmp_path):
    assert up(tun0).returncode == 0
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("provider.json", "provider.addr"):
        (tun0.state_dir / name).unlink()
        (tun0.state_dir / name).symlink_to(victim)
    proc = tun0.openvpn("down", *UP)
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert victim.read_text() == "precious\n"
    assert up(tun0).returncode == 0  # the next up replaces the links with records
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG(os.lstat(tun0.state_dir / "provider.json").st_mode)


# -- a damaged state file ------------------------------------------------------------------------

DAMAGED = {
    "truncated": b'{"lease": {"device": "tun0", "dev_',
    "empty": b"",
    "binary": bytes(range(256)),
    "not an object": b"[1, 2, 3]\n",
    "bad address": b'{"lease": {"device": "tun0", "dev_type": "tun", "local4": "10.8.0.999/24"}}\n',
    "bad dev_type": b'{"lease": {"device": "tun0", "dev_type": "ppp", "local4": "10.8.0.2/24"}}\n',
    "number as address": b'{"lease": {"device": "tun0", "dev_type": "tun", "local4": 5}}\n',
    "huge": b"[" * (1 << 20),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_state_file_is_named_and_up_converges(tun0, tmp_path, damage):
    wanted = clean_up_state(tun0, tmp_path)
    tun0.state_dir.mkdir(mode=0o755)
    (tun0.state_dir / "provider.json").write_bytes(DAMAGED[damage])
    before = tun0.dump()
    for cmd in ("status", "check"):
        proc = tun0.vpnsplit(cmd, "provider")
        no_traceback(proc)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"state file {tun0.state_dir}/provider.json: damaged" in proc.stderr
        assert "vpnsplit down provider" in proc.stderr  # the way out, in the same line
    assert tun0.dump() == before
    proc = up(tun0)  # the hook overwrites the damaged record
    assert proc.returncode == 0, proc.stderr
    assert tun0.dump() == wanted
    assert tun0.vpnsplit("check").returncode == 0
    (tun0.state_dir / "provider.json").write_bytes(DAMAGED[damage])
    proc = tun0.vpnsplit("up", "provider")  # and so does `vpnsplit up NAME`, from the device
    assert proc.returncode == 0, proc.stderr
    assert tun0.dump() == wanted and tun0.vpnsplit("check").returncode == 0


def test_a_fifo_planted_as_the_state_file_does_not_hang_a_run(tun0, tmp_path):
    wanted = clean_up_state(tun0, tmp_path)
    tun0.state_dir.mkdir(mode=0o755)
    os.mkfifo(tun0.state_dir / "provider.json")
    proc = tun0.vpnsplit("status", "provider")
    assert proc.returncode == 2 and "provider.json" in proc.stderr, proc.stderr
    proc = up(tun0)  # timeout=60 in nslab: a blocking open would fail the test, not hang it
    assert proc.returncode == 0, proc.stderr
    assert tun0.dump() == wanted
    assert stat.S_ISREG(os.lstat(tun0.state_dir / "provider.json").st_mode)


def test_a_directory_planted_as_the_state_file_rolls_back_cleanly(tun0):
    tun0.state_dir.mkdir(mode=0o755)
    (tun0.state_dir / "provider.json").mkdir()
    before = tun0.dump()
    proc = up(tun0)
    no_traceback(proc)
    assert proc.returncode == 1
    assert "'record state' failed" in proc.stderr and "provider.json: cannot write" in proc.stderr
    assert "rolled back" in proc.stderr
    assert tun0.dump() == before


def test_a_stale_lock_file_does_not_block(tun0):
    tun0.state_dir.mkdir(mode=0o755)
    (tun0.state_dir / "lock").write_text("12345\n")  # left by a run that died: flock went with it
    proc = up(tun0, env={"VPNSPLIT_LOCK_TIMEOUT": "2"})
    assert proc.returncode == 0, proc.stderr


# -- a full or read-only state disk ----------------------------------------------------------------

def run_on_tmpfs(ns, hook_args, env, setup):
    """Run hooks/up with a 16 KiB tmpfs on the state directory, in a private mount namespace.

    *setup* is shell run after the mount with "$d" = the state directory (fill it, remount it ro).
    """
    ns.state_dir.mkdir(mode=0o755, exist_ok=True)
    envargs = [f"{k}={v}" for k, v in ns.env(env).items()]
    script = f'd="$1"; shift; mount -t tmpfs -o size=16k,mode=0755 vpnsplit-test "$d" && {setup} && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(ns.state_dir),
            "ip", "netns", "exec", ns.name, "/usr/bin/env", "-i", *envargs, str(HOOKS / "up"), *hook_args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


OVPN_ENV = {"dev": "tun0", "dev_type": "tun", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"}
SIX = ("tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init")


def test_a_full_state_disk_rolls_back_every_kernel_change(tun0, tmp_path):
    wanted = clean_up_state(tun0, tmp_path)
    before = tun0.dump()
    proc = run_on_tmpfs(tun0, SIX, OVPN_ENV, 'dd if=/dev/zero of="$d/fill" bs=1k count=64 2>/dev/null; true')
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert "'record state' failed" in last and "No space left on device" in last and "rolled back the" in last, proc.stderr
    assert tun0.dump() == before  # every rule, route, alias and nft entry of the run undone
    assert list(tun0.state_dir.iterdir()) == []  # the tmpfs went with the mount namespace
    proc = up(tun0)  # with room again, the next run converges
    assert proc.returncode == 0, proc.stderr
    assert tun0.dump() == wanted


@pytest.mark.parametrize("with_lock", [False, True], ids=["fresh", "lock-file-present"])
def test_a_read_only_state_disk_fails_clearly_and_changes_nothing(tun0, with_lock):
    before = tun0.dump()
    setup = ('touch "$d/lock" && ' if with_lock else "") + 'mount -o remount,ro "$d"'
    proc = run_on_tmpfs(tun0, SIX, OVPN_ENV, setup)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert "Read-only file system" in proc.stderr.splitlines()[-1], proc.stderr
    assert tun0.dump() == before
