"""Rules, routes and alias addresses: observe what vpnsplit owns (nldump dumps, ioctls for
devices), and change it (pyroute2).

Ownership: a rule or route is vpnsplit's when it carries protocol RTPROT_VPNSPLIT; it belongs to a
tunnel when it points at (or lives in) that tunnel's table. Aliases are the configured
addresses on the configured device. Nothing else in the kernel is ever read as ours.

Idempotency contract of every change method: it returns True when it changed the kernel
and False when the kernel already was that way (adding what exists, deleting what is
gone), so the caller knows exactly what to undo. Anything else raises NetlinkError.
"""

import errno
import ipaddress
import socket

from vpnsplit import nldump
from vpnsplit.errors import InputError
from vpnsplit.nlrequests import AF, addr_spec, named, no_device, route_spec, rule_spec, tolerate
from vpnsplit.plan import EVERYWHERE, MAIN_TABLE, RTPROT_VPNSPLIT, Address, Route, Rule

RTN_UNICAST, RTN_LOCAL, RTN_UNREACHABLE = 1, 2, 7  # route types
RTN = {RTN_UNICAST: "unicast", RTN_UNREACHABLE: "unreachable"}
RTPROT_KERNEL = 2  # the protocol of the routes the kernel adds itself (connected networks)


class Netlink:
    """One pyroute2 socket for a whole run, opened on first use: reading needs none (nldump
    and ioctls), so a run that finds everything in place never imports pyroute2.

    What a run reads about devices is read once and shared by every tunnel it handles:
    device names and indexes (one ioctl each), one dump of every address, one dump of the
    main table per family. `invalidate()` drops them, as Kernel.invalidate() does after a run
    changes the kernel. A device that vanishes mid-run then fails its step with ENODEV.
    """

    def __init__(self):
        self._ipr = None
        self.invalidate()

    @property
    def ipr(self):
        return self._ipr or self.connect()

    def connect(self):
        """Import pyroute2 (~0.15 s of CPU) and open its IPRoute socket, if not done yet."""
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self):
        if self._ipr is not None:
            self._ipr.close()

    def invalidate(self):
        self._indexes, self._names, self._addrs, self._main, self._holders = {}, {}, None, {}, None

    # -- reading -------------------------------------------------------------------------

    def link_index(self, name):
        """The ifindex of *name*, or None when there is no such device (absence is not cached).

        if_nametoindex is one ioctl; pyroute2's link_lookup costs a netlink round trip."""
        if name not in self._indexes:
            try:
                index = socket.if_nametoindex(name)
            except OSError:
                return None
            self._indexes[name], self._names[index] = index, name
        return self._indexes[name]

    def link_name(self, index):
        """The name of device *index*, or None when there is none."""
        if index not in self._names:
            try:
                self._names[index] = socket.if_indextoname(index)
            except OSError:
                return None
        return self._names[index]

    def is_ethernet(self, name):
        """True for a tap (Ethernet) device, False for tun/wireguard (no link layer)."""
        msgs = self.ipr.get_links(self._index(name))
        return msgs[0]["ifi_type"] == 1  # ARPHRD_ETHER

    def link_kind(self, name):
        """The rtnetlink kind of device *name* ("wireguard", "veth"; None for tun and plain devices)."""
        info = self.ipr.get_links(self._index(name))[0].get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info else None

    def main_routes(self, family):
        """The main table's routes of *family* (socket.AF_INET/AF_INET6) as (network or None for
        a default, protocol, type, oif, gateway), dumped and parsed once per run: every
        tunnel's overlap check reads them."""
        if family not in self._main:
            self._main[family] = [
                (ipaddress.ip_network(f"{dst}/{dst_len}", strict=False) if dst else None, proto, rtype, oif, gateway)
                for dst, dst_len, proto, rtype, oif, gateway, _metric in nldump.routes(family, MAIN_TABLE)
            ]
        return self._main[family]

    def connected_device(self, network):
        """The device of the main table's gateway-less route that holds *network*, or None."""
        best = None
        for route, _proto, _type, oif, gateway in self.main_routes(AF[network.version]):
            if route is None or gateway or not oif:
                continue
            if network.subnet_of(route) and (best is None or route.prefixlen > best[0]):
                best = (route.prefixlen, oif)
        return self.link_name(best[1]) if best else None

    def _addresses(self, index):
        """The addresses on device *index* as (family, prefixlen, scope, IFA_LOCAL, IFA_ADDRESS).

        One dump of every address per run, read with nldump: pyroute2's get_addr(index=...)
        dumps them all on every call and decodes each (O(addresses) per tunnel, ~20 ms with
        100 tunnels)."""
        if self._addrs is None:
            self._addrs = {}
            for ifindex, *entry in nldump.addresses():
                self._addrs.setdefault(ifindex, []).append(tuple(entry))
        return self._addrs.get(index, [])

    def devices_holding(self, address):
        """The names of the devices that carry *address* (an ipaddress value), from the run's one address dump."""
        if self._holders is None:
            self._addresses(0)
            self._holders = {}
            for index, entries in self._addrs.items():
                for _fam, _, _, local, addr in entries:
                    self._holders.setdefault(local or addr, []).append(index)
        return [self.link_name(index) for index in self._holders.get(str(address), [])]

    def uplink_addresses(self):
        """The global addresses of the devices holding the main table's default routes."""
        out = set()
        for fam in AF.values():
            for route, _proto, _type, oif, _gw in self.main_routes(fam):
                if route is None and oif:
                    out.update(ipaddress.ip_address(local or addr) for f, _, scope, local, addr in self._addresses(oif) if f == fam and scope == 0)
        return sorted(out, key=lambda a: (a.version, a))

    def dump_rules(self):
        """All of vpnsplit's rules as Rule objects; one dump per family.

        Read with nldump, which decodes only rules carrying RTPROT_VPNSPLIT: pyroute2 would decode
        every rule in the kernel (1.6 s with 10,000 foreign rules)."""
        out = []
        for fam in (4, 6):
            for priority, table, src, src_len, dst, dst_len, suppress, fwmark, fwmask, iif, proto, ports in nldump.rules(AF[fam], RTPROT_VPNSPLIT):
                src = f"{src}/{src_len}" if src else EVERYWHERE[fam]
                dst = f"{dst}/{dst_len}" if dst else ""
                first, _, last = (ports or "0:0").partition(":")
                out.append(Rule(fam, priority, table, src, dst, -1 if suppress is None else suppress, fwmark or 0, fwmask or 0,
                                iif or "", proto or 0, int(first) if first == last else -1))
        return out

    def table_routes(self, table):
        """Every route in *table*: (vpnsplit's as Route objects, a description of foreign ones)."""
        ours, foreign = [], []
        for fam in (4, 6):
            # nldump: the kernel sends only this table's routes (pyroute2 dumps every table)
            for dst, dst_len, proto, rtn, oif, gateway, metric in nldump.routes(AF[fam], table):
                dst = f"{dst}/{dst_len}" if dst else EVERYWHERE[fam]
                if proto != RTPROT_VPNSPLIT:
                    foreign.append(f"{dst} proto {proto}")
                    continue
                rtype = RTN.get(rtn, str(rtn))
                device = self.link_name(oif) if oif and rtype == "unicast" else None
                ours.append(Route(fam, table, dst, rtype, device, gateway, metric or 0))
        return ours, foreign

    def addresses(self, device, wanted):
        """Which of the *wanted* Address objects on *device* exist."""
        index = self.link_index(device)
        if index is None:
            return set()
        present = {Address(4 if f == socket.AF_INET else 6, device, local or addr) for f, _, _, local, addr in self._addresses(index)}
        return {a for a in wanted if a in present}

    def device_addresses(self, device, skip=()):
        """The first global addresses on *device* not in *skip*: (IPv4Interface|None, IPv6Interface|None).

        *skip* holds the aliases, which may sit on the same device. For the IPv4 address
        read IFA_LOCAL: on point-to-point links IFA_ADDRESS is the peer.
        """
        index = self.link_index(device)
        if index is None:
            raise InputError(f"device {device!r} does not exist")
        v4 = v6 = None
        for fam, prefixlen, scope, local, addr in self._addresses(index):
            if scope != 0:  # only global scope: skip link-local and host
                continue
            if fam == socket.AF_INET:
                iface = ipaddress.IPv4Interface(f"{local}/{prefixlen}")
                v4 = v4 or (None if iface.ip in skip else iface)
            elif fam == socket.AF_INET6:
                iface = ipaddress.IPv6Interface(f"{addr}/{prefixlen}")
                v6 = v6 or (None if iface.ip in skip else iface)
        return v4, v6

    # -- changing --------------------------------------------------------------------------

    def add_rule(self, rule):
        """Add *rule*. An identical rule already there is not an error (returns False)."""
        return tolerate(self.ipr.rule, "add", (errno.EEXIST,), **rule_spec(rule))

    def del_rule(self, rule):
        """Delete exactly *rule* (all selectors given, so never a foreign rule). Absent: False."""
        return tolerate(self.ipr.rule, "del", (errno.ENOENT,), **rule_spec(rule))

    def add_route(self, route):
        """Add *route* to its table. The same route already there: False."""
        with named(route.device):
            return tolerate(self.ipr.route, "add", (errno.EEXIST,), **self._route_spec(route))

    def replace_route(self, route):
        """Put *route* in place of the route with the same destination and metric, in one
        netlink call (a new gateway on reconnect): no moment without a route. Always True."""
        with named(route.device):
            self.ipr.route("replace", **self._route_spec(route))
        return True

    def del_route(self, route):
        """Delete *route*. Already gone (or its device vanished, taking it along): False."""
        if route.device and self.link_index(route.device) is None:
            return False
        return tolerate(self.ipr.route, "del", (errno.ESRCH, errno.ENOENT, errno.ENODEV), **self._route_spec(route))

    def add_address(self, address):
        """Put an alias on its device. Already there: False."""
        with named(address.device):
            return tolerate(self.ipr.addr, "add", (errno.EEXIST,), **self._addr_spec(address))

    def del_address(self, address):
        """Take an alias off its device. Already gone, or the device is gone: False."""
        if self.link_index(address.device) is None:
            return False
        return tolerate(self.ipr.addr, "del", (errno.EADDRNOTAVAIL, errno.ENODEV), **self._addr_spec(address))

    def _index(self, device):
        index = self.link_index(device)
        if index is None:
            raise no_device(device)
        return index

    def _route_spec(self, route):
        return route_spec(route, self._index(route.device) if route.device else None)

    def _addr_spec(self, address):
        return addr_spec(address, self._index(address.device))
