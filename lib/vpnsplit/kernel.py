"""What the kernel holds of vpnsplit's, and what a tunnel's device carries.

Kernel holds the two backends of a run (pyroute2's netlink socket, libnftables) and what it
observed: one rule dump and one nft listing per run, shared by every tunnel the run
handles, so a run over many tunnels costs no more dumps than a run over one. A lease is
read off a device when the VPN client passes none (wg-quick) or by hand (`vpnsplit up`).
"""

import ipaddress
import logging

from vpnsplit import apps, nftkinds, plan, wgpeers
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease
from vpnsplit.nat import NatTable
from vpnsplit.netlink import Netlink

log = logging.getLogger("vpnsplit")


class Kernel:
    """The backends of one run, each opened on first use, and what it observed (cached until
    `invalidate()`, which converge calls after changing anything)."""

    def __init__(self):
        self.nl = Netlink()
        self._nat = None
        self.invalidate()

    @property
    def nat(self):
        if self._nat is None:
            self._nat = NatTable()
        return self._nat

    def close(self):
        self.nl.close()

    def invalidate(self):
        """Drop cached dumps and device lookups: the next observation reads the kernel again."""
        self._rules = self._nat_view = None
        self.nl.invalidate()

    def nat_view(self):
        """(skeleton intact, every entry of vpnsplit's nft table), read once per run."""
        if self._nat_view is None:
            intact, entries = self.nat.observe()
            self._nat_view = (intact, frozenset(entries))
        return self._nat_view

    def our_rules(self):
        """Every rule of vpnsplit's, dumped once per run."""
        if self._rules is None:
            self._rules = self.nl.dump_rules()
        return self._rules

    def observe_default(self):
        """The host-wide default VPN's objects: vpnsplit's rules at its priorities, its nft entries."""
        nft = frozenset(e for e in self.nat_view()[1] if nftkinds.owner(e) == "default")
        return plan.State(rules=frozenset(r for r in self.our_rules() if r.priority in plan.DEFAULT_OWNED), nft=nft)

    def observe(self, tunnel):
        """What vpnsplit owns for *tunnel* now: (State, foreign routes in its table, nat view)."""
        # a tunnel's rules point into its table, or (LAN exceptions into main) sit in its priorities
        rules = frozenset(
            r for r in self.our_rules()
            if (r.table == tunnel.table or r.priority in tunnel.priorities) and r.priority not in plan.DEFAULT_OWNED
        )
        routes, foreign = self.nl.table_routes(tunnel.table)
        wanted = {plan.Address(a.version, tunnel.alias_dev, str(a)) for a in (tunnel.alias, tunnel.alias6) if a}
        addrs = frozenset(self.nl.addresses(tunnel.alias_dev, wanted)) if wanted else frozenset()
        intact, entries = self.nat_view()
        # every nft entry names the tunnel device it is about, and devices are unique per tunnel;
        # the sources' DNS entries name their subnet, and those are unique per tunnel too
        sources = {str(n) for n in tunnel.sources}
        app_mark = apps.mark(tunnel.app_slot) if tunnel.app_slot is not None else None  # the programs' DNS entries name it
        nft = frozenset(e for e in entries if nftkinds.owner(e) == "tunnel" and e.device == tunnel.device
                        or nftkinds.owner(e) == "source" and e.source in sources
                        or nftkinds.owner(e) == "app" and e.mark == app_mark)
        state = plan.State(rules=rules, routes=frozenset(routes), addresses=addrs, nft=nft)
        return state, foreign, (intact, entries)

    def present(self, state):
        """The objects of *state* (a record's, owned.py) that the kernel holds now: rules among
        vpnsplit's, routes in their table, aliases on their device, entries in vpnsplit's nft table."""
        if not state.objects():
            return state  # nothing asked: nothing dumped
        tables = {t: set(self.nl.table_routes(t)[0]) for t in {r.table for r in state.routes}}
        addrs = set()
        for device in {a.device for a in state.addresses}:
            addrs |= self.nl.addresses(device, {a for a in state.addresses if a.device == device})
        return plan.State(rules=state.rules & set(self.our_rules()), routes=frozenset(r for r in state.routes if r in tables[r.table]),
                          addresses=frozenset(addrs), nft=state.nft & self.nat_view()[1])

    def device_lease(self, tunnel, servers=False, record=None):
        """The lease *tunnel*'s device carries (wg-quick passes nothing else). *servers*: with
        a WireGuard device's peer endpoints as the VPN servers. *record*: the tunnel's state.Record,
        whose aliases (an old alias still on the device, before this run removes it) are not the lease."""
        v4, v6 = self.nl.device_addresses(tunnel.device, skip=_aliases(tunnel, record))
        if v4 is None and v6 is None:
            raise InputError(f"tunnel {tunnel.name}: device {tunnel.device} has no global address "
                             f"(OpenVPN's ifconfig-noexec leaves it without one; vpnsplit needs the address on the device)")
        dev_type = "tap" if self.nl.is_ethernet(tunnel.device) else "tun"
        lease = Lease(device=tunnel.device, dev_type=dev_type, local4=v4, local6=v6)
        return wgpeers.with_endpoints(self.nl, lease) if servers else lease

    def current_lease(self, tunnel, record, servers=False):
        """The lease of *record* (the tunnel's state.Record) if the device still carries it, else what the device carries now.

        *servers*: also read a WireGuard device's peer endpoints now (they may have moved since
        wg-up). Only the default VPN needs them, and asking a kernel WireGuard device costs a
        pyroute2 import that a run finding everything in place otherwise never pays.
        """
        if self.nl.link_index(tunnel.device) is None:
            raise InputError(f"tunnel {tunnel.name}: device {tunnel.device!r} does not exist (is the VPN connected?)")
        # the addresses alone first: the device's type (one more request) only matters for a new lease
        recorded = record.lease
        carried = [a.ip for a in self.nl.device_addresses(tunnel.device, skip=_aliases(tunnel, record)) if a]
        if recorded and [a.ip for a in recorded.locals] == carried:
            lease = recorded
        else:
            lease = self.device_lease(tunnel, record=record)
            if recorded:
                log.warning("device %s carries %s, not the recorded %s: applying what the device carries", tunnel.device,
                            " ".join(map(str, lease.locals)), " ".join(map(str, recorded.locals)))
                # the device cannot show the VPN server (OpenVPN's trusted_ip) nor the pushed DNS: losing the
                # server would drop the default VPN's server exception and loop the client's packets into its tunnel
                lease = lease._replace(servers=recorded.servers, dns=recorded.dns)
        return wgpeers.with_endpoints(self.nl, lease) if servers else lease

    def source_devices(self, tunnel, version):
        """The devices the source subnets of IP *version* are connected to (bridges, veths), where known."""
        found = {self.nl.connected_device(net) for net in tunnel.sources if net.version == version}
        # the tunnel's bridge even before its address (this very run) connects its subnet
        found.update(tunnel.bridge for i in tunnel.bridge_addresses if i.version == version)
        return sorted({dev for dev in found if dev and dev != tunnel.device})


def _aliases(tunnel, record):
    """The addresses on a device that are aliases, not a lease: the configured ones and those *record* holds."""
    applied = record.applied.addresses if record is not None and record.applied else ()
    return {tunnel.alias, tunnel.alias6} | {ipaddress.ip_address(a.address) for a in applied}
