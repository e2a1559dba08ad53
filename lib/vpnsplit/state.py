"""The state directory: per-tunnel lease records and the lock that serialises all runs.

`NAME.json` records the lease vpnsplit last applied (so `vpnsplit up NAME`, `status` and
`check` know what should be in the kernel) and `NAME.addr` holds the dynamic IPv4 address
alone, for other scripts. Writes are atomic (temp file, fsync, rename) and never follow a
symlink planted in the directory: this runs as root in a directory others may reach.
"""

import datetime
import json
import os
import stat

from vpnsplit.errors import InputError, LockTimeout, VpnsplitError
from vpnsplit.lease import Lease

DEFAULT_DIR = "/run/vpnsplit"
DEFAULT_LOCK_TIMEOUT = 30.0


def dir_from(environ=os.environ):
    return environ.get("VPNSPLIT_STATE_DIR") or DEFAULT_DIR


class StateError(VpnsplitError):
    """The state directory cannot be used (unsafe, read-only, full)."""


class StateDir:
    def __init__(self, path):
        self.path = path

    def ensure(self):
        """Create the directory 0755 if missing; refuse one that others could tamper with."""
        try:
            os.mkdir(self.path, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise StateError(f"state directory {self.path}: cannot create: {e.strerror}") from None
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {self.path}: is not a directory (a symlink?); remove it")
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StateError(
                f"state directory {self.path}: must be owned by uid {os.geteuid()} and not group/world-writable "
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
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InputError(f"state file {path}: cannot open: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(1 << 16)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"state file {path}: damaged ({e}); run 'vpnsplit down {name}' then reconnect the VPN") from None
        return Lease.from_json(data.get("lease") or {}, f"state file {path}")

    def load_quiet(self, name):
        """Like load, but a damaged record counts as none (up is about to overwrite it)."""
        try:
            return self.load(name)
        except InputError:
            return None

    def record(self, name):
        """The raw recorded document (lease plus when), for status output; {} if none."""
        try:
            with open(self._file(name, "json"), "rb") as f:
                return json.loads(f.read(1 << 16))
        except (OSError, ValueError):
            return {}

    def save(self, name, lease):
        """Record *lease* for tunnel *name* (NAME.json, and NAME.addr with the IPv4 address)."""
        doc = {
            "tunnel": name,
            "lease": lease.to_json(),
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self._write(self._file(name, "json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")
        if lease.local4 is not None:
            self._write(self._file(name, "addr"), f"{lease.local4.ip}\n")
        else:
            self._unlink(self._file(name, "addr"))

    def forget(self, name):
        """Remove the records of tunnel *name* (after down)."""
        for ext in ("json", "addr"):
            self._unlink(self._file(name, ext))

    def snapshot(self, name):
        """The raw bytes of both files, to put back if a run rolls back."""
        out = {}
        for ext in ("json", "addr"):
            try:
                with open(self._file(name, ext), "rb") as f:
                    out[ext] = f.read()
            except FileNotFoundError:
                out[ext] = None
        return out

    def restore(self, name, snap):
        for ext, data in snap.items():
            if data is None:
                self._unlink(self._file(name, ext))
            else:
                self._write(self._file(name, ext), data.decode())

    def _write(self, path, text):
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            # O_EXCL|O_NOFOLLOW: a file or symlink planted under the temp name makes us fail, never follow.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # rename replaces a symlink itself, never its target
        except OSError as e:
            self._unlink(tmp)
            raise StateError(f"state file {path}: cannot write: {e.strerror}") from None

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateError(f"state file {path}: cannot remove: {e.strerror}") from None


class _Lock:
    def __init__(self, path, timeout):
        import filelock

        self.path, self.timeout = path, timeout
        self._lock = filelock.FileLock(path, timeout=timeout)
        self._timeout_exc = filelock.Timeout

    def __enter__(self):
        try:
            self._lock.acquire()
        except self._timeout_exc:
            raise LockTimeout(
                f"lock {self.path}: another vpnsplit run held it for more than {self.timeout:g}s; nothing was changed "
                f"(set VPNSPLIT_LOCK_TIMEOUT to wait longer)"
            ) from None
        except OSError as e:
            raise StateError(f"lock {self.path}: {e.strerror}") from None
        return self

    def __exit__(self, *exc):
        self._lock.release()
