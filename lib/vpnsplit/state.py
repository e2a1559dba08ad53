"""The state directory: per-tunnel records, the default VPN's choice, and the lock that serialises all runs.

`NAME.json` records the lease vpnsplit last applied (so `vpnsplit up NAME`, `status` and
`check` know what should be in the kernel; none while the tunnel is down), the devices whose
forwarding it switched on, and every kernel object it left in place for the tunnel ("applied",
owned.py: ownership by record, so a later run removes what nothing wants any more, even
with the tunnel's section gone); a tunnel with nothing left in the kernel has no record.
`NAME.addr` holds the dynamic IPv4 address alone, for other scripts; `default` names the
tunnel `vpnsplit default` chose. A run reads each file once, under the lock, into a Record.
Writes are atomic (temp file, fsync, rename) and never follow a symlink planted in the
directory: this runs as root in a directory others may reach.
"""

import datetime
import json
import os
import stat
from typing import NamedTuple

from vpnsplit import addresses, owned
from vpnsplit.errors import InputError, StateError, shown
from vpnsplit.lease import Lease
from vpnsplit.lock import Lock

DEFAULT_DIR = "/run/vpnsplit"
DEFAULT_LOCK_TIMEOUT = 30.0
# the fields of NAME.json listing the devices whose forwarding the tunnel switched on, by IP version, and
# ("mark") whose src_valid_mark, ("localnet") whose route_localnet it switched on (sysctl.SWITCH)
FORWARDING_FIELDS = {4: "forwarding", 6: "forwarding6", "mark": "src_valid_mark", "localnet": "route_localnet"}
NO_DEVICES = {v: frozenset() for v in FORWARDING_FIELDS}


def dir_from(environ=os.environ):
    return environ.get("VPNSPLIT_STATE_DIR") or DEFAULT_DIR


# A record is a few kilobytes (100 bytes per object applied); this bounds what a planted file can make us read.
MAX_RECORD = 1 << 20


def _read(path):
    """The bytes of the regular file *path*, never through a symlink and never blocking on a
    planted FIFO (O_NONBLOCK); FileNotFoundError if absent, OSError if it is anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "not a regular file")
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_RECORD)


class Record(NamedTuple):
    """What the state directory holds for one tunnel, read once per run."""

    name: str
    lease: Lease | None  # None: nothing recorded, or a record that cannot be used (see damage)
    forwarding: dict  # IP version -> the devices whose forwarding this tunnel switched on
    when: str | None  # when the lease was recorded (ISO 8601, UTC)
    damage: str | None  # one line saying why NAME.json cannot be used, and what to do; None if it can
    files: dict  # "json"/"addr" -> the raw bytes of NAME.json / NAME.addr (None: absent), put back on rollback
    # the kernel objects vpnsplit left in place for the tunnel (plan.State); None: a record written before
    # vpnsplit recorded them (it then owns what the tunnel's section plans, as before)
    applied: object = None

    @property
    def exists(self):
        return any(data is not None for data in self.files.values())


def _devices(value):
    """The device names in a record's forwarding field; anything but a list of names counts as none."""
    out = set()
    for item in value if isinstance(value, list) else ():
        try:
            out.add(addresses.ifname(item, "state"))
        except InputError:
            pass  # never a path into /proc/sys from a damaged record
    return frozenset(out)


class StateDir:
    def __init__(self, path):
        self.path = path
        self._records, self._choice = {}, None  # read once per run; dropped when the lock is taken

    def ensure(self):
        """Create the directory 0755 if missing; refuse one that others could tamper with.

        A refusal is an InputError (exit 2): it comes before the lock and any kernel change,
        and the fix is the user's, like a config file with unsafe permissions.
        """
        where = f"state directory {shown(self.path)}"
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
        """A context manager holding the one lock every vpnsplit run takes before touching the kernel.
        What was read before it is read again: another run may have changed it meanwhile."""
        return Lock(os.path.join(self.path, "lock"), timeout, acquired=self._reread)

    def _reread(self):
        self._records, self._choice = {}, None

    def names(self):
        """The tunnels that have a record here."""
        try:
            return sorted(f[:-5] for f in os.listdir(self.path) if f.endswith(".json"))
        except OSError:
            return []

    def applied_elsewhere(self, name):
        """Every kernel object the records of tunnels other than *name* say vpnsplit applied for them."""
        return owned.union(self.record(other).applied or owned.State() for other in self.names() if other != name)

    def claimed_elsewhere(self, name):
        """{IP version: devices} whose forwarding the records of tunnels other than *name* claim."""
        claimed = {}
        for other in self.names():
            if other != name:
                for version, devices in self.record(other).forwarding.items():
                    claimed.setdefault(version, set()).update(devices)
        return claimed

    def record(self, name):
        """The Record of tunnel *name* (read on first use)."""
        if name not in self._records:
            self._records[name] = self._read_record(name)
        return self._records[name]

    def _read_record(self, name):
        path, files = self._file(name, "json"), {}
        fix = f"run 'vpnsplit down {name}' then let the VPN reconnect"
        damage, doc, lease, applied = None, {}, None, None
        for ext in ("json", "addr"):
            try:
                files[ext] = _read(self._file(name, ext))
            except FileNotFoundError:
                files[ext] = None
            except OSError as e:  # not a plain file we wrote: a rollback removes it
                files[ext] = None
                if ext == "json":
                    damage = f"state file {shown(path)}: cannot read: {e.strerror}; {fix}"
        if files["json"] is not None:
            try:
                doc = json.loads(files["json"])
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError) as e:  # RecursionError: deeply nested [[[[... (json recurses)
                doc, damage = {}, f"state file {shown(path)}: damaged ({shown(str(e))}); {fix}"
            else:
                try:
                    # a down record (the strict skeleton still applied) has no lease
                    if doc.get("lease") is not None or "applied" not in doc:
                        lease = Lease.from_json(doc.get("lease") or {}, f"state file {shown(path)}", name)
                    if "applied" in doc:
                        applied = owned.from_json(doc["applied"], f"state file {shown(path)}", fix)
                except InputError as e:
                    damage = str(e)
        forwarding = {v: _devices(doc.get(field)) for v, field in FORWARDING_FIELDS.items()}
        when = doc.get("when") if isinstance(doc.get("when"), str) else None
        return Record(name, lease, forwarding, when, damage, files, applied)

    def write(self, name, lease, forwarding=NO_DEVICES, applied=None):
        """Record *lease* (None: the tunnel is down) for tunnel *name* (NAME.json, and NAME.addr
        with the IPv4 address), and *applied*, the plan.State vpnsplit left in place for it.

        *forwarding* maps an IP version to the devices whose forwarding this tunnel switched
        on, so that down switches exactly those back off. A record without "forwarding6"
        (written before IPv6 forwarding was switched per device) reads as none."""
        doc = {
            "tunnel": name,
            "lease": lease and lease.to_json(),
            **{field: sorted(forwarding.get(v, ())) for v, field in FORWARDING_FIELDS.items()},
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if applied is not None:
            doc["applied"] = owned.to_json(applied)
        self._records.pop(name, None)
        _write(self._file(name, "json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")
        if lease is not None and lease.local4 is not None:
            _write(self._file(name, "addr"), f"{lease.local4.ip}\n")
        else:
            _unlink(self._file(name, "addr"))

    def remove(self, name):
        """Remove the records of tunnel *name* (after down)."""
        self._records.pop(name, None)
        for ext in ("json", "addr"):
            _unlink(self._file(name, ext))

    def put_back(self, record):
        """Put back the files *record* was read from (a rollback), byte for byte."""
        self._records.pop(record.name, None)
        for ext, data in record.files.items():
            if data is None:
                _unlink(self._file(record.name, ext))
            else:
                _write(self._file(record.name, ext), data)

    def read_file(self, name):
        """The bytes of the state file *name* (not a tunnel's record: bridge.RECORD); None if absent or unusable."""
        try:
            return _read(os.path.join(self.path, name))
        except OSError:
            return None

    def write_file(self, name, data):
        """Write the state file *name* atomically (None: remove it)."""
        path = os.path.join(self.path, name)
        _unlink(path) if data is None else _write(path, data)

    def default_choice(self):
        """The tunnel chosen by `vpnsplit default NAME`: a name, "" after --off, None if never chosen."""
        if self._choice is None:
            try:
                self._choice = (_read(os.path.join(self.path, "default")).decode().strip(),)
            except (OSError, UnicodeDecodeError):  # absent, or not a plain file we wrote: no choice
                self._choice = (None,)
        return self._choice[0]

    def choose_default(self, name):
        """Record *name* as the default VPN ("" for --off; None forgets any choice, so the
        config's `default = true` chooses again)."""
        path = os.path.join(self.path, "default")
        self._choice = None
        if name is None:
            _unlink(path)
        else:
            _write(path, f"{name}\n")


def _write(path, text):
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
            _unlink(tmp)
        except StateError:
            pass
        raise StateError(f"state file {shown(path)}: cannot write: {e.strerror}") from None


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StateError(f"state file {shown(path)}: cannot remove: {e.strerror}") from None
