"""Configurations and leases that would cut the host off, refused before the first change.

An alias is put on a device and steered by `from ALIAS lookup TABLE`: equal to an address
the host holds elsewhere (its uplink), to a gateway of the main table or to a VPN server,
it would send the host's own traffic, its way out or the VPN client's packets into the
tunnel (with strict: into nothing). A source subnet overlapping a subnet connected on
another device would do the same to the host's address there and to that network. And a
lease whose address the device does not carry (OpenVPN's ifconfig-noexec) would SNAT to
an address on no interface. Each refusal is an InputError (exit 2) naming the clash.
"""

import ipaddress

from vpnsplit.errors import InputError
from vpnsplit.netlink import AF, RTN_UNICAST, RTPROT_KERNEL
from vpnsplit.plan import Address


class Servers:
    """Every VPN server vpnsplit knows of: the config's `servers`, and the servers (OpenVPN's
    trusted_ip, the WireGuard endpoints) of the leases being applied and of those recorded.
    Read on first use: only a tunnel with an alias asks, and it costs a read of every record."""

    def __init__(self, statedir, tunnels, targets):
        self._args, self._known = (statedir, tunnels, targets), None

    def __contains__(self, address):
        if self._known is None:
            statedir, tunnels, targets = self._args
            self._known = {a for t in tunnels for a in t.servers}
            self._known.update(a for _, lease in targets if lease is not None for a in lease.servers)
            for t in tunnels:
                recorded = statedir.record(t.name).lease
                self._known.update(recorded.servers if recorded else ())
        return address in self._known


def refuse(nl, tunnel, lease, servers, applied=None):
    """Raise InputError if applying *tunnel* (with *lease*, or its down state for None) would
    cut the host off; *servers*: the known VPN servers (Servers); *applied*: what the tunnel's
    record says vpnsplit applied for it (an alias it put on another device is its own: moving)."""
    if lease is not None:
        _refuse_unborne(nl, tunnel, lease)
    for alias in (tunnel.alias, tunnel.alias6):
        if alias is not None:
            mine = {a.device for a in (applied.addresses if applied else ()) if a.address == str(alias)}
            _refuse_alias(nl, tunnel, alias, servers, mine)
    for net in tunnel.sources:
        _refuse_source(nl, tunnel, net)


def _refuse_unborne(nl, tunnel, lease):
    """The device must carry every address of the lease: rules and SNAT name them."""
    wanted = {Address(a.version, tunnel.device, str(a.ip)) for a in lease.locals}
    missing = sorted(wanted - nl.addresses(tunnel.device, wanted))
    if missing:
        carried = " ".join(str(a.ip) for a in nl.device_addresses(tunnel.device, skip={tunnel.alias, tunnel.alias6}) if a)
        raise InputError(
            f"tunnel {tunnel.name}: device {tunnel.device} does not carry {', '.join(a.address for a in missing)}, the address "
            f"the VPN gave it ({'it carries ' + carried if carried else 'it has no address'}; OpenVPN's ifconfig-noexec "
            f"leaves it without one): nothing applied, vpnsplit would SNAT to an address on no interface"
        )


def _refuse_alias(nl, tunnel, alias, servers, mine):
    key = "alias" if alias.version == 4 else "alias6"
    where = f"tunnel {tunnel.name}: {key} {alias}"
    held = sorted(set(nl.devices_holding(alias)) - {tunnel.alias_dev, tunnel.device} - mine)
    if held:
        raise InputError(f"{where} is an address this host holds on {held[0]}; choose an address of its own")
    for _net, _proto, _type, oif, gateway in nl.main_routes(AF[alias.version]):
        if gateway and ipaddress.ip_address(gateway) == alias:
            raise InputError(f"{where} is the gateway {gateway} of the main table (dev {nl.link_name(oif)}); choose another")
    if alias in servers:
        raise InputError(f"{where} is the address of a VPN server; choose another")


def _refuse_source(nl, tunnel, net):
    """A source subnet lives on one device of its own (a bridge): not the uplink (the devices of
    the main table's default routes, whose address the host's own traffic leaves from), not the
    tunnel, and not shared with a subnet connected on another device."""
    fam = AF[net.version]
    uplinks = {nl.link_name(oif) for route, _, _, oif, _ in nl.main_routes(fam) if route is None and oif}
    overlapping = [(route, nl.link_name(oif) if oif else None) for route, proto, rtype, oif, gateway in nl.main_routes(fam)
                   if route is not None and not gateway and proto == RTPROT_KERNEL and rtype == RTN_UNICAST and route.overlaps(net)]
    own = nl.connected_device(net)
    for route, device in overlapping:
        why = ("its uplink" if device in uplinks else "the tunnel" if device == tunnel.device
               else None if device == own or len({d for _, d in overlapping}) == 1 else "not the subnet's own device")
        if why:
            raise InputError(
                f"tunnel {tunnel.name}: sources entry {net} overlaps {route}, a network connected to this host on {device} "
                f"({why}): its traffic would go into the tunnel; list only the containers' own subnets"
            )
