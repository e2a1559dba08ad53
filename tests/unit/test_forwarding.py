"""Which forwarding switches a run flips, against a fake /proc/sys/net (no root, any kernel):
IPv6 force_forwarding where the kernel has it, today's warning where it does not."""

import ipaddress
import json
import logging

import pytest

from vpnsplit import config, state, sysctl
from vpnsplit.kernel import Kernel
from vpnsplit.lease import Lease

DEVICES = ("all", "default", "lo", "tun0", "ctr0")


@pytest.fixture
def proc(tmp_path, monkeypatch):
    """A fake /proc/sys/net with every switch off; force_forwarding=False drops IPv6's per-device switch (before 6.17)."""

    def make(force_forwarding=True):
        for version in (4, 6):
            for dev in DEVICES:
                d = tmp_path / f"ipv{version}" / "conf" / dev
                d.mkdir(parents=True, exist_ok=True)
                (d / "forwarding").write_text("0\n")
                if version == 6 and force_forwarding:
                    (d / "force_forwarding").write_text("0\n")
        monkeypatch.setattr(sysctl, "PROC", str(tmp_path))
        return tmp_path

    return make


def read(root, version, dev, key):
    return (root / f"ipv{version}" / "conf" / dev / key).read_text().strip()


TUNNEL = config.parse({"tunnel": {"p": {"device": "tun0", "table": 100, "priority": 1000,
                                        "sources": ["10.20.1.0/24", "fd20:1::/64"]}}}).tunnels["p"]
LEASE = Lease(device="tun0", local4=ipaddress.ip_interface("10.8.0.2/24"), local6=ipaddress.ip_interface("fd08::2/64"))
NONE = {4: frozenset(), 6: frozenset()}


@pytest.fixture(scope="module")
def kernel():
    """A Kernel whose main table connects the sources of both families on ctr0."""
    k = Kernel()
    k.nl.connected_device = lambda net: "ctr0"
    yield k
    k.close()


def run(kernel, switched_before, lease, statedir=None):
    claimed = statedir.claimed_elsewhere if statedir else (lambda name: {})
    offs, ons, switched = sysctl.switch_steps(kernel, switched_before, TUNNEL, lease, claimed=lambda: claimed("p"))
    for step in offs + ons:
        step.do()
    return [s.name for s in offs + ons], switched


def test_per_device_switch_on_where_off_and_back_exactly_there(proc, kernel):
    root = proc()
    (root / "ipv6/conf/tun0/force_forwarding").write_text("1\n")  # the admin's
    names, switched = run(kernel, NONE, LEASE)
    assert names == ["enable IPv4 forwarding on ctr0", "enable IPv4 forwarding on tun0", "enable IPv6 forwarding (force_forwarding) on ctr0"]
    assert switched == {4: {"ctr0", "tun0"}, 6: {"ctr0"}, "mark": set(), "localnet": set()}
    assert read(root, 6, "ctr0", "force_forwarding") == "1"
    assert all(read(root, 6, dev, "forwarding") == "0" for dev in DEVICES)  # RA acceptance untouched
    names, switched = run(kernel, {4: {"ctr0", "tun0"}, 6: {"ctr0"}}, None)
    assert names == ["switch IPv4 forwarding on ctr0 back off", "switch IPv4 forwarding on tun0 back off",
                     "switch IPv6 forwarding (force_forwarding) on ctr0 back off"]
    assert (read(root, 6, "ctr0", "force_forwarding"), read(root, 6, "tun0", "force_forwarding")) == ("0", "1")


def test_all_forwarding_on_switches_nothing_for_ipv6(proc, kernel):
    root = proc()
    (root / "ipv6/conf/all/forwarding").write_text("1\n")
    names, switched = run(kernel, NONE, LEASE)
    assert switched[6] == set() and not any("IPv6" in n for n in names)


def test_kernel_without_force_forwarding_warns_and_switches_only_ipv4(proc, caplog, kernel):
    root = proc(force_forwarding=False)
    with caplog.at_level(logging.WARNING, "vpnsplit"):
        names, switched = run(kernel, NONE, LEASE)
    assert switched == {4: {"ctr0", "tun0"}, 6: set(), "mark": set(), "localnet": set()} and not any("IPv6" in n for n in names)
    assert "IPv6 sources are not forwarded: set net.ipv6.conf.all.forwarding = 1" in caplog.text
    assert not sysctl.per_device6() and sysctl.forwarding("ctr0", 6) is False
    assert not (root / "ipv6/conf/ctr0/force_forwarding").exists()


def test_record_without_forwarding6_loads_and_switches_nothing_back(proc, tmp_path, kernel):
    proc()
    d = tmp_path / "state"
    d.mkdir()
    # a record written before IPv6 forwarding was switched per device
    (d / "p.json").write_text(json.dumps({"tunnel": "p", "lease": LEASE.to_json(), "forwarding": ["ctr0"], "when": "2026-01-01T00:00:00+00:00"}))
    statedir = state.StateDir(str(d))
    record = statedir.record("p")
    assert record.lease == LEASE and record.forwarding == {4: {"ctr0"}, 6: set(), "mark": set(), "localnet": set()}
    names, _ = run(kernel, record.forwarding, None)
    assert names == ["switch IPv4 forwarding on ctr0 back off"]
    statedir.write("p", LEASE, {4: {"ctr0"}, 6: {"tun0", "ctr0"}})
    doc = json.loads((d / "p.json").read_text())
    assert (doc["forwarding"], doc["forwarding6"]) == (["ctr0"], ["ctr0", "tun0"])
    assert statedir.record("p").forwarding == {4: {"ctr0"}, 6: {"ctr0", "tun0"}, "mark": set(), "localnet": set()}


def test_down_switches_nothing_off_while_the_host_wide_switch_is_on(proc, kernel):
    """ip_forward=1 rewrites every device's value: 'switched on after us' cannot be told per device."""
    root = proc()
    names, switched = run(kernel, NONE, LEASE)
    assert switched == {4: {"ctr0", "tun0"}, 6: {"ctr0", "tun0"}, "mark": set(), "localnet": set()}
    (root / "ipv4/conf/all/forwarding").write_text("1\n")
    names, _ = run(kernel, switched, None)
    assert names == ["switch IPv6 forwarding (force_forwarding) on ctr0 back off", "switch IPv6 forwarding (force_forwarding) on tun0 back off"]
    assert read(root, 4, "ctr0", "forwarding") == "1"


def test_down_keeps_a_device_another_tunnel_claims(proc, tmp_path, kernel):
    root = proc()
    d = tmp_path / "state"
    d.mkdir()
    statedir = state.StateDir(str(d))
    statedir.write("q", LEASE, {4: {"ctr0"}, 6: set()})  # another tunnel with sources on ctr0
    both = {4: {"ctr0", "tun0"}, 6: {"ctr0", "tun0"}, "mark": set(), "localnet": set()}
    assert run(kernel, NONE, LEASE, statedir)[1] == both
    names, _ = run(kernel, both, None, statedir)
    assert names == ["switch IPv4 forwarding on tun0 back off", "switch IPv6 forwarding (force_forwarding) on ctr0 back off",
                     "switch IPv6 forwarding (force_forwarding) on tun0 back off"]
    assert read(root, 4, "ctr0", "forwarding") == "1"
