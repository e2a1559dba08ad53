"""Issue 2, items 6 and 7: runs serialised by the lock, and bad input refused before any change."""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import filelock
import pytest

from tests.kernel.nslab import HOOKS, PROTO

TUNNELS = 3


def _config(n):
    return "".join(
        f'[tunnel.t{i}]\ndevice = "tun{i}"\ntable = {200 + i}\npriority = {2000 + 10 * i}\nalias = "10.192.{i}.1"\n\n' for i in range(n)
    )


def test_concurrent_hooks_end_in_the_state_of_the_last_run(ns):
    ns.write_config(_config(TUNNELS))
    for i in range(TUNNELS):
        ns.add_tun(f"tun{i}", f"10.8.{i}.2/24")
        ns.ip("addr", "add", f"10.8.{i}.3/24", "dev", f"tun{i}")
    # 12 runs at once: every tunnel flips between two addresses, then one last run each
    calls = [(i, f"10.8.{i}.{2 + k % 2}", "init" if k == 0 else "restart") for k in range(4) for i in range(TUNNELS)]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        results = list(pool.map(lambda c: ns.openvpn("up", f"tun{c[0]}", c[1], "255.255.255.0", c[2]), calls))
    assert [r.returncode for r in results] == [0] * len(calls), [r.stderr for r in results if r.returncode]
    for i in range(TUNNELS):
        ok = ns.openvpn("up", f"tun{i}", f"10.8.{i}.3", "255.255.255.0", "restart")
        assert ok.returncode == 0, ok.stderr
    for i in range(TUNNELS):
        assert ns.rules(200 + i) == [(2000 + 10 * i, f"10.8.{i}.3/32", 200 + i, PROTO), (2001 + 10 * i, f"10.192.{i}.1/32", 200 + i, PROTO)]
    assert ns.snat() == {(f"10.192.{i}.1", f"tun{i}"): f"10.8.{i}.3" for i in range(TUNNELS)}
    assert ns.vpnsplit("check").returncode == 0


def test_a_run_waiting_too_long_for_the_lock_fails_clearly(ns):
    ns.write_config(_config(1))
    ns.add_tun("tun0", "10.8.0.2/24")
    ns.state_dir.mkdir(mode=0o755)
    before = ns.dump()
    with filelock.FileLock(str(ns.state_dir / "lock")):
        start = time.monotonic()
        proc = ns.openvpn("up", "tun0", "10.8.0.2", "255.255.255.0", env={"VPNSPLIT_LOCK_TIMEOUT": "0.5"})
        waited = time.monotonic() - start
    assert proc.returncode == 1
    assert "another vpnsplit run held it for more than 0.5s" in proc.stderr
    assert waited < 10  # it gave up instead of hanging (generous: process start-up included)
    assert ns.dump() == before


GOOD = '[tunnel.p]\ndevice = "tun0"\ntable = 100\npriority = 1000\nalias = "10.192.8.1"\n'

BAD_CONFIGS = {
    "table 0": (GOOD.replace("table = 100", "table = 0"), "table = 0"),
    "table 253": (GOOD.replace("table = 100", "table = 253"), "table = 253"),
    "table 254": (GOOD.replace("table = 100", "table = 254"), "table = 254"),
    "table 255": (GOOD.replace("table = 100", "table = 255"), "table = 255"),
    "table as string": (GOOD.replace("table = 100", 'table = "100"'), "table = '100'"),
    "duplicate table": (GOOD + '[tunnel.q]\ndevice = "tun1"\ntable = 100\npriority = 1100\n', "table 100 is already used"),
    "duplicate priority": (GOOD + '[tunnel.q]\ndevice = "tun1"\ntable = 101\npriority = 1002\n', "priority 1002 is already used"),
    "duplicate alias": (GOOD + '[tunnel.q]\ndevice = "tun1"\ntable = 101\npriority = 1100\nalias = "10.192.8.1"\n', "alias 10.192.8.1 is already used"),
    "priority kernel": (GOOD.replace("priority = 1000", "priority = 32766"), "priority = 32766"),
    "garbage alias": (GOOD.replace('"10.192.8.1"', '"10.192.8"'), "'10.192.8'"),
    "unknown key": (GOOD + 'tabel = 5\n', "'tabel'"),
    "not toml": ("[tunnel.p\n", "not valid TOML"),
}

# (six positional arguments, environment, what the message must name)
BAD_CALLS = {
    "missing addresses": (["tun0", "1500", "0", "", "", "init"], {"dev": "tun0"}, "no tunnel address"),
    "garbage address": (["tun0", "1500", "0", "10.8.0.x", "255.255.255.0", "init"], {"dev": "tun0"}, "'10.8.0.x'"),
    "garbage netmask": (["tun0", "1500", "0", "10.8.0.2", "255.0.255.0", "init"], {"dev": "tun0", "ifconfig_netmask": "255.0.255.0"}, "'255.0.255.0'"),
    "unknown device": (["tun7", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"dev": "tun7"}, "device 'tun7' has no [tunnel.*] section"),
    "alias is the tunnel address": (["tun0", "1500", "0", "10.192.8.1", "255.255.255.0", "init"], {"dev": "tun0"}, "alias 10.192.8.1 equals"),
    "shell in device": (["tun0;reboot", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"dev": "tun0;reboot"}, "'tun0;reboot'"),
    "loopback address": (["tun0", "1500", "0", "127.0.0.2", "255.255.255.0", "init"], {"dev": "tun0"}, "'127.0.0.2' is a loopback"),
    "args disagree with env": (["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"dev": "tun0", "ifconfig_local": "10.8.0.3"}, "disagrees"),
    "stray word": (["--bogus", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], {"dev": "tun0"}, "'--bogus'"),
}


@pytest.fixture
def tun0(ns):
    ns.add_tun("tun0", "10.8.0.2/24")
    return ns


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_line_and_changes_nothing(tun0, case):
    text, named = BAD_CONFIGS[case]
    tun0.write_config(text)
    before = tun0.dump()
    proc = tun0.hook("up", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init", env={"dev": "tun0"})
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and named in proc.stderr, proc.stderr
    assert tun0.dump() == before


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_hook_call_exits_2_with_one_line_and_changes_nothing(tun0, case):
    args, env, named = BAD_CALLS[case]
    tun0.write_config(GOOD)
    before = tun0.dump()
    proc = tun0.hook("up", *args, env=env)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and named in proc.stderr, proc.stderr
    assert tun0.dump() == before


def test_bad_down_call_still_exits_0(tun0):
    tun0.write_config(GOOD)
    proc = tun0.hook("down", "tun9", "1500", "0", "", "", "init", env={"dev": "tun9"})
    assert proc.returncode == 0
    assert "has no [tunnel.*] section" in proc.stderr and "exiting 0 anyway" in proc.stderr


def test_hooks_need_no_path(tun0):
    """OpenVPN gives hooks no PATH: the entry point must find its interpreter by itself."""
    tun0.write_config(GOOD)
    proc = subprocess.run(["ip", "netns", "exec", tun0.name, "/usr/bin/env", "-i", f"VPNSPLIT_CONFIG={tun0.config}",
                           f"VPNSPLIT_STATE_DIR={tun0.state_dir}", "dev=tun0", str(HOOKS / "up"),
                           "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (1000, "10.8.0.2/32", 100, PROTO) in tun0.rules(100)


def test_missing_nftables_binding_is_one_clear_line_and_changes_nothing(tun0):
    """Debian's python3-nftables missing (or a venv without system site-packages)."""
    from tests.kernel.nslab import VPNSPLIT

    tun0.write_config(GOOD)
    before = tun0.dump()
    code = ("import sys; sys.modules['nftables'] = None; from vpnsplit.hooks import main; "
            "sys.exit(main(['up', 'tun0', '1500', '0', '10.8.0.2', '255.255.255.0', 'init']))")
    envargs = [f"{k}={v}" for k, v in tun0.env({"dev": "tun0"}).items()]
    proc = tun0.exec("/usr/bin/env", "-i", *envargs, VPNSPLIT[0], "-I", "-c", code)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "apt install python3-nftables" in proc.stderr, proc.stderr
    assert tun0.dump() == before
