"""Validation of the addresses vpnsplit is handed, shared by the config and hook parsers.

Every check names the bad value and where it came from, because the message is the only
thing a user sees in the OpenVPN log or the journal.
"""

import ipaddress
import re

from vpnsplit.errors import InputError

# What the kernel accepts as an interface name (dev_valid_name), narrowed to the
# characters real VPN devices use, so a name can never smuggle shell or path syntax.
_IFNAME = re.compile(r"[A-Za-z0-9_.+@-]{1,15}")


def ifname(value, where):
    """Return *value* if it is a usable interface name, else raise InputError."""
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise InputError(f"{where}: {value!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . + @ -)")
    return value


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def host_address(value, where, version=None):
    """Parse a unicast host address usable as a source (no zone id, loopback, multicast...).

    Python's ipaddress accepts an IPv6 zone id ("fd00::1%eth0") and keeps it in str(),
    which would then reach netlink and nft as a malformed literal: a zone id is refused
    here. IPv4-mapped IPv6 (::ffff:a.b.c.d) and 0.0.0.0/8 ("this network", RFC 1122)
    are never valid source addresses either, though ipaddress flags neither.
    """
    if not isinstance(value, str):
        raise InputError(f"{where}: {value!r} is not an IP address")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InputError(f"{where}: {value!r} is not an IP address") from None
    if version is not None and addr.version != version:
        raise InputError(f"{where}: {value!r} is not an IPv{version} address")
    if addr.version == 6 and addr.scope_id is not None:
        raise InputError(f"{where}: {value!r} has a zone id (%{addr.scope_id}); give the address alone")
    for bad, what in (
        (addr.is_unspecified, "unspecified"),
        (addr.is_loopback, "loopback"),
        (addr.is_multicast, "multicast"),
        (addr.is_link_local, "link-local"),
        (addr.version == 4 and addr.is_reserved, "reserved (240.0.0.0/4)"),
        (addr.version == 4 and addr in _THIS_NETWORK, "'this network' (0.0.0.0/8)"),
        (addr.version == 6 and addr.ipv4_mapped is not None, "IPv4-mapped (::ffff:0:0/96)"),
    ):
        if bad:
            raise InputError(f"{where}: {value!r} is a {what} address, not a usable source address")
    return addr


def host_interface(addr, prefixlen, where):
    """Combine a host address and prefix length; refuse the network or broadcast address."""
    iface = ipaddress.ip_interface(f"{addr}/{prefixlen}")
    net = iface.network
    if net.num_addresses > 2 and addr in (net.network_address, net.broadcast_address):
        what = "network" if addr == net.network_address else "broadcast"
        raise InputError(f"{where}: {addr} is the {what} address of {net}")
    return iface


def netmask_prefix(value, where):
    """Turn a dotted netmask (255.255.255.0) into a prefix length (1-32).

    ipaddress also takes a bare prefix ("24") and a hostmask ("0.0.0.255") after the
    slash, and "0.0.0.0" would make the tunnel subnet the whole Internet: only a
    dotted netmask that round-trips exactly, with at least one bit set, is accepted.
    """
    try:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    except (ValueError, TypeError):
        prefix = None
    if not prefix or str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask) != value:
        raise InputError(f"{where}: {value!r} is not a netmask (128.0.0.0-255.255.255.255)")
    return prefix


def prefix_length(value, where, version):
    """Parse a prefix length given as text (OpenVPN's ifconfig_ipv6_netbits)."""
    top = 32 if version == 4 else 128
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and 0 < int(value) <= top):
        raise InputError(f"{where}: {value!r} is not a prefix length (1-{top})")
    return int(value)


def subnet(value, where):
    """A subnet written without host bits ("10.20.1.0/24"): not /0, loopback or multicast, no zone id."""
    try:
        net = ipaddress.ip_network(value) if isinstance(value, str) else None
    except ValueError:
        net = None
    if net is None or "%" in value or net.prefixlen == 0 or net.is_loopback or net.is_multicast:
        raise InputError(f"{where} {value!r} is not a subnet (address/prefix without host bits, not /0)")
    return net


# a VPN server's host name in `servers`: two or more labels, the last not all digits (that is an address)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$)(?:{_LABEL}\.)+(?![0-9]+$){_LABEL}")


def is_host_name(value):
    """Whether *value* is a DNS host name (not an address)."""
    return isinstance(value, str) and _HOST.fullmatch(value) is not None


_FORWARD = re.compile(r"(tcp|udp)/([0-9]{1,5})")


def port_forwards(value, where):
    """A `forward` list: "tcp/51413", "udp/51413", or "all" (every port and protocol), as (proto, port)."""
    if not isinstance(value, list):
        raise InputError(f"{where}: forward = {value!r} must be a list like [\"tcp/51413\", \"udp/51413\"] or [\"all\"]")
    out = []
    for item in value:
        m = _FORWARD.fullmatch(item) if isinstance(item, str) else None
        if item == "all":
            out.append(("", 0))
        elif m and 0 < int(m.group(2)) < 65536:
            out.append((m.group(1), int(m.group(2))))
        else:
            raise InputError(f"{where}: forward entry {item!r} is not tcp/PORT, udp/PORT or all")
    return tuple(out)
