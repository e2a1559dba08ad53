"""Issue 4, section 2: crash consistency and the kernel refusing a step.

Every run of `up`, `up restart` and `down` is SIGKILLed after each of its steps in turn
(convergence.killing(ns, k), k = 1, 2, ... until a run finishes on its own, so the number
of kill points comes from the code and a new step is covered without touching this file).
After each kill, the next event runs and the whole kernel (rules, every table, addresses,
the full nft ruleset) and the state files must equal those of an uninterrupted run.
"""

import difflib
import json
import os
import pprint
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.kernel.convergence import (
    CONFIG,
    SIGKILLED,
    batched,
    canon,
    down_provider,
    fresh_lab,
    killing,
    move_provider,
    ok,
    state_files,
    up_provider,
    up_work,
)
from tests.kernel.nslab import REPO, WORK

PARALLEL = max(2, os.cpu_count() or 1)  # kill points tried at once, each in a namespace of its own


# provider also forwards a container subnet of each family, so the runs switch IPv4 forwarding
# and IPv6 force_forwarding (all.forwarding is 0 in a new namespace) on ctr0 and tun0
SOURCES = 'sources = ["10.20.1.0/24", "fd20:1::/64"]\n'


def base(ns):
    ns.write_config(CONFIG.replace(WORK, SOURCES + WORK))
    ns.add_container_link()
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.add_tun("tun1", "10.9.0.6", peer="10.9.0.5")
    ok(up_work(ns))  # another tunnel is up throughout: no kill may disturb it


def provider_is_up(ns):
    base(ns)
    ok(up_provider(ns))


def provider_moved(ns):
    provider_is_up(ns)
    move_provider(ns)


def provider_device_gone(ns):
    provider_is_up(ns)
    ns.ip("link", "del", "tun0")  # OpenVPN closed the tun before running down


def again_up(ns, env):
    return up_provider(ns, env=env)


def again_restart(ns, env):
    return up_provider(ns, "10.8.0.7", "fd00:8::1007", "restart", env=env)


def again_down(ns, env):
    return down_provider(ns, env=env)


def by_hand_up(ns, env):
    return ns.vpnsplit("up", "provider", env=env)


def by_hand_down(ns, env):
    return ns.vpnsplit("down", "provider", env=env)


# name: (bring the namespace to the state before the event, the event, {next event: how})
SCENARIOS = {
    "up": (base, again_up, {"same hook": again_up, "vpnsplit up": by_hand_up}),
    "restart": (provider_moved, again_restart, {"same hook": again_restart, "vpnsplit up": by_hand_up}),
    "down": (provider_is_up, again_down, {"same hook": again_down, "reconnect": again_up}),
    "down-device-gone": (provider_device_gone, again_down, {"same hook": again_down, "vpnsplit down": by_hand_down}),
}
CASES = [(s, r) for s, (_, _, recoveries) in SCENARIOS.items() for r in recoveries]


def kernel(ns):
    """The full dump plus every forwarding switch: a kill between switching and recording must not lose one."""
    return {**canon(ns.dump()), "forwarding": ns.forwarding()}


def explain(want, got):
    a = pprint.pformat(want, width=160).splitlines()
    b = pprint.pformat(got, width=160).splitlines()
    return "\n".join(list(difflib.unified_diff(a, b, "uninterrupted", "killed+next", lineterm="", n=1))[:60])


def _kill_point(tmp_path, scenario, recovery, k):
    """Run the event killed after step k, then the next event. None if the event has fewer than k steps."""
    prefix, event, recoveries = SCENARIOS[scenario]
    with fresh_lab(tmp_path, f"{scenario}-{recovery}-{k}".replace(" ", "_")) as ns:
        with batched(ns) as quick:
            prefix(quick)
        killed = event(killing(ns, k), {})
        if killed.returncode == 0:
            return None
        assert killed.returncode in SIGKILLED, f"kill after step {k}: rc {killed.returncode}: {killed.stderr}"
        assert (ns.state_dir / "lock").exists()  # the dead holder's lock file stays behind...
        ok(recoveries[recovery](ns, {"VPNSPLIT_LOCK_TIMEOUT": "0"}))  # ...and the next run gets it at its one try
        return kernel(ns), state_files(ns), killed.stderr


@pytest.mark.parametrize("scenario,recovery", CASES, ids=[f"{s}-then-{r.replace(' ', '-')}" for s, r in CASES])
def test_sigkill_after_every_step_then_next_event_converges(tmp_path, scenario, recovery):
    prefix, event, recoveries = SCENARIOS[scenario]
    with fresh_lab(tmp_path, "reference") as ns:
        with batched(ns) as quick:
            prefix(quick)
        logged = ok(event(ns, {})).stderr.strip().splitlines()
        ok(recoveries[recovery](ns, {}))
        want_kernel, want_files = kernel(ns), state_files(ns)

    # The uninterrupted run logs each step it made plus one summary line: a first guess at the
    # number of steps. The kills decide: k = 1, 2, ... until a run is not killed because it
    # has fewer than k steps (a wrong guess only costs more rounds).
    results, tried = {}, 0
    with ThreadPoolExecutor(PARALLEL) as pool:
        batch = range(1, len(logged) + 1)
        while True:
            results.update(zip(batch, pool.map(lambda n: _kill_point(tmp_path, scenario, recovery, n), batch)))
            tried = batch[-1]
            if None in results.values():
                break
            batch = range(tried + 1, tried + 1 + PARALLEL)
    steps = min(n for n, r in results.items() if r is None) - 1
    assert steps >= 1, f"{scenario}: no step ran"
    for n in range(1, steps + 1):
        got, files, log = results[n]
        assert got == want_kernel, f"{scenario}, killed after step {n} ({log.splitlines()[-1:]}), then {recovery}:\n" + explain(want_kernel, got)
        assert files == want_files, f"{scenario}, killed after step {n}, then {recovery}: state {files} != {want_files}"
    print(f"{scenario} then {recovery}: {steps} kill points")


# -- the kernel refuses a step -----------------------------------------------------------

CONFLICTING_NFT = """
table inet vpnsplit {
    map snat4 {
        type ipv4_addr : ipv4_addr
        elements = { 192.0.2.1 : 192.0.2.2 }
    }
}
"""


def _refused(proc, step_words):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "failed" in last and step_words in last, last
    return last


def test_nft_table_unusable_on_first_up_rolls_back_everything(ns):
    """A map of another type sits where vpnsplit's snat4 belongs: the nft batch fails after
    the routes and aliases went in; they must all come out again."""
    base(ns)
    ns.exec("nft", "delete", "table", "inet", "vpnsplit")
    ns.nft(CONFLICTING_NFT)
    before, files = kernel(ns), state_files(ns)
    last = _refused(up_provider(ns), "nft batch in table inet vpnsplit")
    assert "rolled back the" in last, last
    assert kernel(ns) == before
    assert state_files(ns) == files


def test_nft_table_unusable_on_restart_keeps_the_old_state(ns):
    provider_is_up(ns)
    ns.exec("nft", "delete", "table", "inet", "vpnsplit", check=True)
    ns.nft(CONFLICTING_NFT)
    move_provider(ns)
    before, files = canon(ns.dump()), state_files(ns)
    assert files["provider.json"]["lease"]["local4"] == "10.8.0.2/24"
    _refused(again_restart(ns, {}), "nft batch in table inet vpnsplit")
    assert canon(ns.dump()) == before
    assert state_files(ns) == files  # the record still says 10.8.0.2: the new address never applied


def test_route_the_kernel_rejects_rolls_back(ns):
    """A tap carrying its address as a /32 (its subnet not connected): the gateway is not on-link
    and the kernel refuses the default route after the unreachable routes went in."""
    ns.write_config(CONFIG + '\n[tunnel.eth]\ndevice = "tap0"\ntable = 106\npriority = 1600\ngateway = "10.10.0.1"\nalias = "10.192.10.1"\n')
    ns.ip("tuntap", "add", "tap0", "mode", "tap")
    ns.ip("addr", "add", "10.10.0.2/32", "dev", "tap0")
    ns.ip("link", "set", "tap0", "up")
    ns.add_tun("tun1", "10.9.0.6", peer="10.9.0.5")
    ok(up_work(ns))
    before, files = canon(ns.dump()), state_files(ns)
    last = _refused(ns.openvpn("up", "tap0", "10.10.0.2", "255.255.255.0"), "add route 0.0.0.0/0 via 10.10.0.1 dev tap0")
    assert "rolled back the 2 step(s)" in last, last
    assert canon(ns.dump()) == before
    assert state_files(ns) == files


# Runs the up hook in-process with one change: the tunnel device is deleted just before the
# first step that needs it for an address, as when the VPN client dies in the middle of up.
VANISH = """
import subprocess, sys
from vpnsplit import hooks, transaction
real = transaction.run
def run(steps):
    for step in steps:
        if step.name.startswith("add address"):
            do = step.do
            def vanish(do=do):
                subprocess.run(["/usr/sbin/ip", "link", "del", "tun0"], check=True)
                return do()
            step.do = vanish
            break
    return real(steps)
transaction.run = run
sys.exit(hooks.main(sys.argv[1:]))
"""


def test_device_vanishing_mid_run_rolls_back(ns):
    base(ns)
    before = canon(ns.dump())
    files = state_files(ns)
    env = {"dev": "tun0", "dev_type": "tun", "script_type": "up", "script_context": "init", "ifconfig_local": "10.8.0.2",
           "ifconfig_netmask": "255.255.255.0", "ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64"}
    proc = ns.exec("/usr/bin/env", "-i", *[f"{k}={v}" for k, v in ns.env(env).items()], REPO / ".venv/bin/python3", "-I", "-c", VANISH,
                   "up", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init")
    last = _refused(proc, "add address 10.192.8.1/32 on tun0")
    assert "does not exist" in last and "rolled back the" in last, last
    # everything but the device itself (and what the kernel hung on it) is as before
    gone = lambda d: {  # noqa: E731
        **d,
        "routes": [r for r in d["routes"] if r["dev"] != "tun0"],
        "addresses": [a for a in d["addresses"] if a[0] != "tun0"],
    }
    assert canon(ns.dump()) == gone(before)
    assert state_files(ns) == files


STALE_HOLDER = """
import filelock, sys, time
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_stale_lock_of_a_sigkilled_holder_does_not_block(ns):
    base(ns)
    ns.state_dir.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", STALE_HOLDER, str(ns.state_dir / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        blocked = up_provider(ns, env={"VPNSPLIT_LOCK_TIMEOUT": "0.3"})
        assert blocked.returncode == 1 and "held it for more than 0.3s" in blocked.stderr, blocked.stderr
    finally:
        holder.kill()
        holder.wait()
    assert (ns.state_dir / "lock").exists()
    start = time.monotonic()
    ok(up_provider(ns, env={"VPNSPLIT_LOCK_TIMEOUT": "0.3"}))
    assert time.monotonic() - start < 5
    assert json.loads((ns.state_dir / "provider.json").read_text())["lease"]["local4"] == "10.8.0.2/24"
