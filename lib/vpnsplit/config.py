"""The vpnsplit config file: one `[tunnel.NAME]` section per VPN.

Loading validates everything up front (types, ranges, clashes between tunnels), so a
bad config stops a hook before it touches the kernel and names the offending key.
"""

import errno
import ipaddress
import os
import re
import stat
import tomllib
from typing import NamedTuple

from vpnsplit import addresses, apps, bridgeconf, dns
from vpnsplit.errors import InputError, shown

DEFAULT_PATH = "/etc/vpnsplit/vpnsplit.toml"

# vpnsplit's rules for one tunnel use `priority` (tunnel address), +1 (aliases),
# +2 (source subnets' LAN exceptions) and +3 (source subnets).
PRIORITY_SPAN = 4
# Above PRIORITY_LAST: the default VPN's mark and DNS rules (31990-31992: marks.py) and rules (32000-32003,
# plan.DEFAULT_PRIORITIES), wg-quick's (32764-32765), the kernel's (0, 32766, 32767).
PRIORITY_LAST = 31989
PRIORITY_MIN, PRIORITY_MAX = 1, PRIORITY_LAST - (PRIORITY_SPAN - 1)
# OpenWrt's pbr deletes every rule in this window when it reloads.
SWEPT_PRIORITIES = range(29745, 30002)
# `id = N` derives table ID_BASE + N and priority ID_BASE + PRIORITY_SPAN * N (seed 001's convention).
ID_BASE, ID_MAX = 10000, 250
# 0 is "unspecified", 253-255 are default/main/local.
RESERVED_TABLES = {0: "unspecified", 253: "default", 254: "main", 255: "local"}
TABLE_MAX = 2**32 - 1

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
SYMLINK = ("is a symbolic link, which vpnsplit refuses: the owner and mode it checks would be the target's, which "
           "whoever controls the link chooses; give the file itself (--config or $VPNSPLIT_CONFIG)")
# Far above any real config; a bound so that --config /dev/zero or a huge file cannot eat memory.
MAX_SIZE = 1 << 20


class Tunnel(NamedTuple):
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
    # forwarded subnets (containers, bridges) that leave through the tunnel, SNAT-ed
    sources: tuple = ()
    # destinations those subnets reach through the main table instead (the LAN)
    lan: tuple = ()
    # inbound port forwards from the tunnel address to the alias: ("tcp", 51413), or ("", 0) for all
    forward: tuple = ()
    # the host-wide default VPN at boot (`vpnsplit up --all`), and its servers if the VPN client does not say
    default: bool = False
    servers: tuple = ()
    id: int | None = None
    # the tunnel's DNS resolvers when the VPN client names none (dns.resolvers)
    dns: tuple = ()
    # host names in `servers`: the default VPN's kill switch lets DNS queries for them out (backstop.KillSwitch)
    server_names: tuple = ()
    bridge: str | None = None  # the bridge vpnsplit keeps for this tunnel (bridgeconf.py, bridge.py)
    bridge_addresses: tuple = ()  # its addresses; their subnets are among the sources
    app_slot: int | None = None  # per-app tunnels: the slot in its programs' socket mark (apps.mark); None: none
    cgroups: tuple = ()  # cgroup2 paths (from its root) and systemd units whose processes use the tunnel (cgroups.py)
    units: tuple = ()

    @property
    def alias_dev(self):
        """The device that carries the aliases: `alias_device`, else the tunnel itself."""
        return self.alias_device or self.device

    @property
    def priorities(self):
        return range(self.priority, self.priority + PRIORITY_SPAN)


class Config(NamedTuple):
    path: str
    tunnels: dict  # name -> Tunnel, in file order

    def tunnel(self, name, where=None, more=""):
        """The tunnel called *name*; InputError naming the known ones otherwise (after *where*, if given; *more* after)."""
        try:
            return self.tunnels[name]
        except KeyError:
            raise InputError(f"{where + ': ' if where else ''}no tunnel {name!r} in {shown(self.path)}{' ' + more if more else ''} "
                             f"(known: {_known(self)})") from None

    def tunnel_for_device(self, device, where):
        """The tunnel whose `device` is *device*; InputError otherwise."""
        for tunnel in self.tunnels.values():
            if tunnel.device == device:
                return tunnel
        raise InputError(
            f"{where}: device {device!r} has no [tunnel.*] section in {shown(self.path)} (known: {_known(self)}); "
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
    sshd): whoever can write it decides how this host routes; not a symlink (SYMLINK). Only a regular file of at
    most MAX_SIZE bytes is read: a directory, FIFO or device (/dev/zero) would otherwise
    give a traceback, block, or fill memory. O_NONBLOCK keeps the open of a FIFO from
    blocking before fstat can tell what it is.
    """
    where = f"config {shown(path)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        looped = getattr(e, "errno", None) == errno.ELOOP  # O_NOFOLLOW met a symlink
        raise InputError(f"{where}: {SYMLINK if looped else 'cannot open: ' + (getattr(e, 'strerror', None) or str(e))}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # before fdopen, which refuses a directory with an OSError
        os.close(fd)
        raise InputError(f"{where}: is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if check_owner is None:
            check_owner = os.geteuid() == 0
        if check_owner and (st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise InputError(
                f"{where}: must be owned by root and not group/world-writable "
                f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); fix: chown root {shown(path)}; chmod go-w {shown(path)}"
            )
        try:
            raw = f.read(MAX_SIZE + 1)
        except OSError as e:
            raise InputError(f"{where}: cannot read: {e.strerror}") from None
        if len(raw) > MAX_SIZE:
            raise InputError(f"{where}: larger than {MAX_SIZE} bytes; not a vpnsplit config")
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: not valid TOML: {shown(str(e))}") from None
    return parse(data, path)


def parse(data, path="<config>"):
    """Validate a parsed TOML document into a Config.

    *data* normally comes from tomllib (string keys only), but any dict is refused with
    an InputError rather than a TypeError; names are shown with repr() when unprintable.
    """
    if not isinstance(data, dict):
        raise InputError(f"config {shown(path)}: must be a TOML document of [tunnel.NAME] sections")
    unknown = set(data) - {"tunnel"}
    if unknown:
        raise InputError(f"config {shown(path)}: unknown top-level key {sorted(map(str, unknown))[0]!r} (only [tunnel.NAME] sections)")
    sections = data.get("tunnel", {})
    if not isinstance(sections, dict):
        raise InputError(f"config {shown(path)}: 'tunnel' must be a table of [tunnel.NAME] sections")
    tunnels = {}
    for name, section in sections.items():
        where = f"config {shown(path)}: [tunnel.{shown(name)}]"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError(f"{where}: tunnel name {name!r} must be 1-32 of A-Z a-z 0-9 _ . - (no leading . or -)")
        if not isinstance(section, dict):
            raise InputError(f"{where}: must be a table of keys")
        tunnels[name] = _tunnel(name, section, where)
    _check_clashes(tunnels, path)
    return Config(path=path, tunnels=tunnels)


_KEYS = {"device", "id", "table", "priority", "alias", "alias6", "alias_device", "strict", "gateway", "gateway6", "sources", "lan", "forward",
         "default", "servers", "dns", "bridge", "bridge_address", "app_slot", "cgroups", "units"}


def _tunnel(name, s, where):
    unknown = set(s) - _KEYS
    if unknown:
        key = sorted(unknown, key=repr)[0]
        raise InputError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("device",) if "id" in s else ("device", "table", "priority"):
        if key not in s:
            raise InputError(f"{where}: missing required key {key!r}" + ("" if key == "device" else " (or give an id)"))
    derived = {}
    if "id" in s:
        ident = _int(s, "id", where)
        if not 1 <= ident <= ID_MAX:
            raise InputError(f"{where}: id = {ident} is out of range 1-{ID_MAX}")
        derived = {"table": ID_BASE + ident, "priority": ID_BASE + PRIORITY_SPAN * ident}
    s = {**derived, **s}

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
            f"which must stay within {PRIORITY_MIN}-{PRIORITY_LAST} (31990-31992 are reserved for the default VPN's mark and DNS rules, "
            f"32000-32003 are its rules, 32764-32765 wg-quick's, 32766-32767 the kernel's)"
        )
    if set(range(priority, priority + PRIORITY_SPAN)) & set(SWEPT_PRIORITIES):
        raise InputError(
            f"{where}: priority = {priority}: vpnsplit's rules {priority}-{priority + PRIORITY_SPAN - 1} would fall in "
            f"{SWEPT_PRIORITIES.start}-{SWEPT_PRIORITIES.stop - 1}, which OpenWrt's pbr deletes on reload; choose another"
        )
    alias_device = s.get("alias_device")
    bridge_name, bridge_addresses = bridgeconf.parse(name, s, where)
    sources = _networks(s, "sources", where)
    sources += tuple(i.network for i in bridge_addresses if i.network not in sources)
    lan = _networks(s, "lan", where)
    app_slot, cgroups, units = apps.from_config(s, where)
    if lan and not sources and app_slot is None:
        raise InputError(f"{where}: lan = {s['lan']!r} only applies to sources and programs (app_slot), and there are none")
    forward = addresses.port_forwards(s.get("forward", []), where)
    servers = _typed(s, "servers", [], list, where)
    if forward and s.get("alias") is None and s.get("alias6") is None:
        raise InputError(f"{where}: forward = {s['forward']!r} needs an alias (or alias6) to forward to")
    return Tunnel(
        name=name,
        device=addresses.ifname(s["device"], f"{where} device"),
        table=table,
        priority=priority,
        alias=_addr(s, "alias", 4, where),
        alias6=_addr(s, "alias6", 6, where),
        alias_device=None if alias_device is None else addresses.ifname(alias_device, f"{where} alias_device"),
        strict=_typed(s, "strict", True, bool, where),
        gateway=_addr(s, "gateway", 4, where),
        gateway6=_addr(s, "gateway6", 6, where),
        sources=sources,
        lan=lan,
        forward=forward,
        default=_typed(s, "default", False, bool, where),
        servers=tuple(addresses.host_address(a, f"{where} servers (an IP address or host name)", None)
                      for a in servers if not addresses.is_host_name(a)),
        id=s.get("id"),
        dns=dns.from_config(s.get("dns", []), where),
        server_names=tuple(a for a in servers if addresses.is_host_name(a)),
        bridge=bridge_name,
        bridge_addresses=bridge_addresses,
        app_slot=app_slot,
        cgroups=cgroups,
        units=units,
    )


def _typed(s, key, default, kind, where):
    value = s.get(key, default)
    if not isinstance(value, kind):
        raise InputError(f"{where}: {key} = {value!r} must be {'true or false' if kind is bool else 'a list'}")
    return value


def _networks(s, key, where):
    """A list of subnets written without host bits ("10.20.1.0/24")."""
    value = s.get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{where}: {key} = {value!r} must be a list of subnets, like [\"10.20.1.0/24\"]")
    return tuple(addresses.subnet(item, f"{where}: {key} entry") for item in value)


def _int(s, key, where):
    value = s[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {key} = {value!r} must be an integer")
    return value


def _addr(s, key, version, where):
    return addresses.host_address(s[key], f"{where} {key}", version) if key in s else None


def _check_clashes(tunnels, path):
    """Two tunnels may never share a device, table, alias or rule priority."""
    seen = {}
    for t in tunnels.values():
        claims = [("device", d) for d in (t.device, t.bridge) if d] + [("table", t.table)]
        claims += [("alias", a) for a in (t.alias, t.alias6) if a is not None]
        claims += [("priority", p) for p in t.priorities]
        claims += [("source subnet", n) for n in t.sources]
        claims += [("app_slot", t.app_slot)] if t.app_slot is not None else []
        for kind, value in claims:
            other = seen.setdefault((kind, value), t.name)
            if other != t.name:
                extra = f" (tunnel {t.name} uses {t.priority}-{t.priority + PRIORITY_SPAN - 1})" if kind == "priority" else ""
                raise InputError(f"config {shown(path)}: [tunnel.{t.name}] {kind} {value} is already used by [tunnel.{other}]{extra}")
