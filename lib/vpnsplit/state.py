"""The state directory: per-tunnel lease records and the lock that serialises all runs.

`NAME.json` records the lease vpnsplit last applied (so `vpnsplit up NAME`, `status` and
`check` know what should be in the kernel) and `NAME.addr` holds the dynamic IPv4 address
alone, for other scripts. Writes are atomic (temp file, fsync, rename) and never follow a
symlink planted in the directory: this runs as root in a directory others may reach.
"""

import datetime
import json
import logging
import os
import stat
import time

from vpnsplit.errors import InputError, LockTimeout, VpnsplitError
from vpnsplit.lease import Lease

DEFAULT_DIR = "/run/vpnsplit"
DEFAULT_LOCK_TIMEOUT = 30.0
LOCK_WAIT_REPORTED = 1.0  # a wait at least this long (seconds) gets a log line


def dir_from(environ=os.environ):
    return environ.get("VPNSPLIT_STATE_DIR") or DEFAULT_DIR


class StateError(VpnsplitError):
    """The state directory cannot be used (read-only, full)."""


def _shown(path):
    """*path* for a one-line message: repr() if it holds a newline or other unprintable character."""
    return path if path.isprintable() else repr(path)


# A record is a few hundred bytes; this bounds what a planted file can make us read.
MAX_RECORD = 1 << 16


def _read(path):
    """The bytes of the regular file *path*, never through a symlink and never blocking on a
    planted FIFO (O_NONBLOCK); FileNotFoundError if absent, OSError if it is anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "not a regular file")
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_RECORD)


class StateDir:
    def __init__(self, path):
        self.path = path

    def ensure(self):
        """Create the directory 0755 if missing; refuse one that others could tamper with.

        A refusal is an InputError (exit 2): it comes before the lock and any kernel change,
        and the fix is the user's, like a config file with unsafe permissions.
        """
        where = f"state directory {_shown(self.path)}"
        try:
            os.mkdir(self.path, 0o755)
        except FileExistsError:
            pass
        except (OSError, ValueError) as e:  # ValueError: a NUL in $VPNSPLIT_STATE_DIR
            raise StateError(f"{where}: cannot create: {getattr(e, 'strerror', None) or e}") from None
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{where}: is not a directory (a symlink?); remove it")
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise InputError(
                f"{where}: must be owned by uid {os.geteuid()} and not group/world-writable "
                f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
            )

    def _file(self, name, ext):
        return os.path.join(self.path, f"{name}.{ext}")

    def lock(self, timeout=DEFAULT_LOCK_TIMEOUT):
        """A context manager holding the one lock every vpnsplit run takes before touching the kernel."""
        return _Lock(os.path.join(self.path, "lock"), timeout)

    def load(self, name):
        """The recorded Lease of tunnel *name*, or None. A damaged file raises InputError."""
        path = self._file(name, "json")
        try:
            raw = _read(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InputError(f"state file {_shown(path)}: cannot read: {e.strerror}; run 'vpnsplit down {name}' then let the VPN reconnect") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as e:  # RecursionError: deeply nested [[[[... (json recurses)
            raise InputError(f"state file {_shown(path)}: damaged ({_shown(str(e))}); run 'vpnsplit down {name}' then let the VPN reconnect") from None
        return Lease.from_json(data.get("lease") or {}, f"state file {_shown(path)}", name)

    @staticmethod
    def lease_in(doc, name):
        """The Lease in a document `record` returned; None if it holds none or a damaged one,
        as load_quiet would say, without reading the file again."""
        try:
            return Lease.from_json(doc.get("lease") or {}, "state", name) if doc else None
        except InputError:
            return None

    def load_quiet(self, name):
        """Like load, but a damaged record counts as none (up is about to overwrite it)."""
        try:
            return self.load(name)
        except InputError:
            return None

    def record(self, name):
        """The raw recorded document (lease plus when), for status output; {} if none."""
        try:
            doc = json.loads(_read(self._file(name, "json")))
        except (OSError, ValueError, RecursionError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def save(self, name, lease, switched=None):
        """Record *lease* for tunnel *name* (NAME.json, and NAME.addr with the IPv4 address).

        *switched* maps an IP version to the devices whose forwarding this tunnel switched
        on ("forwarding": IPv4, "forwarding6": IPv6 force_forwarding), so that down switches
        exactly those back off. A record written before "forwarding6" existed reads as none."""
        switched = switched or {}
        doc = {
            "tunnel": name,
            "lease": lease.to_json(),
            "forwarding": sorted(switched.get(4, ())),
            "forwarding6": sorted(switched.get(6, ())),
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self._write(self._file(name, "json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")
        if lease.local4 is not None:
            self._write(self._file(name, "addr"), f"{lease.local4.ip}\n")
        else:
            self._unlink(self._file(name, "addr"))

    def default_choice(self):
        """The tunnel chosen by `vpnsplit default NAME`: a name, "" after --off, None if never chosen."""
        try:
            return _read(os.path.join(self.path, "default")).decode().strip()
        except (OSError, UnicodeDecodeError):  # absent, or not a plain file we wrote: no choice
            return None

    def choose_default(self, name):
        """Record *name* as the default VPN ("" for --off; None forgets any choice, so the
        config's `default = true` chooses again)."""
        path = os.path.join(self.path, "default")
        if name is None:
            self._unlink(path)
        else:
            self._write(path, f"{name}\n")

    def forget(self, name):
        """Remove the records of tunnel *name* (after down)."""
        for ext in ("json", "addr"):
            self._unlink(self._file(name, ext))

    def snapshot(self, name):
        """The raw bytes of both files, to put back if a run rolls back.

        Read without following symlinks: a link planted as NAME.json must not make us copy
        its target (say /etc/shadow) into a record. Anything that is not a regular file
        counts as absent, so a rollback removes it.
        """
        out = {}
        for ext in ("json", "addr"):
            try:
                out[ext] = _read(self._file(name, ext))
            except OSError:
                out[ext] = None
        return out

    def restore(self, name, snap):
        for ext, data in snap.items():
            if data is None:
                self._unlink(self._file(name, ext))
            else:
                self._write(self._file(name, ext), data)

    def _write(self, path, text):
        """Write *text* to *path* atomically: a temp file, written in full, fsynced, renamed.

        The temp name is ours alone (our pid). Anything already there is stale (a run
        killed before its rename, whose pid we now have) or planted: it is unlinked, which
        removes a symlink itself, and O_EXCL|O_NOFOLLOW then refuses anything that races
        back in, so we never write through a link. os.write may write only part of the
        data on a full disk, so it is looped until all is written or it raises ENOSPC.
        """
        tmp = f"{path}.tmp{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileExistsError:
                os.unlink(tmp)
                fd = os.open(tmp, flags, 0o644)
            try:
                data = memoryview(text if isinstance(text, bytes) else text.encode())
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # rename replaces a symlink itself, never its target
        except OSError as e:
            try:
                self._unlink(tmp)
            except StateError:
                pass
            raise StateError(f"state file {_shown(path)}: cannot write: {e.strerror}") from None

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateError(f"state file {_shown(path)}: cannot remove: {e.strerror}") from None


def _drop_planted(path):
    """Remove a lock path that is not a regular file (a planted symlink, FIFO...).

    Older filelock (Debian bookworm's 3.9) opens the lock with O_CREAT|O_TRUNC and follows
    a symlink, so as root it would truncate the link's target; newer ones refuse it with
    ELOOP and every run would fail. unlink never follows: the link goes, the target stays.
    """
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            return
        os.unlink(path)
    except OSError:
        pass  # absent (fine), or a directory: acquire() then names the problem


class _Lock:
    def __init__(self, path, timeout):
        import filelock

        self.path, self.timeout = path, timeout
        self._lock = filelock.FileLock(path, timeout=timeout)
        self._timeout_exc = filelock.Timeout

    def __enter__(self):
        start = time.monotonic()
        _drop_planted(self.path)
        try:
            self._lock.acquire()
        except self._timeout_exc:
            raise LockTimeout(
                f"lock {_shown(self.path)}: another vpnsplit run held it for more than {self.timeout:g}s; nothing was changed "
                f"(set VPNSPLIT_LOCK_TIMEOUT to wait longer)"
            ) from None
        except OSError as e:
            raise StateError(f"lock {_shown(self.path)}: {e.strerror}") from None
        waited = time.monotonic() - start
        if waited >= LOCK_WAIT_REPORTED:
            logging.getLogger("vpnsplit").info("waited %.1fs for the lock %s (another vpnsplit run held it)", waited, _shown(self.path))
        return self

    def __exit__(self, *exc):
        self._lock.release()
