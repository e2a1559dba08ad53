"""A tunnel's DNS resolvers: where they come from, and the kernel objects that make DNS follow the traffic.

Resolvers come from the VPN client (OpenVPN's pushed `dhcp-option DNS`/`DNS6` or 2.6's `--dns`
variables; the `DNS =` line of a wg-quick config) and, failing that, from the `dns` key of
the tunnel's section. Pushed values are hostile input: every variable that can name a
resolver is parsed strictly, and a bad one stops the hook (InputError, one line) before
anything is applied.

What vpnsplit does with them (chains in dnsnat.py):
- DnsSource: DNS (UDP and TCP 53) from a `sources` subnet, to whatever resolver, is DNAT-ed to
  the tunnel's resolver in prerouting; the subnet's rules then carry it through the tunnel,
  SNAT-ed like the rest. DnsBlock: with strict and the tunnel down it is refused at once (the
  subnet's device no longer forwards then, and a dropped query would only time out).
- DnsApp: DNS (UDP and TCP 53) of the programs of a tunnel's `app_slot` (their sockets' mark,
  apps.py), to whatever resolver, is DNAT-ed to the tunnel's resolver in nat output; the app rules
  (plan._app_rules: port 53 into the tunnel's table before the `lan` exceptions) chose the tunnel
  address as its source, so it needs no NAT. DnsAppBlock: with strict and the tunnel down it is
  refused at once, also to a resolver on this host (a stub would ask its upstream by the uplink).
- DnsDefault: while a tunnel is the host's default VPN, every DNS packet the host sends (not
  to itself) gets DNS_MARK in a route chain, rule DNS_PRIORITY sends marked packets to the
  tunnel's table, queries are DNAT-ed to the tunnel's resolver and masqueraded to the tunnel
  address; replies get the mark back in prerouting (the reverse-path check needs it).
"""

import logging
import os
import re
import stat
from typing import NamedTuple

from vpnsplit import addresses, apps
from vpnsplit.errors import InputError
from vpnsplit.marks import DNS_MARK

log = logging.getLogger("vpnsplit")

DNS_PORT = 53
# A VPN pushing more than this is not configuring DNS but probing us.
MAX_RESOLVERS = 16


class DnsSource(NamedTuple):
    """DNS from the source subnet SOURCE (a tunnel's `sources` entry) goes to resolver TO."""

    family: int
    source: str
    to: str

    def __str__(self):
        return f"dns from {self.source} -> {self.to}"


class DnsBlock(NamedTuple):
    """With strict and the tunnel down, DNS from the source subnet SOURCE is refused at once
    (ICMP port unreachable), whatever resolver it asks: the host or the LAN would answer it in the clear."""

    family: int
    source: str

    def __str__(self):
        return f"dns from {self.source} refused (strict, tunnel down)"


class DnsApp(NamedTuple):
    """DNS from the programs whose sockets carry MARK (a tunnel's app mark) goes to resolver TO."""

    family: int
    mark: int
    to: str

    def __str__(self):
        return f"dns of apps {self.mark:#x} -> {self.to}"


class DnsAppBlock(NamedTuple):
    """With strict and the tunnel down, DNS of the programs whose sockets carry MARK is refused at once."""

    mark: int

    def __str__(self):
        return f"dns of apps {self.mark:#x} refused (strict, tunnel down)"


class DnsDefault(NamedTuple):
    """The default VPN's DNS: every DNS packet the host sends is marked into the table of the
    tunnel on DEVICE, and queries of a family with a resolver in TO are redirected to it."""

    device: str
    to: tuple = ()  # resolver addresses as text, at most one per family
    # strict and the tunnel down: refused at once instead (a marked TCP SYN would only time out)
    refuse: bool = False

    def __str__(self):
        if self.refuse:
            return f"dns of this host refused: the default VPN's tunnel {self.device} is down (strict)"
        where = ", ".join(self.to) or "no resolver known: the queries' own destinations"
        return f"dns of this host marked {DNS_MARK:#x} into {self.device}, redirected to {where}"


def resolvers(tunnel, lease):
    """The tunnel's resolvers: what the VPN client said (recorded in the lease), else the `dns` key."""
    return (lease.dns if lease is not None and lease.dns else ()) or tunnel.dns


def first_per_family(addrs):
    """{version: the first resolver of that version}: the one a redirect goes to."""
    out = {}
    for a in addrs:
        out.setdefault(a.version, a)
    return out


def plan_sources(tunnel, lease):
    """DnsSource objects for *tunnel*'s source subnets while up with *lease*; with strict, DnsBlock
    objects while down (lease None)."""
    if lease is None:
        return {DnsBlock(net.version, str(net)) for net in tunnel.sources} if tunnel.strict else set()
    chosen = first_per_family(resolvers(tunnel, lease))
    return {DnsSource(net.version, str(net), str(chosen[net.version])) for net in tunnel.sources if net.version in chosen}


def plan_apps(tunnel, lease):
    """DnsApp objects for the programs of *tunnel*'s app_slot while up with *lease*; with strict,
    a DnsAppBlock while down (lease None)."""
    if tunnel.app_slot is None:
        return set()
    value = apps.mark(tunnel.app_slot)
    if lease is None:
        return {DnsAppBlock(value)} if tunnel.strict else set()
    return {DnsApp(v, value, str(to)) for v, to in first_per_family(resolvers(tunnel, lease)).items()}


def plan_default(tunnel, lease):
    """The default VPN's DnsDefault for *tunnel* with *lease* (None: down, which the caller plans only with strict)."""
    chosen = first_per_family(resolvers(tunnel, lease))
    if lease is None:
        return DnsDefault(tunnel.device, refuse=True)
    if not chosen:
        log.warning("tunnel %s: no DNS resolver known (dns = [...] in its section, or pushed by the VPN): "
                    "the host's DNS goes into the tunnel to its own destinations", tunnel.name)
    return DnsDefault(tunnel.device, tuple(str(chosen[v]) for v in sorted(chosen)))


# -- the config key -----------------------------------------------------------------------------

def from_config(value, where):
    """The `dns` key: a list of resolver addresses."""
    if not isinstance(value, list):
        raise InputError(f"{where}: dns = {value!r} must be a list of addresses, like [\"10.8.0.1\", \"fd00:8::1\"]")
    return _unique([addresses.host_address(v, f"{where} dns") for v in value], where)


def _unique(addrs, where):
    if len(addrs) > MAX_RESOLVERS:
        raise InputError(f"{where}: {len(addrs)} DNS resolvers; at most {MAX_RESOLVERS}")
    return tuple(dict.fromkeys(addrs))


# -- OpenVPN's environment ------------------------------------------------------------------------

class Var(NamedTuple):
    """One environment variable of OpenVPN's that can name a resolver (vpn-slice style)."""

    name: re.Pattern  # groups: the ordering indices
    field: str  # what it holds
    parse: object  # (value, where) -> parsed value, InputError if malformed


def _dhcp_option(value, where):
    """`dhcp-option DNS ADDR` (2.6: either family) / `dhcp-option DNS6 ADDR` -> the address; other foreign options -> None."""
    words = value.split(" ")
    if words[:1] != ["dhcp-option"] or len(words) < 2 or words[1] not in ("DNS", "DNS6"):
        return None
    if len(words) != 3:
        raise InputError(f"{where}: {value!r} is not 'dhcp-option {words[1]} ADDRESS'")
    return addresses.host_address(words[2], where, 6 if words[1] == "DNS6" else None)


def _port(value, where):
    if not (value.isascii() and value.isdigit() and 0 < int(value) < 65536):
        raise InputError(f"{where}: {value!r} is not a port (1-65535)")
    return int(value)


def _transport(value, where):
    if value not in ("plain", "DoT", "DoH"):
        raise InputError(f"{where}: {value!r} is not plain, DoT or DoH")
    return value


_N = r"(-?[0-9]{1,3})"  # --dns server ids: -128..127 (pushed ones 0..127)
OPENVPN_VARS = (
    Var(re.compile(r"foreign_option_([1-9][0-9]{0,3})"), "dhcp", _dhcp_option),
    Var(re.compile(rf"dns_server_{_N}_address_([1-8])"), "address", lambda v, w: addresses.host_address(v, w)),
    Var(re.compile(rf"dns_server_{_N}_port_([1-8])"), "port", _port),
    Var(re.compile(rf"dns_server_{_N}_transport"), "transport", _transport),
)


def from_openvpn(env):
    """The resolvers OpenVPN pushed, in its order: the `--dns` servers by id (they override
    `dhcp-option`, as OpenVPN says), else `dhcp-option DNS`/`DNS6` by foreign_option number.

    A `--dns` server on a port other than 53 or with DoT/DoH transport cannot take a plain-DNS
    redirect: it is left out, with a warning."""
    found = {}  # field -> {index tuple: value}
    for key, value in env.items():
        for var in OPENVPN_VARS:
            m = var.name.fullmatch(key)
            if m:
                where = f"openvpn {key}"
                if not isinstance(value, str) or not value.isprintable() or len(value) > 256:
                    raise InputError(f"{where}: {value!r} is not a printable value")
                parsed = var.parse(value, where)
                if parsed is not None:
                    found.setdefault(var.field, {})[tuple(int(g) for g in m.groups())] = parsed
    servers = found.get("address", {})
    if servers:
        out = []
        for (n, m), addr in sorted(servers.items()):
            port, transport = found.get("port", {}).get((n, m), DNS_PORT), found.get("transport", {}).get((n,), "plain")
            if port != DNS_PORT or transport != "plain":
                log.warning("openvpn dns server %d address %s: port %d, transport %s: not plain DNS on port 53, not used",
                            n, addr, port, transport)
                continue
            out.append(addr)
    else:
        out = [addr for _, addr in sorted(found.get("dhcp", {}).items())]
    return _unique(out, "openvpn pushed DNS")


# -- wg-quick's config file -------------------------------------------------------------------------

WG_DIR = "/etc/wireguard"
MAX_WG_CONFIG = 1 << 16
_DNS_LINE = re.compile(r"[ \t]*DNS[ \t]*=[ \t]*(.*?)[ \t]*")


def wg_config_path(iface, explicit=None):
    """wg-quick's config of *iface*: --wg-config PATH, else /etc/wireguard/IFACE.conf where wg-quick looks."""
    return explicit or os.path.join(WG_DIR, f"{iface}.conf")


def from_wg_config(path, required=False):
    """The resolvers of the `DNS =` lines in the [Interface] section of the wg-quick config at *path*
    (wg-quick's rule: an entry that looks like an address is a resolver, anything else a search
    domain). A missing file gives () unless *required*."""
    where = f"wg-quick config {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if required:
            raise InputError(f"{where}: does not exist") from None
        return ()
    except OSError as e:
        raise InputError(f"{where}: cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InputError(f"{where}: is not a regular file")
        raw = f.read(MAX_WG_CONFIG + 1)
    if len(raw) > MAX_WG_CONFIG:
        raise InputError(f"{where}: larger than {MAX_WG_CONFIG} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    return parse_wg_config(text, where)


def parse_wg_config(text, where):
    out, section = [], None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        if line.strip().startswith("["):
            section = line.strip()
            continue
        m = _DNS_LINE.fullmatch(line)
        if m and section == "[Interface]":
            for item in (i.strip() for i in m.group(1).split(",")):
                if re.fullmatch(r"[0-9.]+|.*:.*", item):  # wg-quick's own test for an address
                    out.append(addresses.host_address(item, f"{where} line {n} DNS"))
    return _unique(out, where)
