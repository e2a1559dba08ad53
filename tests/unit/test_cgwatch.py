"""The watcher's cgroup watch without root: which directories it watches, what it attaches, and that
a removed directory's watch goes. A plain directory tree stands for cgroup2 (inotify reports mkdir and
rmdir there as on cgroupfs); the attach is recorded instead of made."""

import os
from types import SimpleNamespace

import pytest

from vpnsplit import cgwatch


def tunnels(**sections):
    return {name: SimpleNamespace(name=name, app_slot=slot, cgroups=tuple(cgs), units=tuple(units))
            for name, (slot, cgs, units) in sections.items()}


CONFIG = tunnels(vpn=(3, ["svc/late/a"], ["b.service", "user@1000.service/app.slice/f.scope"]), plain=(None, [], []),
                 other=(4, ["machine.slice/box.scope"], []))


def test_targets_name_exact_cgroups_and_unit_endings():
    t = cgwatch.Targets(CONFIG)
    assert t.tunnel_of("svc/late/a")[0] == "cgroup svc/late/a" and t.tunnel_of("svc/late/a")[1].name == "vpn"
    assert t.tunnel_of("system.slice/b.service")[0] == "unit b.service"
    assert t.tunnel_of("user.slice/user-1000.slice/user@1000.service/app.slice/f.scope")[0] == (
        "unit user@1000.service/app.slice/f.scope")
    assert [t.tunnel_of(r) for r in ("svc/late", "svc/late/a/b", "system.slice/xb.service", "b.service.d")] == [None] * 4
    assert t.tunnel_of("machine.slice/box.scope")[1].name == "other"


def test_targets_watch_ancestors_and_with_units_the_slices():
    t = cgwatch.Targets(CONFIG)
    assert [t.watched(r) for r in ("", "svc", "svc/late", "machine.slice", "system.slice", "x/user@1000.service")] == [True] * 6
    assert [t.watched(r) for r in ("svc/late/a", "svc/other", "system.slice/b.service", "init.scope")] == [False] * 4
    only_cgroups = cgwatch.Targets(tunnels(vpn=(3, ["svc/a"], [])))
    assert (only_cgroups.watched("svc"), only_cgroups.watched("system.slice")) == (True, False)
    assert not cgwatch.Targets(tunnels(vpn=(3, [], []), plain=(None, [], [])))


@pytest.fixture
def watch(tmp_path, monkeypatch):
    attached = []
    monkeypatch.setattr(cgwatch.cgroups.bpf, "attach", lambda path, mark, slot: attached.append((path, mark)) or True)
    w = cgwatch.CgroupWatch(str(tmp_path), cgwatch.Targets(CONFIG))
    w.made = attached
    yield w
    w.close()


def test_a_cgroup_made_later_is_seen_from_its_nearest_ancestor_and_attached_once(watch, tmp_path):
    assert watch.start() == [] and set(watch.rels) == {""}
    os.makedirs(tmp_path / "svc/late/a/below")  # at once: the parents' watches come after their children exist
    (tmp_path / "svc/late/other").mkdir()
    done = watch.drain()
    assert [(d[0], d[1], d[2], d[4]) for d in done] == [("vpn", "cgroup svc/late/a", str(tmp_path / "svc/late/a"), 0)]
    assert watch.made == [(str(tmp_path / "svc/late/a"), 0x83000000)]
    assert set(watch.rels) == {"", "svc", "svc/late"}
    assert watch.drain() == []  # nothing changed: nothing to read


def test_units_in_slices_and_a_removed_directory_drops_its_watches(watch, tmp_path):
    os.makedirs(tmp_path / "system.slice")
    watch.start()
    os.makedirs(tmp_path / "user.slice/user-1000.slice/user@1000.service/app.slice/f.scope")
    (tmp_path / "system.slice/b.service").mkdir()
    assert sorted(d[1] for d in watch.drain()) == ["unit b.service", "unit user@1000.service/app.slice/f.scope"]
    assert "user.slice/user-1000.slice/user@1000.service/app.slice" in watch.rels
    for rel in ("app.slice/f.scope", "app.slice", ""):
        os.rmdir(tmp_path / "user.slice/user-1000.slice/user@1000.service" / rel)
    watch.drain()
    assert set(watch.rels) == {"", "system.slice", "user.slice", "user.slice/user-1000.slice"}
    assert set(watch.wds.values()) == set(watch.rels)
    # made again (a restart): attached again
    (tmp_path / "system.slice/b.service").rmdir()
    (tmp_path / "system.slice/b.service").mkdir()
    assert [d[1] for d in watch.drain()] == ["unit b.service"]


def test_lost_events_mean_the_tree_is_watched_anew(watch, tmp_path):
    watch.start()
    (tmp_path / "svc").mkdir()
    watch.drain()
    stale = watch.rels["svc"]
    (tmp_path / "svc").rmdir()  # its removal is among the lost events
    os.makedirs(tmp_path / "svc/late/a")
    done = watch.rescan(0.0)  # what an IN_Q_OVERFLOW event calls
    assert [d[1] for d in done] == ["cgroup svc/late/a"] and set(watch.rels) == {"", "svc", "svc/late"}
    assert set(watch.wds) == set(watch.rels.values()) and stale not in watch.wds
