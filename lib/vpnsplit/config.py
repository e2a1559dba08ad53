"""The vpnsplit config file: one `[tunnel.NAME]` section per VPN.

Loading validates everything up front (types, ranges, clashes between tunnels), so a
bad config stops a hook before it touches the kernel and names the offending key.
"""

import dataclasses
import ipaddress
import os
import re
import stat
import tomllib

from vpnsplit import addresses
from vpnsplit.errors import InputError

DEFAULT_PATH = "/etc/vpnsplit/vpnsplit.toml"

# vpnsplit's rules for one tunnel use `priority` (tunnel address), +1 (aliases), +2 (sources).
PRIORITY_SPAN = 3
# 0 (local), 32766 (main) and 32767 (default) are the kernel's own rules.
PRIORITY_MIN, PRIORITY_MAX = 1, 32765 - (PRIORITY_SPAN - 1)
# 0 is "unspecified", 253-255 are default/main/local.
RESERVED_TABLES = {0: "unspecified", 253: "default", 254: "main", 255: "local"}
TABLE_MAX = 2**32 - 1

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """One VPN as configured. Everything vpnsplit does for it derives from these fields."""

    name: str
    device: str
    table: int
    priority: int
    alias: ipaddress.IPv4Address | None = None
    alias6: ipaddress.IPv6Address | None = None
    alias_device: str | None = None
    strict: bool = True
    gateway: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None

    @property
    def alias_dev(self):
        """The device that carries the aliases: `alias_device`, else the tunnel itself."""
        return self.alias_device or self.device

    @property
    def priorities(self):
        return range(self.priority, self.priority + PRIORITY_SPAN)


@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    tunnels: dict  # name -> Tunnel, in file order

    def tunnel(self, name, where):
        """The tunnel called *name*; InputError naming the known ones otherwise."""
        try:
            return self.tunnels[name]
        except KeyError:
            raise InputError(f"{where}: no tunnel {name!r} in {self.path} (known: {_known(self)})") from None

    def tunnel_for_device(self, device, where):
        """The tunnel whose `device` is *device*; InputError otherwise."""
        for tunnel in self.tunnels.values():
            if tunnel.device == device:
                return tunnel
        raise InputError(
            f"{where}: device {device!r} has no [tunnel.*] section in {self.path} (known: {_known(self)}); "
            f"add one with device = {device!r}, or pass --tunnel NAME"
        )


def _known(config):
    return ", ".join(f"{t.name} (device {t.device})" for t in config.tunnels.values()) or "none"


def path_from(explicit=None, environ=os.environ):
    """--config, else $VPNSPLIT_CONFIG, else the default path."""
    return explicit or environ.get("VPNSPLIT_CONFIG") or DEFAULT_PATH


def load(path, check_owner=None):
    """Read and validate the config at *path*.

    As root, the file must be owned by root and not writable by group or others (like
    sshd): whoever can write it decides how this host routes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"config {path}: cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if check_owner is None:
            check_owner = os.geteuid() == 0
        if check_owner and (st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise InputError(
                f"config {path}: must be owned by root and not group/world-writable "
                f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); fix: chown root {path}; chmod go-w {path}"
            )
        try:
            data = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"config {path}: not valid TOML: {e}") from None
    return parse(data, path)


def parse(data, path="<config>"):
    """Validate a parsed TOML document into a Config."""
    unknown = set(data) - {"tunnel"}
    if unknown:
        raise InputError(f"config {path}: unknown top-level key {sorted(unknown)[0]!r} (only [tunnel.NAME] sections)")
    sections = data.get("tunnel", {})
    if not isinstance(sections, dict):
        raise InputError(f"config {path}: 'tunnel' must be a table of [tunnel.NAME] sections")
    tunnels = {}
    for name, section in sections.items():
        where = f"config {path}: [tunnel.{name}]"
        if not _NAME.fullmatch(name):
            raise InputError(f"{where}: tunnel name {name!r} must be 1-32 of A-Z a-z 0-9 _ . - (no leading . or -)")
        if not isinstance(section, dict):
            raise InputError(f"{where}: must be a table of keys")
        tunnels[name] = _tunnel(name, section, where)
    _check_clashes(tunnels, path)
    return Config(path=path, tunnels=tunnels)


_KEYS = {"device", "table", "priority", "alias", "alias6", "alias_device", "strict", "gateway", "gateway6"}


def _tunnel(name, s, where):
    unknown = set(s) - _KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise InputError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("device", "table", "priority"):
        if key not in s:
            raise InputError(f"{where}: missing required key {key!r}")

    table = _int(s, "table", where)
    if table in RESERVED_TABLES or not 0 < table <= TABLE_MAX:
        raise InputError(
            f"{where}: table = {table} is {'reserved (' + RESERVED_TABLES[table] + ')' if table in RESERVED_TABLES else 'out of range'}; "
            f"use 1-252 or 256-{TABLE_MAX}"
        )
    priority = _int(s, "priority", where)
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InputError(
            f"{where}: priority = {priority} is out of range: vpnsplit uses priority..priority+{PRIORITY_SPAN - 1}, "
            f"which must stay within {PRIORITY_MIN}-32765 (0, 32766 and 32767 are the kernel's)"
        )
    strict = s.get("strict", True)
    if not isinstance(strict, bool):
        raise InputError(f"{where}: strict = {strict!r} must be true or false")
    alias_device = s.get("alias_device")
    return Tunnel(
        name=name,
        device=addresses.ifname(s["device"], f"{where} device"),
        table=table,
        priority=priority,
        alias=_addr(s, "alias", 4, where),
        alias6=_addr(s, "alias6", 6, where),
        alias_device=None if alias_device is None else addresses.ifname(alias_device, f"{where} alias_device"),
        strict=strict,
        gateway=_addr(s, "gateway", 4, where),
        gateway6=_addr(s, "gateway6", 6, where),
    )


def _int(s, key, where):
    value = s[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {key} = {value!r} must be an integer")
    return value


def _addr(s, key, version, where):
    if key not in s:
        return None
    return addresses.host_address(s[key], f"{where} {key}", version)


def _check_clashes(tunnels, path):
    """Two tunnels may never share a device, table, alias or rule priority."""
    seen = {}
    for t in tunnels.values():
        claims = [("device", t.device), ("table", t.table)]
        claims += [("alias", a) for a in (t.alias, t.alias6) if a is not None]
        claims += [("priority", p) for p in t.priorities]
        for kind, value in claims:
            other = seen.setdefault((kind, value), t.name)
            if other != t.name:
                extra = f" (tunnel {t.name} uses {t.priority}-{t.priority + PRIORITY_SPAN - 1})" if kind == "priority" else ""
                raise InputError(f"config {path}: [tunnel.{t.name}] {kind} {value} is already used by [tunnel.{other}]{extra}")
