"""Issue 15: a real `systemd-nspawn --network-bridge=br-vpn` container on the bridge vpnsplit
created reaches the internet host through the tunnel as the tunnel address (IPv4 and IPv6), and
with the tunnel down nothing from it reaches the isp.

The container's tree is a skeleton with the host's /usr bound read-only (nspawn wants an OS tree:
/usr and os-release), which takes no time and no Debian mirror; its payload is bash, whose
/dev/udp sends the datagrams. nspawn runs in the test's network namespace (nsenter --net: `ip
netns exec` would remount /sys without the cgroup hierarchy nspawn checks), in a mount namespace
of its own, without machined (--register=no) or a scope unit (--keep-unit: there is no systemd
PID 1 here). The host end of its veth (vb-webNNNN) is created in the test namespace, as a port of
br-vpn, and goes with the container.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.test_bridge import BRIDGE, CTR, connect_tunnel, link, world  # noqa: F401 (fixture)
from tests.kernel.test_sources_forward import FAMILIES, leaked

pytestmark = pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="needs systemd-nspawn (systemd-container)")
# nspawn with --keep-unit puts its processes in these cgroups at the root of each hierarchy
# one machine name per test run: nspawn keeps a lock and a directory by that name in /run/systemd/nspawn
MACHINE = f"web{os.getpid() % 10000}"
CGROUPS = [Path("/sys/fs/cgroup", h, g) for h in ("", "unified", "systemd") for g in ("payload", "supervisor")]

PAYLOAD = """
ip addr add {ctr4}/24 dev host0 && ip -6 addr add {ctr6}/64 dev host0 nodad && ip link set host0 up
ip route add default via 10.20.3.1 && ip -6 route add default via fd20:3::1
for dst in {dsts}; do echo hello > /dev/udp/$dst/{port} && echo "sent $dst" || echo "failed $dst"; done
read -r -t 10 _  # until the test has looked at the bridge's ports (or closes stdin)
"""


@pytest.fixture
def skeleton(tmp_path):
    root = tmp_path / "web"
    for d in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "root", "var/tmp"):
        (root / d).mkdir(parents=True)
    for d in ("bin", "sbin", "lib", "lib64"):
        (root / d).symlink_to(f"usr/{d}")
    shutil.copy("/etc/os-release", root / "etc/os-release")
    (root / "etc/machine-id").touch()
    before = [g for g in CGROUPS if g.is_dir()]
    yield root
    for g in CGROUPS:  # the empty cgroups nspawn made, not those that were there before
        if g.is_dir() and g not in before:
            for sub in sorted(g.rglob("*"), reverse=True):
                if sub.is_dir():
                    os.rmdir(sub)
            os.rmdir(g)


def nspawn(ns, root, port):
    """Run the container on br-vpn once: it addresses host0 and sends one datagram per family; (its output,
    the bridge's ports while it ran)."""
    script = PAYLOAD.format(ctr4=CTR[4], ctr6=CTR[6], dsts=" ".join(FAMILIES[f].internet for f in (4, 6)), port=port)
    argv = ["nsenter", f"--net=/run/netns/{ns.name}", "unshare", "--mount", "--propagation", "private", "--",
            "systemd-nspawn", "--quiet", "--pipe", "-D", str(root), "--bind-ro=/usr", "--register=no", "--keep-unit",
            f"--network-bridge={BRIDGE}", f"--machine={MACHINE}", "/usr/bin/bash", "-c", script]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            report = json.loads(ns.vpnsplit("status", "--json").stdout)["tunnels"][0]["bridge"]
            if report["ports"]:
                break
            time.sleep(0.1)
        out, err = proc.communicate("\n", timeout=60)
    finally:
        proc.kill()
    assert "sent" in out or "failed" in out, out + err
    return out, report["ports"]


def test_a_systemd_nspawn_container_on_the_bridge_leaves_through_the_tunnel(world, skeleton):
    ns, ctr, far, isp = world
    assert ns.vpnsplit("up", "--all").returncode == 0
    connect_tunnel(ns, far)
    proc = ns.vpnsplit("up", "vpn")
    assert proc.returncode == 0, proc.stderr
    listeners = {f: far.listen(FAMILIES[f].internet, 5007) for f in (4, 6)}
    out, ports = nspawn(ns, skeleton, 5007)
    assert ports == [f"vb-{MACHINE}"]  # nspawn's veth, a port of the bridge while the container runs
    seen = {f: listeners[f].communicate(timeout=10)[0].strip() for f in (4, 6)}
    assert seen == {f: f"{FAMILIES[f].tunnel} hello" for f in (4, 6)}, out
    assert link(ns, f"vb-{MACHINE}") is None and link(ns, BRIDGE) is not None  # the veth went with the container
    # the tunnel down: the container's datagrams are refused, none reaches the isp
    assert ns.vpnsplit("down", "vpn").returncode == 0
    nspawn(ns, skeleton, 5008)
    assert leaked(isp) == 0
