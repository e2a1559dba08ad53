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


def host_address(value, where, version=None):
    """Parse a unicast host address usable as a source (no zone id, loopback, multicast...)."""
    if not isinstance(value, str):
        raise InputError(f"{where}: {value!r} is not an IP address")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InputError(f"{where}: {value!r} is not an IP address") from None
    if version is not None and addr.version != version:
        raise InputError(f"{where}: {value!r} is not an IPv{version} address")
    for bad, what in (
        (addr.is_unspecified, "unspecified"),
        (addr.is_loopback, "loopback"),
        (addr.is_multicast, "multicast"),
        (addr.is_link_local, "link-local"),
        (addr.version == 4 and addr.is_reserved, "reserved (240.0.0.0/4)"),
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
    """Turn a dotted netmask (255.255.255.0) into a prefix length."""
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    except ValueError:
        raise InputError(f"{where}: {value!r} is not a netmask") from None


def prefix_length(value, where, version):
    """Parse a prefix length given as text (OpenVPN's ifconfig_ipv6_netbits)."""
    top = 32 if version == 4 else 128
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and 0 < int(value) <= top):
        raise InputError(f"{where}: {value!r} is not a prefix length (1-{top})")
    return int(value)
