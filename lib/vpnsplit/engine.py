"""up, down and converge: plan, diff against the kernel, apply with rollback.

Each run is one linear story under the lock: plan the desired state, observe what vpnsplit
owns in the kernel, turn the difference into steps that each carry their undo, run them in
a leak-safe order, and record the lease last (only switching forwarding on comes after it,
so a killed run's record never misses a switch; switching it off comes first). If a step fails,
every step this run made is undone in reverse and the error names the step.

Ownership by record: each tunnel's record says what vpnsplit applied for it (owned.py); what
a record holds and the run no longer wants is removed with the rest, and `teardown` removes
a tunnel from its record alone, its config section gone.
"""

import ipaddress
import logging
import socket

from vpnsplit import bridge, default_vpn, owned, plan, refusals, retire, sysctl, transaction
from vpnsplit.config import Tunnel
from vpnsplit.errors import InputError
from vpnsplit.netlink import RTN_UNICAST, RTPROT_KERNEL
from vpnsplit.transaction import Step

log = logging.getLogger("vpnsplit")


def up(kernel, statedir, tunnel, lease, tunnels=None):
    """Bring the kernel to the 'up' state for *tunnel* with *lease*; record the lease.
    Given every configured *tunnels*, also refresh the default VPN's rules if it is this one."""
    return converge(kernel, statedir, [(tunnel, lease)], default_vpn.target(statedir, tunnels, tunnel, lease), _all(tunnels))


def down(kernel, statedir, tunnel, tunnels=None):
    """Remove what up added, keeping the strict fail-closed skeleton; remove the record."""
    return converge(kernel, statedir, [(tunnel, None)], default_vpn.target(statedir, tunnels, tunnel, None), _all(tunnels))


def _all(tunnels):
    return list(tunnels.values()) if tunnels else ()


def gone(statedir, tunnels):
    """The tunnels that have a record but no section among the configured *tunnels* (a dict by name)."""
    return [name for name in statedir.names() if name not in tunnels]


def removable(kernel, statedir, tunnels):
    """The tunnels gone from the config (a record, no section among *tunnels*) that a run over every tunnel
    tears down: all but one the default VPN still goes through (warned about: the host's traffic would then
    leave in the clear, or not at all; `vpnsplit default --off` comes first)."""
    out = []
    for name in gone(statedir, tunnels):
        table = carrying_default(kernel, statedir, name)
        if table is None:
            out.append(name)
        else:
            log.warning("tunnel %s is gone from the config, but the default VPN still sends this host's traffic into its table %s: "
                        "left in place; run 'vpnsplit default --off', then 'vpnsplit down %s'", name, table, name)
    return out


def carrying_default(kernel, statedir, name):
    """The table of tunnel *name*'s record that the default VPN's rules still send the host into, or None."""
    tables = owned.tables(statedir.record(name).applied or plan.State())
    return next((r.table for r in kernel.observe_default().rules
                 if r.priority == plan.DEFAULT_PRIORITY + 3 and r.table in tables), None)


def teardown(kernel, statedir, names, tunnels=()):
    """Remove everything the records of tunnels *names* say vpnsplit applied, from the records
    alone (their sections may be gone): their rules, the routes of their tables, their aliases,
    their nft entries, the forwarding switches they turned on, then the records themselves,
    in one transaction. What another record also claims stays. Refused (InputError, nothing
    changed) while the default VPN sends the host into one of their tables: `vpnsplit default
    --off` comes first. *tunnels*: every configured one (the VPN servers refusals know).
    Returns the names of the changes made. (converge's *gone* does the same within a larger run.)

    Something else a tunnel may own (a device vpnsplit created, say) is recorded beside `forwarding`
    in its record and removed by a step added where converge handles *gone*, before the record's removal.
    The tunnel's bridge is the exception: bridge.steps gets *gone*, and its record is the state file
    `bridges`, because a bridge with containers attached outlives the tunnel's record (and a tunnel
    that is down without strict has no record at all).
    """
    return converge(kernel, statedir, [], None, tunnels, gone=names)


def converge(kernel, statedir, targets, default=None, tunnels=(), gone=()):
    """Bring each (tunnel, lease) to 'up' with that lease, or to 'down' where lease is None;
    tear down the tunnels named in *gone* from their records (see teardown).

    *default* also brings the host-wide default VPN's rules in line: (tunnel, lease or None)
    to send everything through that tunnel, default_vpn.OFF to remove them, None to leave
    them alone. All tunnels go in one run: one observation, one list of steps, one nft
    transaction, one rollback if any step fails. Refusals (missing device, a table holding
    foreign routes, the clashes of refusals.py, which knows the VPN servers of every
    configured *tunnels*) come before the first change. Whatever a tunnel's record says
    vpnsplit applied earlier and this run no longer wants is removed (owned.leftovers).
    Returns the names of the changes made.
    """
    servers = refusals.Servers(statedir, tunnels or [t for t, _ in targets], targets)
    # forwarding switched off before anything else (a forwarded source whose rules go would otherwise reach
    # the main table: the uplink); the records, and forwarding switched on, after the kernel's steps
    desired, current, first, records = plan.State(), plan.State(), [], []
    if default is not None:
        current = kernel.observe_default()
        desired = default_vpn.desired(kernel, default, current)
    for tunnel, lease in targets:
        if lease is not None:
            want = plan.plan_up(tunnel, lease)
            for dev in {tunnel.device, tunnel.alias_dev}:
                if kernel.nl.link_index(dev) is None:
                    raise InputError(f"tunnel {tunnel.name}: device {dev!r} does not exist")
            _refuse_overlaps(kernel, tunnel, lease)
        else:
            want = plan.plan_down(tunnel)
        have, foreign, _ = kernel.observe(tunnel)
        if foreign and lease is not None:
            raise InputError(
                f"tunnel {tunnel.name}: table {tunnel.table} holds routes vpnsplit did not create ({', '.join(foreign[:3])}); "
                f"choose a table of its own"
            )
        record = statedir.record(tunnel.name)
        refusals.refuse(kernel.nl, tunnel, lease, servers, record.applied)
        desired, current = desired | want, current | have
        is_default = default not in (None, default_vpn.OFF) and default[0] is tunnel
        offs, ons, switched = sysctl.switch_steps(kernel, record.forwarding, tunnel, lease, is_default,
                                                  lambda name=tunnel.name: statedir.claimed_elsewhere(name))
        first += offs
        records.append((record, tunnel.device, lease, switched, want, ons))
    for name in gone:
        record = statedir.record(name)
        table = carrying_default(kernel, statedir, name)
        if table is not None:
            raise InputError(f"tunnel {name} is gone from the config, but the default VPN still sends this host's traffic into "
                             f"its table {table}: run 'vpnsplit default --off' first, then 'vpnsplit down {name}'")
        # a tunnel known by name alone: none of its forwarding switches is needed any more
        offs, _, _ = sysctl.switch_steps(kernel, record.forwarding, Tunnel(name, "", 0, 0), None, False,
                                         lambda name=name: statedir.claimed_elsewhere(name))
        first += offs
        records.append((record, owned.device(record), None, {}, plan.State(), []))
    # ownership by record: what the run's records hold, nothing in it wants and no other record claims, goes
    mine = [t.name for t, _ in targets] + list(gone)
    lefts = {name: owned.leftovers(statedir.record(name).applied or plan.State(), desired) for name in mine}
    left = owned.union(lefts.values())
    retired, slots, moved, confined = [], set(), {}, {}
    if left.objects():  # the other records are read only then: a run with nothing left over reads none
        claimed = owned.union(statedir.record(n).applied or plan.State() for n in statedir.names() if n not in mine)
        left = owned.leftovers(left, plan.State(), claimed)
        current |= kernel.present(left)
        from vpnsplit import sockets  # only a run that removes something may retire an alias

        configured = tunnels or [t for t, _ in targets]
        keep = _kept(statedir, mine, configured, targets)
        retired = sockets.retired(left, desired, keep)
        # a retired alias that sockets are still bound to stays confined, recorded with its tunnel's objects
        handled = [(r.name, dev, r.applied or plan.State()) for r, dev, *_ in records]
        confined = retire.kept(handled, left, retired, keep, [net for t in configured for net in t.sources])
        desired |= plan.State(nft=frozenset().union(*confined.values()))
        # an app slot whose rules go and that no tunnel uses any more: its programs are detached after the run
        owners = {t.app_slot: t for t in [*tunnels, *(t for t, _ in targets)] if t.app_slot is not None}
        slots = owned.app_slots(left) - owned.app_slots(desired | claimed) - set(owners)
        # a slot another tunnel took over: its programs stay only where that tunnel's would be (a fresh apply)
        moved = {s: owners[s] for name, was in lefts.items() for s in owned.app_slots(was) if s in owners and owners[s].name != name}
    # the bridges after the rules that make their subnets fail closed, before forwarding is switched on
    bridges = bridge.steps(kernel.nl, statedir, [t for t, _ in targets], tunnels, gone)
    bookkeeping = []
    for record, _dev, lease, switched, want, ons in records:
        kept = plan.State(nft=confined.get(record.name, frozenset()))
        bookkeeping += _record_steps(statedir, record, lease, switched, want | kept) + ons
    spared = {ipaddress.ip_address(e.address) for es in confined.values() for e in es}
    todo = plan.diff(desired, current)
    steps = first + _steps(kernel, todo, kernel.nat_view(), desired, retired, spared) + bridges + bookkeeping
    try:
        changes = transaction.run(steps)
    finally:
        kernel.invalidate()
    if slots or moved or any(t.cgroups or t.units for t, _ in targets):  # after the rules: a marked program never finds none
        from vpnsplit import cgroups

        cgroups.retire(slots, moved)  # a retired slot's programs: their sockets lose the mark once nothing steers it
        for tunnel, _ in targets:
            cgroups.cover(tunnel)
    if changes:  # a rule that shadows ours: said where it changes, reported by check whenever
        from vpnsplit import shadow

        for tunnel, lease in targets:
            for line in shadow.shadowed(kernel.nl, tunnel, lease) if lease else ():
                log.warning("tunnel %s: %s", tunnel.name, line)
    return changes


def _kept(statedir, mine, tunnels, targets):
    """The addresses whose sockets a run never closes: every configured alias, and the tunnel addresses
    of the leases (recorded or this run's) of the tunnels it handles."""
    leases = [statedir.record(name).lease for name in mine] + [lease for _, lease in targets]
    return {a for t in tunnels for a in (t.alias, t.alias6) if a} | {a.ip for lease in leases if lease for a in lease.locals}


def _steps(kernel, d, nat_view, desired, retired=(), spared=()):
    """The steps that turn the observed state into the desired one, in leak-safe order.

    Routes (the strict unreachable first) and aliases come before the NAT entry, which
    comes before the rules that steer traffic into the table; removals come last, so a
    restart with a new address never has a moment with neither old nor new rule. The sockets
    bound to a *retired* alias are closed once it is off its device, before its rules go (sockets.py),
    but the unconnected UDP ones of those *spared*: kept confined (retire.py), their packets dropped by the backstop.
    """
    nl = kernel.nl
    steps = []
    # A new route with the old one's destination and metric (a new gateway) is a replace:
    # the kernel would refuse to add it beside the old one.
    slot = lambda r: (r.family, r.table, r.dst, r.metric)  # noqa: E731
    replaced = {slot(r): r for r in d.remove.routes}
    for r in sorted(d.add.routes, key=lambda r: (r.type != "unreachable", r)):
        old = replaced.pop(slot(r), None)
        if old is not None:
            steps.append(Step(f"replace {old} with {r}", lambda r=r: nl.replace_route(r), lambda old=old: nl.replace_route(old)))
        else:
            steps.append(Step(f"add {r}", lambda r=r: nl.add_route(r), lambda r=r: nl.del_route(r)))
    for a in sorted(d.add.addresses):
        steps.append(Step(f"add {a}", lambda a=a: nl.add_address(a), lambda a=a: nl.del_address(a)))
    # an alias goes before its NAT, rules and backstop entries: once it is off the device nothing can
    # bind to it, so no packet from it ever finds its rule gone (the main table: the uplink, in the clear)
    for a in sorted(d.remove.addresses):
        steps.append(Step(f"delete {a}", lambda a=a: nl.del_address(a), lambda a=a: nl.add_address(a)))
    if retired:  # a closed socket cannot be reopened: nothing to undo
        from vpnsplit import sockets

        steps.append(Step(f"close the sockets bound to {', '.join(map(str, retired))}",
                          lambda: sockets.close_bound(retired, spared), lambda: None))
    intact, everything = nat_view
    if d.add.nft or d.remove.nft or (desired.nft and not intact):
        undo = []
        parts = [f"{verb} " + ", ".join(map(str, sorted(objs, key=repr))) for verb, objs in (("add", d.add.nft), ("remove", d.remove.nft)) if objs]
        name = "nft batch in table inet vpnsplit (" + ("; ".join(parts) or "repair the table") + ")"

        def nat_do():
            undo[:] = kernel.nat.change(d.add.nft, d.remove.nft, intact, everything)
            return True

        steps.append(Step(name, nat_do, lambda: kernel.nat.run(undo)))
    for r in sorted(d.add.rules):
        steps.append(Step(f"add {r}", lambda r=r: nl.add_rule(r), lambda r=r: nl.del_rule(r)))
    for r in sorted(d.remove.rules):
        steps.append(Step(f"delete {r}", lambda r=r: nl.del_rule(r), lambda r=r: nl.add_rule(r)))
    for r in sorted(replaced.values(), key=lambda r: (r.type == "unreachable", r)):
        steps.append(Step(f"delete {r}", lambda r=r: nl.del_route(r), lambda r=r: nl.add_route(r)))
    return steps


def _record_steps(statedir, record, lease, switched, applied):
    """The state-file step of a run (none if *record* already says it), undone by putting
    the old files back: the lease (None: down), the forwarding *switched* on and the objects
    *applied* (the tunnel's plan). A tunnel with none of them left has no record."""
    if lease is not None or applied.objects() or any(switched.values()):
        if record.lease == lease and record.forwarding == switched and record.applied == applied and not record.damage:
            return []  # in place: the file is not read again, let alone written
        return [Step("record state", lambda: statedir.write(record.name, lease, switched, applied) or True,
                     lambda: statedir.put_back(record))]
    if record.exists:
        return [Step("remove state", lambda: statedir.remove(record.name) or True, lambda: statedir.put_back(record))]
    return []


def _refuse_overlaps(kernel, tunnel, lease):
    """Refuse (InputError, before any change) a lease whose address collides with the host.

    A tunnel address inside a subnet connected on another device (a `proto kernel` route
    in the main table: the LAN) would answer ARP there for a LAN host's address and hide
    that host; an alias inside the tunnel's own subnet may be another VPN client's address.
    """
    for local in lease.locals:
        for alias in (tunnel.alias, tunnel.alias6):
            if alias is not None and alias.version == local.version and local.network.prefixlen < local.max_prefixlen and alias in local.network:
                raise InputError(
                    f"tunnel {tunnel.name}: alias {alias} is inside the tunnel subnet {local.network} the VPN gave {lease.device}; "
                    f"choose an alias outside it"
                )
        family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        # main is dumped and parsed once per run for all tunnels; a device name is looked up
        # only for a subnet that holds the address (100 tunnels: one dump, not one request per route)
        for net, proto, rtype, oif, gateway in kernel.nl.main_routes(family):
            # connected (proto kernel), unicast, no gateway, not the default, in main
            if proto != RTPROT_KERNEL or rtype != RTN_UNICAST or net is None or not net.prefixlen or gateway or local.ip not in net:
                continue
            device = kernel.nl.link_name(oif) if oif else None
            if device not in (None, tunnel.device):
                raise InputError(
                    f"tunnel {tunnel.name}: the address {local.ip} the VPN gave {lease.device} is inside {net} of {device} "
                    f"(a connected network of this host); the VPN's address pool must not overlap it"
                )
