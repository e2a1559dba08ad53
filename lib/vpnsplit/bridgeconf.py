"""The two config keys of a tunnel's bridge (bridge.py keeps the device itself in step with them).

`bridge = true` names it br-NAME, a string names it; `bridge_address` gives its address(es),
by default seed 001's 10.20.<id>.1/24 (and fd20:<id>::1/64 when the section says the tunnel
carries IPv6). config.py merges their subnets into the tunnel's `sources`.
"""

import ipaddress

from vpnsplit import addresses
from vpnsplit.errors import InputError

# seed 001: br-${name} with 10.20.${id}.1/24; IPv6 the same way when the tunnel carries it
DEFAULT_ADDRESS = {4: "10.20.{id}.1/24", 6: "fd20:{id}::1/64"}
IFNAMSIZ = 15


def parse(name, s, where):
    """(bridge name or None, its addresses as ip_interface values) from a tunnel section *s*.

    `bridge = true` names it br-NAME (which needs `id`, for the default address), a string
    names it. `bridge_address` (a string or a list, at most one per IP version) defaults to
    10.20.<id>.1/24, plus fd20:<id>::1/64 when the section says the tunnel carries IPv6
    (`alias6` or `gateway6`): whether it will is unknown before its first connect.
    """
    value = s.get("bridge", False)
    if value is False:
        if "bridge_address" in s:
            raise InputError(f"{where}: bridge_address = {s['bridge_address']!r} needs a bridge (bridge = true or bridge = \"br-...\")")
        return None, ()
    if value is True:
        if "id" not in s:
            raise InputError(f"{where}: bridge = true needs id = N (its address 10.20.N.1/24 derives from it)")
        bridge = f"br-{name}"
    elif isinstance(value, str):
        bridge = value
    else:
        raise InputError(f"{where}: bridge = {value!r} must be true or a device name like \"br-{name}\"")
    if len(bridge) > IFNAMSIZ:
        raise InputError(f"{where}: bridge {bridge!r} is {len(bridge)} characters; an interface name has at most {IFNAMSIZ}"
                         + (": name it yourself, bridge = \"br-...\"" if value is True else ""))
    addresses.ifname(bridge, f"{where} bridge")
    if bridge in (s.get("device"), s.get("alias_device")):
        raise InputError(f"{where}: bridge = {bridge!r} is the tunnel's own device; a bridge needs a name of its own")
    return bridge, _addresses(s, where)


def _addresses(s, where):
    if "bridge_address" not in s:
        if "id" not in s:
            raise InputError(f"{where}: bridge without id needs bridge_address = \"10.20.N.1/24\" (the default derives from id)")
        carries6 = "alias6" in s or "gateway6" in s
        values = [DEFAULT_ADDRESS[v].format(id=s["id"]) for v in ((4, 6) if carries6 else (4,))]
    else:
        values = s["bridge_address"]
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not values:
            raise InputError(f"{where}: bridge_address = {s['bridge_address']!r} must be an address with its prefix, "
                             f"like \"10.20.1.1/24\", or a list of one per IP version")
    out = []
    for value in values:
        label = f"{where} bridge_address"
        try:
            iface = ipaddress.ip_interface(value) if isinstance(value, str) and "/" in value else None
        except ValueError:
            iface = None
        if iface is None:
            raise InputError(f"{label}: {value!r} must be an address with its prefix length, like \"10.20.1.1/24\"")
        addresses.host_interface(addresses.host_address(str(iface.ip), label), iface.network.prefixlen, label)
        if iface.network.prefixlen >= iface.max_prefixlen - 1:
            raise InputError(f"{label}: {value!r} leaves no room for containers; give a subnet like /24 or /64")
        if any(o.version == iface.version for o in out):
            raise InputError(f"{where}: bridge_address has two IPv{iface.version} addresses; give one per IP version")
        out.append(iface)
    return tuple(out)
