"""Issue 4, section 1: fail closed, and drift detected and repaired.

The host's namespace gets an "outside" link: a veth pair to a second namespace that stands
for the ISP, with the host's default routes through it. A sender loops on the alias (UDP,
IPv4 and IPv6, with IP_TRANSPARENT so it keeps sending even while the alias address is
absent) while the tunnel goes through its whole life. nft counters in the ISP namespace
count every datagram of that sender that arrives there, and every packet sourced from the
alias or a tunnel address: with `strict`, both must stay zero at every moment. The same
sender against a non-strict tunnel does leak, which shows the counters can see a leak.
"""

import json
import subprocess
import sys
import time

import pytest

from tests.kernel.convergence import (
    CONFIG,
    batched,
    canon,
    down_provider,
    fresh_lab,
    move_provider,
    ok,
    state_files,
    up_provider,
    up_work,
)
from tests.kernel.nslab import PROVIDER, NetnsLab

PORT, CONTROL_PORT = 40404, 40405
INTERNET4, INTERNET6 = "203.0.113.10", "2001:db8:1::10"  # documentation ranges, reached only via the ISP

SENDER = r"""
import collections, errno, json, os, socket, sys, time
alias4, alias6, stop, limit, port, control = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75

def bound(family, level, option, alias):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(level, option, 1)  # bind and send even while the alias is not on any device
    s.bind((alias, 0))
    return s

probes = [("alias4", bound(socket.AF_INET, socket.IPPROTO_IP, IP_TRANSPARENT, alias4), ("203.0.113.10", port)),
          ("alias6", bound(socket.AF_INET6, socket.IPPROTO_IPV6, IPV6_TRANSPARENT, alias6), ("2001:db8:1::10", port))]
controls = [("control4", socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("203.0.113.10", control)),
            ("control6", socket.socket(socket.AF_INET6, socket.SOCK_DGRAM), ("2001:db8:1::10", control))]
tried, sent, errors = collections.Counter(), collections.Counter(), collections.Counter()
print("ready", flush=True)
deadline, n = time.monotonic() + limit, 0
while not os.path.exists(stop) and time.monotonic() < deadline:
    for name, s, dst in probes + (controls if n % 25 == 0 else []):
        tried[name] += 1
        try:
            s.sendto(b"vpnsplit leak probe", dst)
            sent[name] += 1
        except OSError as e:
            errors[f"{name} {errno.errorcode.get(e.errno, e.errno)}"] += 1
    n += 1
    time.sleep(0.0005)
print(json.dumps({"tried": tried, "sent": sent, "errors": errors}))
"""

ISP_COUNTERS = f"""
table inet count {{
    counter probe4 {{}}
    counter probe6 {{}}
    counter from_ours4 {{}}
    counter from_ours6 {{}}
    counter control4 {{}}
    counter control6 {{}}
    chain ingress {{
        type filter hook prerouting priority -400; policy accept;
        iifname "wan0" meta nfproto ipv4 udp dport {PORT} counter name "probe4"
        iifname "wan0" meta nfproto ipv6 udp dport {PORT} counter name "probe6"
        iifname "wan0" ip saddr {{ 10.192.0.0/16, 10.8.0.0/16 }} counter name "from_ours4"
        iifname "wan0" ip6 saddr {{ fd10:192::/32, fd00:8::/32 }} counter name "from_ours6"
        iifname "wan0" meta nfproto ipv4 udp dport {CONTROL_PORT} counter name "control4"
        iifname "wan0" meta nfproto ipv6 udp dport {CONTROL_PORT} counter name "control6"
    }}
}}
"""

# In the host: what the alias sender puts on the tunnel, after SNAT.
TUNNEL_COUNTERS = f"""
table inet probe {{
    counter via_tunnel {{}}
    chain out {{
        type filter hook postrouting priority 300; policy accept;
        oifname "tun0" udp dport {PORT} counter name "via_tunnel"
    }}
}}
"""


def counters(ns, table):
    out = json.loads(ns.exec("nft", "-j", "list", "counters", "table", "inet", table, check=True).stdout)["nftables"]
    return {c["counter"]["name"]: c["counter"]["packets"] for c in out if "counter" in c}


@pytest.fixture
def isp(ns, tmp_path):
    """The outside world: a second namespace behind a veth pair, the host's default routes through it."""
    where = tmp_path / "isp"
    where.mkdir()
    other = NetnsLab(where)
    try:
        ns.ip("link", "add", "wan0", "type", "veth", "peer", "name", "wan0", "netns", other.name)
        for lab, host in ((ns, 2), (other, 1)):
            lab.exec("sysctl", "-qw", "net.ipv6.conf.wan0.accept_dad=0", check=True)  # usable at once, link-local too
            lab.ip("addr", "add", f"192.0.2.{host}/24", "dev", "wan0")
            lab.ip("-6", "addr", "add", f"2001:db8:ffff::{host}/64", "dev", "wan0", "nodad")
            lab.ip("link", "set", "wan0", "up")
        ns.ip("route", "add", "default", "via", "192.0.2.1")
        ns.ip("-6", "route", "add", "default", "via", "2001:db8:ffff::1")
        for dst in ("192.0.2.1", "2001:db8:ffff::1"):  # neighbours resolved before anything is counted
            assert ns.exec("ping", "-c", "1", "-w", "5", dst).returncode == 0, f"the ISP link does not work ({dst})"
        other.nft(ISP_COUNTERS)
        yield other
    finally:
        other.close()


class Sender:
    """The alias sender, looping inside the host namespace until stopped."""

    def __init__(self, ns, alias4, alias6, limit=60):
        self.stop = ns.tmp / "stop-sender"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-I", "-c", SENDER, alias4, alias6, str(self.stop), str(limit), str(PORT), str(CONTROL_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr.read()

    def finish(self):
        self.stop.touch()
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


LEAK_CONFIG = PROVIDER + "{extra}\n"

HOLD = 0.25  # seconds the sender runs in each phase


def _add_tun0(ns, v4="10.8.0.2/24", v6="fd00:8::1000/64"):
    ns.add_tun("tun0", v4, v6)


@pytest.mark.parametrize("alias_device", ["tun0", "lo"])
def test_strict_alias_never_leaks_through_the_whole_tunnel_life(ns, isp, alias_device):
    ns.write_config(LEAK_CONFIG.format(extra=f'alias_device = "{alias_device}"' if alias_device == "lo" else ""))
    ns.nft(TUNNEL_COUNTERS)
    # before the first up: the boot-time `vpnsplit down` has put the fail-closed skeleton in place
    ok(ns.vpnsplit("down", "provider"))
    sender = Sender(ns, "10.192.8.1", "fd10:192::1")
    phases = []

    def phase(name, *actions):
        for action in actions:
            action()
        time.sleep(HOLD)
        phases.append((name, counters(isp, "count"), counters(ns, "probe")["via_tunnel"]))

    try:
        phase("before the first up")
        phase("device appears, up hook not run yet", lambda: _add_tun0(ns))
        phase("up", lambda: ok(up_provider(ns)))
        phase("restart with a new address (persist-tun)", lambda: move_provider(ns),
              lambda: ok(up_provider(ns, "10.8.0.7", "fd00:8::1007", "restart")))
        phase("reconnect: tun closed, down hook", lambda: ns.ip("link", "del", "tun0"),
              lambda: ok(down_provider(ns, "10.8.0.7", "fd00:8::1007")))
        phase("reconnect: new tun, up hook", lambda: _add_tun0(ns, "10.8.0.9/24", "fd00:8::1009/64"),
              lambda: ok(up_provider(ns, "10.8.0.9", "fd00:8::1009")))
        phase("vpnsplit down", lambda: ok(ns.vpnsplit("down", "provider")))
        phase("vpnsplit up", lambda: ok(ns.vpnsplit("up", "provider")))
        phase("device vanished without down (kill -9 of the client)", lambda: ns.ip("link", "del", "tun0"))
        phase("vpnsplit check, then up refused while the device is gone",
              lambda: ns.vpnsplit("check"), lambda: ns.vpnsplit("up", "provider"))
        report = sender.finish()
    finally:
        sender.kill()

    leaks = [(name, c) for name, c, _ in phases if c["probe4"] or c["probe6"] or c["from_ours4"] or c["from_ours6"]]
    assert not leaks, f"leaked through the ISP link: {leaks}"
    final = counters(isp, "count")
    assert final["probe4"] == final["probe6"] == final["from_ours4"] == final["from_ours6"] == 0, final
    # the link works and the counters count: the host's own traffic got through
    assert final["control4"] > 0 and final["control6"] > 0, (final, report)
    # the sender really sent: it reached the tunnel while up, and kept trying all along
    assert phases[-1][2] > 0, phases
    assert report["tried"]["alias4"] > 100 and report["tried"]["alias6"] > 100, report
    print(f"alias on {alias_device}: {dict(report['tried'])} datagrams tried, {dict(report['sent'])} accepted by the kernel, "
          f"{phases[-1][2]} through tun0, 0 through the ISP link")


def test_without_strict_the_same_sender_does_leak(ns, isp):
    """The negative control: `strict = false` and no tunnel, so the alias falls through to
    the main table, and the ISP counters see it. (This is what `strict` exists to prevent.)"""
    ns.write_config(LEAK_CONFIG.format(extra='alias_device = "lo"\nstrict = false'))
    ns.ip("addr", "add", "10.192.8.1/32", "dev", "lo")
    ns.ip("-6", "addr", "add", "fd10:192::1/128", "dev", "lo", "nodad")
    sender = Sender(ns, "10.192.8.1", "fd10:192::1")
    try:
        ok(ns.vpnsplit("down", "provider"))
        time.sleep(HOLD)
        report = sender.finish()
    finally:
        sender.kill()
    seen = counters(isp, "count")
    assert seen["probe4"] > 0 and seen["probe6"] > 0 and seen["from_ours4"] > 0 and seen["from_ours6"] > 0, (seen, report, ns.ip("-6", "route"), ns.ip("-6", "rule"), ns.ip("-6", "neigh"))


# -- drift: `vpnsplit check` sees it, `vpnsplit up NAME` repairs it --------------------------

DRIFTS = {
    "rule deleted by hand": (
        lambda ns: ns.ip("rule", "del", "from", "10.8.0.2", "lookup", "100", "priority", "1000"),
        "missing: rule from 10.8.0.2/32 lookup 100 priority 1000",
    ),
    "table flushed": (
        lambda ns: (ns.ip("route", "flush", "table", "100"), ns.ip("-6", "route", "flush", "table", "100")),
        "missing: route unreachable 0.0.0.0/0 table 100",
    ),
    "nft table deleted by a firewall reload": (
        lambda ns: ns.exec("nft", "flush", "ruleset", check=True),
        "missing: snat 10.192.8.1 -> 10.8.0.2 out tun0",
    ),
    "alias removed": (
        lambda ns: ns.ip("addr", "del", "10.192.8.1/32", "dev", "tun0"),
        "missing: address 10.192.8.1/32 on tun0",
    ),
    "address changed underneath": (move_provider, "10.8.0.2"),
}


def _both_up(ns):
    ns.write_config(CONFIG)
    ns.add_tun("tun0", "10.8.0.2/24", "fd00:8::1000/64")
    ns.add_tun("tun1", "10.9.0.6", peer="10.9.0.5")
    with batched(ns) as quick:
        up_provider(quick)
        up_work(quick)


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_check_detects_drift_and_vpnsplit_up_repairs_it(ns, tmp_path, drift):
    make, named = DRIFTS[drift]
    moved = drift == "address changed underneath"
    with fresh_lab(tmp_path, "reference") as ref:  # what an uninterrupted hook run leaves
        _both_up(ref)
        if moved:
            move_provider(ref)
            with batched(ref) as quick:
                up_provider(quick, "10.8.0.7", "fd00:8::1007", "restart")
        want_kernel, want_files = canon(ref.dump()), state_files(ref)

    _both_up(ns)
    assert ok(ns.vpnsplit("check")).returncode == 0
    make(ns)
    check = ns.vpnsplit("check")
    assert check.returncode == 3, check.stderr
    assert "Traceback" not in check.stderr
    assert named in check.stderr, check.stderr
    if not drift.startswith("nft"):
        assert "tunnel work:" not in check.stderr, check.stderr  # the other tunnel is untouched and in sync

    ok(ns.vpnsplit("up", "provider"))
    if drift.startswith("nft"):
        ok(ns.vpnsplit("up", "work"))  # the firewall reload took every tunnel's NAT with it
    assert ok(ns.vpnsplit("check")).returncode == 0
    assert canon(ns.dump()) == want_kernel
    assert state_files(ns) == want_files
