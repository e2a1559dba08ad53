"""up, down and status for one tunnel: plan, diff against the kernel, apply with rollback.

Each command is one linear story under the lock: plan the desired state, observe what
vpnsplit owns in the kernel, turn the difference into steps that each carry their undo,
run them in a leak-safe order, and record the lease last (only switching forwarding on
comes after it, so a killed run's record never forgets a switch). If a step fails, every step
this run made is undone in reverse and the error names the step.
"""

import logging
import os
import signal

from vpnsplit import plan
from vpnsplit.errors import InputError, KernelError
from vpnsplit.lease import Lease

log = logging.getLogger("vpnsplit")


class Step:
    """One change and its undo. A plain class: a dataclass costs ~0.5 ms to define at every start."""

    __slots__ = ("name", "do", "undo")

    def __init__(self, name, do, undo):
        self.name = name
        self.do = do  # () -> bool: True if it changed something (so there is something to undo)
        self.undo = undo  # () -> None


class Kernel:
    """The two backends of one run: pyroute2's netlink socket and libnftables, each opened on first use.

    Observation is one rule dump and one nft listing per run, shared by every tunnel the
    run handles (dumps are cached until `forget()`, which run_steps calls after changing
    anything), so a run over many tunnels costs no more dumps than a run over one.
    """

    def __init__(self):
        from vpnsplit.netlink import Netlink

        self.nl = Netlink()
        self._nat = None
        self.forget()

    @property
    def nat(self):
        if self._nat is None:
            from vpnsplit.nat import NatTable

            self._nat = NatTable()
        return self._nat

    def close(self):
        self.nl.close()

    def forget(self):
        """Drop cached dumps and device lookups: the next observation reads the kernel again."""
        self._rules = self._nat_view = None
        self.nl.forget()

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
        """The host-wide default VPN's objects: vpnsplit's rules at its priorities, its reply marking."""
        replies = frozenset(e for e in self.nat_view()[1] if isinstance(e, plan.ReplyMark))
        return plan.State(rules=frozenset(r for r in self.our_rules() if r.priority in plan.DEFAULT_PRIORITIES), nft=replies)

    def observe(self, tunnel):
        """What vpnsplit owns for *tunnel* now: (State, foreign routes in its table, nat view)."""
        # a tunnel's rules point into its table, or (LAN exceptions into main) sit in its priorities
        rules = frozenset(
            r for r in self.our_rules()
            if (r.table == tunnel.table or r.priority in tunnel.priorities) and r.priority not in plan.DEFAULT_PRIORITIES
        )
        routes, foreign = self.nl.table_routes(tunnel.table)
        wanted = {plan.Address(a.version, tunnel.alias_dev, str(a)) for a in (tunnel.alias, tunnel.alias6) if a}
        addrs = frozenset(self.nl.addresses(tunnel.alias_dev, wanted)) if wanted else frozenset()
        intact, entries = self.nat_view()
        # every nft entry names the tunnel device it is about, and devices are unique per tunnel
        # (the default VPN's ReplyMark names its tunnel too, but is observe_default's)
        nft = frozenset(e for e in entries if e.device == tunnel.device and not isinstance(e, plan.ReplyMark))
        state = plan.State(rules=rules, routes=frozenset(routes), addresses=addrs, nft=nft)
        return state, foreign, (intact, entries)

    def lease_from_device(self, tunnel):
        """Read the tunnel's lease off its device (wg-quick passes nothing else)."""
        v4, v6 = self.nl.device_addresses(tunnel.device, skip={tunnel.alias, tunnel.alias6})
        if v4 is None and v6 is None:
            raise InputError(f"tunnel {tunnel.name}: device {tunnel.device} has no global address")
        dev_type = "tap" if self.nl.is_ethernet(tunnel.device) else "tun"
        return Lease(device=tunnel.device, dev_type=dev_type, local4=v4, local6=v6)


def _steps(kernel, d, nat_view, desired):
    """The steps that turn the observed state into the desired one, in leak-safe order.

    Routes (the strict unreachable first) and aliases come before the NAT entry, which
    comes before the rules that steer traffic into the table; removals come last, so a
    restart with a new address never has a moment with neither old nor new rule.
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
    for a in sorted(d.remove.addresses):
        steps.append(Step(f"delete {a}", lambda a=a: nl.del_address(a), lambda a=a: nl.add_address(a)))
    return steps


def run_steps(steps):
    """Run *steps* in order; on the first failure undo what ran, newest first, and raise.

    VPNSPLIT_TEST_KILL_AFTER=N makes the process SIGKILL itself after its N-th step: the
    crash-consistency tests use it to stop a run at every step in turn.
    """
    if not steps:
        return []  # in place: nothing to do, and no need to load pyroute2 for its errors
    from pyroute2.netlink.exceptions import NetlinkError

    from vpnsplit.nat import NftError
    from vpnsplit.state import StateError

    kill_after = int(os.environ.get("VPNSPLIT_TEST_KILL_AFTER", "0") or 0)
    done = []
    for n, step in enumerate(steps, 1):
        try:
            changed = step.do()
        except (NetlinkError, NftError, StateError, OSError) as e:
            reason = e.args[1] if isinstance(e, NetlinkError) and len(e.args) > 1 else str(e)
            rolled = _rollback(done)
            raise KernelError(f"step {n}/{len(steps)} '{step.name}' failed: {reason}; {rolled}") from None
        if changed:
            log.info("%s", step.name)
            done.append(step)
        if n == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return [s.name for s in done]


def _rollback(done):
    if not done:
        return "nothing had been changed"
    failed = []
    for step in reversed(done):
        try:
            step.undo()
        except Exception as e:  # keep undoing the rest: a partial rollback beats none
            failed.append(f"{step.name} ({e})")
    if failed:
        return f"rolled back {len(done) - len(failed)} of {len(done)} steps; could not undo: " + "; ".join(failed)
    return f"rolled back the {len(done)} step(s) this run made"


def up(kernel, statedir, tunnel, lease, tunnels=None):
    """Bring the kernel to the 'up' state for *tunnel* with *lease*; record the lease.
    Given every configured *tunnels*, also refresh the default VPN's rules if it is this one."""
    return converge(kernel, statedir, [(tunnel, lease)], _if_default(statedir, tunnels, tunnel, lease))


def down(kernel, statedir, tunnel, tunnels=None):
    """Remove what up added, keeping the strict fail-closed skeleton; forget the lease."""
    return converge(kernel, statedir, [(tunnel, None)], _if_default(statedir, tunnels, tunnel, None))


def _if_default(statedir, tunnels, tunnel, lease):
    return (tunnel, lease) if tunnels and default_tunnel(statedir, tunnels) is tunnel else None


OFF = "off"


def default_tunnel(statedir, tunnels):
    """The host-wide default VPN: `vpnsplit default NAME` if said (None after --off), else
    the section `default = true` chooses (config.default_candidates), else None."""
    from vpnsplit.config import default_candidates

    chosen = statedir.default_choice()
    if chosen is None:
        return next(iter(default_candidates(tunnels)), None)
    return tunnels.get(chosen)


def converge(kernel, statedir, targets, default=None):
    """Bring each (tunnel, lease) to 'up' with that lease, or to 'down' where lease is None.

    *default* also brings the host-wide default VPN's rules in line: (tunnel, lease or None)
    to send everything through that tunnel, OFF to remove them, None to leave them alone.
    All tunnels go in one run: one observation, one list of steps, one nft transaction,
    one rollback if any step fails. Refusals (missing device, a table holding foreign
    routes) come before the first change.
    """
    desired, current, records = plan.State(), plan.State(), []
    if default is not None:
        current = kernel.observe_default()
        desired = _default_rules(kernel, default, current)
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
        desired, current = desired | want, current | have
        recorded = statedir.record(tunnel.name)
        offs, ons, switched = _forwarding(kernel, recorded, tunnel, lease)
        records += offs + _record_step(statedir, recorded, tunnel, lease, switched) + ons
    steps = _steps(kernel, plan.diff(desired, current), kernel.nat_view(), desired) + records
    try:
        return run_steps(steps)
    finally:
        kernel.forget()


def _default_rules(kernel, default, current):
    """The desired rules of the host-wide default VPN (none for OFF), given its *current* ones.

    The server exceptions come from the config, the lease (OpenVPN's trusted_ip, the
    WireGuard endpoints, read at up) and, while the tunnel is down or its client names no
    server, the exceptions in place: a reconnecting client must still reach its server
    through the kill switch.
    """
    if default == OFF:
        return plan.State()
    tunnel, lease = default
    # a client that names no server (a wedged wireguard-go) keeps the exceptions in place:
    # dropping them would loop its packets into its own tunnel
    servers = {*tunnel.servers, *((lease and lease.servers) or plan.default_servers(current, tunnel))}
    if not servers and (lease is not None or tunnel.strict):
        log.warning("tunnel %s: no VPN server address known (OpenVPN trusted_ip, the WireGuard endpoint, or servers = [...] "
                    "in the config): %s", tunnel.name,
                    "its own packets may loop into the tunnel" if lease else "with strict, its VPN client cannot reach the server through the kill switch before it connects")
    return plan.plan_default(tunnel, lease, kernel.nl.uplink_addresses(), sorted(servers, key=lambda a: (a.version, a)))


def _refuse_overlaps(kernel, tunnel, lease):
    """Refuse (InputError, before any change) a lease whose address collides with the host.

    A tunnel address inside a subnet connected on another device (a `proto kernel` route
    in the main table: the LAN) would answer ARP there for a LAN host's address and hide
    that host; an alias inside the tunnel's own subnet may be another VPN client's address.
    """
    import socket

    for local in lease.locals:
        for alias in (tunnel.alias, tunnel.alias6):
            if alias is not None and alias.version == local.version and local.network.prefixlen < local.max_prefixlen and alias in local.network:
                raise InputError(
                    f"tunnel {tunnel.name}: alias {alias} is inside the tunnel subnet {local.network} the VPN gave {lease.device}; "
                    f"choose an alias outside it"
                )
        family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        # main is dumped and parsed once per run for all tunnels; a device name is looked up
        # only for a subnet that holds the address (was: a netlink request per connected
        # route per tunnel, 10,100 requests and 17 s for `up --all` with 100 tunnels)
        for net, proto, rtype, oif, gateway in kernel.nl.main_routes(family):
            # connected (proto kernel), unicast, no gateway, not the default, in main
            if proto != 2 or rtype != 1 or net is None or not net.prefixlen or gateway or local.ip not in net:
                continue
            device = kernel.nl.link_name(oif) if oif else None
            if device not in (None, tunnel.device):
                raise InputError(
                    f"tunnel {tunnel.name}: the address {local.ip} the VPN gave {lease.device} is inside {net} of {device} "
                    f"(a connected network of this host); the VPN's address pool must not overlap it"
                )


def source_devices(kernel, tunnel, version):
    """The devices the source subnets of IP *version* are connected to (bridges, veths), where known."""
    found = (kernel.nl.connected_device(net) for net in tunnel.sources if net.version == version)
    return sorted({dev for dev in found if dev and dev != tunnel.device})


# the state file's field listing the devices whose forwarding a tunnel switched on, by IP version
RECORDED = {4: "forwarding", 6: "forwarding6"}
SWITCHED = {4: "IPv4 forwarding", 6: "IPv6 forwarding (force_forwarding)"}


def _forwarding_needed(kernel, tunnel, lease, version):
    """The devices that must forward IP *version* for *tunnel*'s sources with *lease* (none
    while down): where they arrive and the tunnel. IPv6: none if all.forwarding already
    forwards everywhere, or if the kernel has no per-device switch (then it warns)."""
    local = lease and (lease.local4 if version == 4 else lease.local6)
    if local is None or not any(n.version == version for n in tunnel.sources):
        return set()
    if version == 6:
        from vpnsplit import sysctl

        if sysctl.all_forwarding6():
            return set()
        if not sysctl.per_device6():
            log.warning("tunnel %s: IPv6 sources are not forwarded: set net.ipv6.conf.all.forwarding = 1 "
                        "(this kernel has no per-device net.ipv6.conf.DEV.force_forwarding, Linux 6.17+)", tunnel.name)
            return set()
    return {tunnel.device, *source_devices(kernel, tunnel, version)}


def _forwarding(kernel, recorded, tunnel, lease):
    """(steps switching forwarding back off, steps switching it on, {version: devices switched on after them}).

    Forwarding goes on where it is needed and off, and is recorded as vpnsplit's; where it
    is on already it is the admin's and stays. A recorded device found off (writing
    net.ipv6.conf.all.forwarding = 0 resets force_forwarding) is switched on again. Devices
    recorded but no longer needed (all of them on down) are switched back off.
    The caller records before switching on and after switching off, so a run killed in
    between leaves a record that claims too much, never too little: the next run
    finds a claimed device off and switches it on, or finds it off already."""
    offs, ons, switched = [], [], {4: set(), 6: set()}
    if not tunnel.sources and not any(recorded.get(field) for field in RECORDED.values()):
        return offs, ons, switched  # the common case (no source subnets): not even sysctl is loaded
    from vpnsplit import sysctl

    for version, field in RECORDED.items():
        was, need = set(recorded.get(field) or []), _forwarding_needed(kernel, tunnel, lease, version)
        switched[version] = was & need
        what = SWITCHED[version]
        for dev in sorted(need):
            if sysctl.switch(dev, version) is False:
                ons.append(Step(f"enable {what} on {dev}", lambda d=dev, v=version: sysctl.set_switch(d, v, True),
                                lambda d=dev, v=version: sysctl.set_switch(d, v, False)))
                switched[version].add(dev)
        for dev in sorted(was - need):
            offs.append(Step(f"switch {what} on {dev} back off", lambda d=dev, v=version: sysctl.set_switch(d, v, False),
                             lambda d=dev, v=version: sysctl.set_switch(d, v, True)))
    return offs, ons, switched


def _record_step(statedir, recorded, tunnel, lease, switched):
    """The state-file step of a run (none if the *recorded* document is already right),
    undone by restoring the old files."""
    name = tunnel.name
    if lease is not None:
        moved = any(set(recorded.get(field) or []) != switched[v] for v, field in RECORDED.items())
        if statedir.lease_in(recorded, name) == lease and not moved:
            return []  # in place: the file is not read again, let alone written
        snap = statedir.snapshot(name)
        return [Step("record state", lambda: statedir.save(name, lease, switched) or True, lambda: statedir.restore(name, snap))]
    snap = statedir.snapshot(name)
    if any(snap.values()):
        return [Step("forget state", lambda: statedir.forget(name) or True, lambda: statedir.restore(name, snap))]
    return []


def desired_for(statedir, tunnel):
    """What the kernel should hold for *tunnel* according to the recorded state."""
    lease = statedir.load(tunnel.name)
    return lease, (plan.plan_up(tunnel, lease) if lease else plan.plan_down(tunnel))


def _moved(kernel, tunnel, lease):
    """The recorded addresses the device no longer carries while it carries others: the address
    changed underneath (the rules and NAT still name the old one). A device with no address
    at all (ifconfig-noexec, or going away) is not counted."""
    if lease is None or kernel.nl.link_index(tunnel.device) is None:
        return []
    live = [a for a in kernel.nl.device_addresses(tunnel.device, skip={tunnel.alias, tunnel.alias6}) if a]
    if not live:
        return []
    wanted = {plan.Address(a.version, tunnel.device, str(a.ip)) for a in lease.locals}
    gone = sorted(wanted - kernel.nl.addresses(tunnel.device, wanted))
    now = " ".join(str(a.ip) for a in live)
    return [f"device {tunnel.device} carries {now}, not the recorded {a.address}: address changed underneath" for a in gone]


def default_status(kernel, statedir, tunnels):
    """The host-wide default VPN: its tunnel, each rule that should exist (from the recorded
    choice and lease) and whether it does, and stale ones; None when there is no default VPN
    and none of its rules are left."""
    tunnel = default_tunnel(statedir, tunnels)
    current = kernel.observe_default()
    desired = plan.State() if tunnel is None else _default_rules(kernel, (tunnel, statedir.load_quiet(tunnel.name)), current)
    if not desired.objects() and not current.objects():
        return None
    objects, stale, problems = _compared(desired, current)
    return {"tunnel": tunnel.name if tunnel else None, "objects": objects, "stale": stale, "in_sync": not problems, "problems": problems}


def _compared(desired, current):
    """(each desired object and whether it is present, stale objects, problems) of *current* against *desired*."""
    d = plan.diff(desired, current)
    missing = set(d.add.objects())
    objects = [{"object": str(o), "kind": type(o).__name__.lower(), "present": o not in missing} for o in desired.objects()]
    stale = [str(o) for o in d.remove.objects()]
    return objects, stale, [f"missing: {o['object']}" for o in objects if not o["present"]] + [f"stale: {o}" for o in stale]


def status(kernel, statedir, tunnel):
    """Per tunnel: the recorded lease, each object that should exist and whether it does, and stale ones."""
    from vpnsplit import sysctl

    lease, desired = desired_for(statedir, tunnel)
    current, foreign, (intact, _) = kernel.observe(tunnel)
    objects, stale, problems = _compared(desired, current)
    if desired.nft and not intact:
        problems.append("nft table inet vpnsplit is damaged (missing map, chain or rule)")
    problems += [f"foreign route in table {tunnel.table}: {f}" for f in foreign]
    problems += _moved(kernel, tunnel, lease)
    versions = sorted({n.version for n in tunnel.sources})
    devices = [tunnel.device, *sorted({dev for v in versions for dev in source_devices(kernel, tunnel, v)})]
    record = statedir.record(tunnel.name) if lease else {}
    problems += [f"{SWITCHED[v]} on {dev} is off again, though vpnsplit switched it on (for IPv6, writing "
                 f"net.ipv6.conf.all.forwarding = 0 resets it)"
                 for v, field in RECORDED.items() for dev in record.get(field) or [] if sysctl.switch(dev, v) is False]
    six = 6 in versions
    return {
        "tunnel": tunnel.name,
        "device": tunnel.device,
        "device_present": kernel.nl.link_index(tunnel.device) is not None,
        "table": tunnel.table,
        "priority": tunnel.priority,
        "alias": None if tunnel.alias is None else str(tunnel.alias),
        "alias6": None if tunnel.alias6 is None else str(tunnel.alias6),
        "alias_device": tunnel.alias_dev,
        "strict": tunnel.strict,
        "state": "up" if lease else "down",
        "lease": lease.to_json() if lease else None,
        "recorded_at": record.get("when"),
        "objects": objects,
        # reverse-path filtering is the first thing that breaks forwarded sources: 0 off, 1 strict, 2 loose
        "rp_filter": {dev: sysctl.rp_filter(dev) for dev in devices},
        # whether what arrives on each device is forwarded: IPv4 per device; IPv6 all.forwarding or force_forwarding
        "forwarding": {dev: sysctl.forwarding(dev, 4) for dev in devices} if 4 in versions else {},
        "forwarding6": {dev: sysctl.forwarding(dev, 6) for dev in devices} if six else {},
        "forwarding6_all": sysctl.all_forwarding6() if six else None,
        "forwarding6_per_device": sysctl.per_device6() if six else None,
        "stale": stale,
        "in_sync": not problems,
        "problems": problems,
    }
