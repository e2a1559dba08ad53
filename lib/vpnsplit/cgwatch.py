"""`vpnsplit watch`'s eye on the cgroup tree: a configured cgroup or unit that appears (a unit started
or restarted gets a new one) gets its tunnel's socket-mark program at once, without a converge.

No netlink event tells of a new cgroup, but cgroupfs reports a mkdir or rmdir by any process to
inotify on the parent directory (IN_CREATE / IN_DELETE; verified on 6.1-6.18, also through another
mount of cgroup2 in a cgroup namespace). Watched: every existing directory on the way from cgroup2's
root to each configured `cgroups` path (so a path whose parents do not exist yet is seen from its
nearest existing ancestor, and each parent is watched as it appears), and, with `units`, every slice
(`*.slice`) and each directory named as a unit path's leading component (`user@1000.service` of
"user@1000.service/app.slice/firefox.scope"): systemd makes units' cgroups in those. A directory made
in a watched one is watched if it is of that kind, then read (what was made in it before the watch
counted), and attached if it is configured. Attaching writes nothing to the tree: it wakes nothing.

The window: a process moved into a new cgroup before the attach keeps its earlier sockets unmarked
(only those it creates after the attach get the mark). `vpnsplit unit-dropin` (ExecStartPre= in the
new cgroup, before the service's process exists) has no window.

cgroupfs sends no IN_DELETE_SELF for a removed directory, so a watch is removed when its parent
reports the rmdir (a stale watch would pin the dead directory's inode).
"""

import errno
import logging
import os
import struct
import time

from vpnsplit import cgroups, libc
from vpnsplit.errors import InputError

log = logging.getLogger("vpnsplit")

IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_ISDIR = 0x4000, 0x8000, 0x01000000, 0x40000000
MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR
_EVENT = struct.Struct("=iIII")

_call = libc.call


class Targets:
    """What *tunnels* configure: exact `cgroups` paths and `units` (path endings), each to its tunnel."""

    def __init__(self, tunnels):
        mine = [t for t in tunnels.values() if t.app_slot is not None]
        self.cgroups = {c: t for t in mine for c in t.cgroups}
        self.units = {u: t for t in mine for u in t.units}
        self.heads = {p for u in self.units for p in u.split("/")[:-1]}

    def __bool__(self):
        return bool(self.cgroups or self.units)

    def tunnel_of(self, rel):
        """(what, tunnel) if the cgroup at *rel* (below the root, no leading slash) is configured, else None."""
        if rel in self.cgroups:
            return f"cgroup {rel}", self.cgroups[rel]
        for unit, tunnel in self.units.items():
            if cgroups.is_unit(rel, unit):
                return f"unit {unit}", tunnel
        return None

    def watched(self, rel):
        """Whether a configured cgroup may appear in the directory at *rel*."""
        if rel == "" or any(c.startswith(rel + "/") for c in self.cgroups):
            return True
        name = rel.rpartition("/")[2]
        return bool(self.units) and (name.endswith(".slice") or name in self.heads)


class CgroupWatch:
    """The inotify descriptor (`fd`, for poll) and its watches. `drain()` attaches what appeared and
    returns what it did: [(tunnel, what, path, seconds from reading the event to attached, processes
    the cgroup held right after: they entered before the attach)]."""

    def __init__(self, top, targets):
        self.top, self.targets = top, targets
        self.fd = _call("inotify_init1", os.O_NONBLOCK | os.O_CLOEXEC)
        self.wds, self.rels = {}, {}

    @classmethod
    def of(cls, tunnels):
        """A watch on the cgroups *tunnels* configure (not started); None when none configures
        any, or (said in a line) when cgroup2 cannot be watched."""
        targets = Targets(tunnels)
        if not targets:
            return None
        try:
            watch = cls(cgroups.root(), targets)
        except (InputError, OSError) as e:
            log.warning("new cgroups of per-app tunnels are not watched: %s", e)
            return None
        return watch

    def start(self):
        """Watch the tree as it is now; attach the configured cgroups that exist."""
        return self.scan("", time.monotonic())

    def close(self):
        os.close(self.fd)

    def scan(self, rel, since):
        """Watch *rel* if a configured cgroup may appear in it, attach it if configured, and go on
        with what is below it (made before the watch existed)."""
        done = self._attach(rel, since)
        if not self.targets.watched(rel):
            return done
        path = os.path.join(self.top, rel)
        try:
            wd = _call("inotify_add_watch", self.fd, os.fsencode(path), MASK)
            self.wds[wd], self.rels[rel] = rel, wd
            children = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):  # removed meanwhile: its parent says so
                log.warning("cgroup %s is not watched: %s", path, e.strerror)
            return done
        for name in children:
            done += self.scan(f"{rel}/{name}" if rel else name, since)
        return done

    def _attach(self, rel, since):
        found = self.targets.tunnel_of(rel)
        if found is None:
            return []
        what, tunnel = found
        path = os.path.join(self.top, rel)
        if not cgroups.attach(tunnel, what, path):
            return []
        return [(tunnel.name, what, path, time.monotonic() - since, cgroups.processes(path) or 0)]

    def drain(self):
        done = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return done
            since, off = time.monotonic(), 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _, size = _EVENT.unpack_from(buf, off)
                name = buf[off + _EVENT.size:off + _EVENT.size + size].split(b"\0")[0].decode(errors="surrogateescape")
                off += _EVENT.size + size
                done += self._event(wd, mask, name, since)

    def _event(self, wd, mask, name, since):
        if mask & IN_Q_OVERFLOW:
            log.warning("inotify queue overflowed: reading the cgroup tree again")
            return self.rescan(since)
        if mask & IN_IGNORED:
            self.rels.pop(self.wds.pop(wd, None), None)
            return []
        parent = self.wds.get(wd)
        if parent is None or not mask & IN_ISDIR:
            return []
        rel = f"{parent}/{name}" if parent else name
        if mask & (IN_CREATE | IN_MOVED_TO):
            return self.scan(rel, since)
        self._forget(rel)
        return []

    def rescan(self, since):
        """Events were lost (a removal, maybe): watch the tree anew."""
        self._forget("")
        return self.scan("", since)

    def _forget(self, rel):
        """Drop the watches of the removed directory *rel* and below ("": all)."""
        for gone in [r for r in self.rels if r == rel or r.startswith(rel + "/") or rel == ""]:
            wd = self.rels.pop(gone)
            self.wds.pop(wd, None)
            try:
                _call("inotify_rm_watch", self.fd, wd)
            except OSError:
                pass  # the kernel dropped it already
