"""`vpnsplit status` and `check`: what should be in the kernel according to the records, what
is, and the difference, per tunnel and for the default VPN; and its text for people."""

from vpnsplit import bridge, default_vpn, dns, owned, plan, retire, sysctl
from vpnsplit.errors import InputError


def compared(desired, current):
    """(each desired object and whether it is present, stale objects, problems) of *current* against *desired*."""
    d = plan.diff(desired, current)
    missing = set(d.add.objects())
    objects = [{"object": str(o), "kind": type(o).__name__.lower(), "present": o not in missing} for o in desired.objects()]
    stale = [str(o) for o in d.remove.objects()]
    return objects, stale, [f"missing: {o['object']}" for o in objects if not o["present"]] + [f"stale: {o}" for o in stale]


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
    tunnel = default_vpn.chosen(statedir, tunnels)
    current = kernel.observe_default()
    desired = plan.State() if tunnel is None else default_vpn.desired(kernel, (tunnel, statedir.record(tunnel.name).lease), current)
    if not desired.objects() and not current.objects():
        return None
    objects, stale, problems = compared(desired, current)
    # no choice recorded and none of its rules in place: `default = true` not applied yet, no drift
    applied = statedir.default_choice() is not None or bool(current.objects())
    return {"tunnel": tunnel.name if tunnel else None, "applied": applied, "objects": objects, "stale": stale,
            "in_sync": not applied or not problems, "problems": problems if applied else []}


def status(kernel, statedir, tunnel):
    """Per tunnel: the recorded lease, each object that should exist and whether it does, and stale ones.
    A record that cannot be used is an InputError."""
    record = statedir.record(tunnel.name)
    if record.damage:
        raise InputError(record.damage)
    lease = record.lease
    desired = plan.plan_up(tunnel, lease) if lease else plan.plan_down(tunnel)
    # a retired alias kept confined while sockets are bound to it (retire.py) is wanted until they close
    confined = retire.explained(_retired(record.applied))
    desired |= plan.State(nft=frozenset(confined))
    current, foreign, (intact, _) = kernel.observe(tunnel)
    objects, stale, problems = compared(desired, current)
    # no record and nothing of the tunnel's in the kernel: not applied yet, which is no drift
    applied = lease is not None or bool(current.objects()) or not desired.objects() or bool(record.applied and record.applied.objects())
    if not applied:
        problems = []
    elif desired.nft and not intact:
        problems.append("nft table inet vpnsplit is damaged (missing map, chain or rule)")
    # what vpnsplit applied for the tunnel earlier (its record) and its config no longer wants: an old alias, table...
    leftover = owned.leftovers(record.applied or plan.State(), desired)
    if leftover.objects():
        leftover = owned.leftovers(leftover, plan.State(), statedir.applied_elsewhere(tunnel.name))
    orphans = [str(o) for o in kernel.present(leftover).objects() if str(o) not in stale]
    fix = f"vpnsplit {'up' if lease else 'down'} {tunnel.name}"
    problems += [f"orphaned: {o} (vpnsplit applied it for {tunnel.name} earlier; the config no longer wants it; {fix} removes it)"
                 for o in orphans]
    problems += [f"foreign route in table {tunnel.table}: {f}" for f in foreign]
    problems += _moved(kernel, tunnel, lease)
    if lease and kernel.nl.link_index(tunnel.device) is not None:
        from vpnsplit import shadow

        problems += shadow.shadowed(kernel.nl, tunnel, lease)
    versions = sorted({n.version for n in tunnel.sources})
    devices = [tunnel.device, *sorted({dev for v in versions for dev in kernel.source_devices(tunnel, v)})]
    switched = record.forwarding if lease else {}
    problems += [f"{sysctl.SWITCH_NAME[v]} on {dev} is off again, though vpnsplit switched it on (for IPv6, writing "
                 f"net.ipv6.conf.all.forwarding = 0 resets it)"
                 for v, devs in switched.items() for dev in sorted(devs) if sysctl.switch(dev, v) is False]
    ipv6 = 6 in versions
    bridged, trouble = bridge.report(kernel.nl, statedir, tunnel)
    problems += trouble if applied else []
    programs = None
    if tunnel.app_slot is not None:
        from vpnsplit import cgroups

        programs = cgroups.report(tunnel)
        problems += programs["problems"]
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
        "bridge": bridged,
        # the resolvers DNS from the sources (and, for the default VPN, the host) is redirected to
        "dns": [str(a) for a in dns.resolvers(tunnel, lease)],
        "dns_from": "vpn" if lease and lease.dns else ("config" if tunnel.dns else None),
        "state": "up" if lease else ("down" if applied else "not applied"),
        "lease": lease.to_json() if lease else None,
        "recorded_at": record.when if lease else None,
        "objects": objects,
        # reverse-path filtering is the first thing that breaks forwarded sources: 0 off, 1 strict, 2 loose
        "rp_filter": {dev: sysctl.rp_filter(dev) for dev in devices},
        # whether what arrives on each device is forwarded: IPv4 per device; IPv6 all.forwarding or force_forwarding
        "forwarding": {dev: sysctl.forwarding(dev, 4) for dev in devices} if 4 in versions else {},
        "forwarding6": {dev: sysctl.forwarding(dev, 6) for dev in devices} if ipv6 else {},
        "forwarding6_all": sysctl.all_forwarding6() if ipv6 else None,
        "forwarding6_per_device": sysctl.per_device6() if ipv6 else None,
        "stale": stale,
        "orphans": orphans,
        "confined": sorted(confined.values()),
        # per-app tunnels: the mark, and each cgroup with its processes now (cgroups.report)
        "apps": programs,
        "in_sync": not problems,
        "problems": problems,
    }


def gone_status(kernel, statedir, name):
    """A tunnel with a record but no section (removed from the config): what its record says vpnsplit
    applied and the kernel still holds, the forwarding it switched on; all of it drift until removed."""
    record = statedir.record(name)
    held = kernel.present(owned.leftovers(record.applied or plan.State(), plan.State(), statedir.applied_elsewhere(name)))
    confined = retire.explained(_retired(held))
    orphans = [str(o) for o in held.objects() if o not in confined]
    fix = f"vpnsplit down {name} (or vpnsplit up --all)"
    problems = [f"orphaned: {o} (its section is gone; {fix} removes it)" for o in orphans]
    problems += [f"orphaned: {sysctl.SWITCH_NAME[v]} on {dev}, switched on for it (its section is gone; {fix} switches it off)"
                 for v, devs in record.forwarding.items() for dev in sorted(devs)]
    if record.damage or record.applied is None:
        problems.append(record.damage or f"its record predates ownership by record and does not say what vpnsplit applied; "
                        f"{fix} removes the record only")
    waiting = not problems and bool(confined)  # only retired aliases kept confined: no run would change a thing
    return {"tunnel": name, "state": "gone", "device": record.lease.device if record.lease else None,
            "applied": owned.describe(record.applied or plan.State()), "orphans": orphans,
            "confined": sorted(confined.values()),
            "forwarding_switched": {sysctl.SWITCH[v]: sorted(devs) for v, devs in record.forwarding.items() if devs},
            "in_sync": waiting, "problems": problems or ([] if waiting else [f"its record is left ({fix} removes it)"]),
            "fix": fix}


def _retired(state):
    """The retired aliases kept confined (retire.Retired) that *state* (a record's, or None) holds."""
    return {e for e in (state or plan.State()).nft if isinstance(e, retire.Retired)}


def describe_gone(r):
    """A gone tunnel's report for people."""
    lines = [f"{r['tunnel']}: gone from the config; its record says vpnsplit applied {r['applied']}"]
    lines += [f"  ORPHAN   {o}" for o in r["orphans"]]
    lines += [f"  PROBLEM  {p}" for p in r["problems"] if not p.startswith("orphaned: ") or "switched on" in p]
    lines += [f"  NOTE     {c}" for c in r["confined"]]
    return "\n".join(lines + [f"  {'in sync' if r['in_sync'] else 'DRIFT: run ' + r['fix']}"])


def _objects(r, absent="MISSING"):
    return ([f"  {'ok     ' if o['present'] else absent}  {o['object']}" for o in r["objects"]] + [f"  STALE    {s}" for s in r["stale"]]
            + [f"  ORPHAN   {o}" for o in r.get("orphans", ())])


def describe_default(r):
    """The default VPN's report in a few lines for people."""
    head = f"default VPN: tunnel {r['tunnel']}" if r["tunnel"] else "default VPN: off"
    if not r["applied"]:
        return (f"{head} (default = true), not applied yet: nothing of it is in the kernel; "
                f"vpnsplit up --all or vpnsplit default {r['tunnel']} applies it")
    return "\n".join([head, *_objects(r), f"  {'in sync' if r['in_sync'] else 'DRIFT: run vpnsplit default ' + (r['tunnel'] or '--off')}"])


def describe(r):
    """A tunnel's report in a few lines for people."""
    lease = r["lease"]
    where = f"{r['state']} on {r['device']}" + ("" if r["device_present"] else " (device absent)")
    if lease:
        where += " " + " ".join(a for a in (lease["local4"], lease["local6"]) if a) + f" since {r['recorded_at']}"
    aliases = " ".join(a for a in (r["alias"], r["alias6"]) if a)
    head = f"{r['tunnel']}: {where}; table {r['table']}, priority {r['priority']}"
    head += f", alias {aliases} on {r['alias_device']}" if aliases else ""
    head += ", strict" if r["strict"] else ""
    lines = [head]
    if r["state"] == "not applied":
        lines.append(f"  not applied yet: nothing of vpnsplit's for {r['tunnel']} is in the kernel; the VPN's connect, "
                     f"vpnsplit up {r['tunnel']} or vpnsplit up --all applies it")
    if r["bridge"]:
        b = r["bridge"]
        state = ("up" if b["up"] else "DOWN") + (f", {' '.join(b['addresses'])}" if b["addresses"] else "") if b["present"] else "ABSENT"
        ports = f"ports {' '.join(b['ports'])}" if b["ports"] else "no ports"
        lines.append(f"  bridge {b['name']}: {state}, {ports}{', created by vpnsplit' if b['created_by_vpnsplit'] else ''}")
    if r["dns"]:
        lines.append(f"  dns: {' '.join(r['dns'])} ({'pushed by the VPN' if r['dns_from'] == 'vpn' else 'dns key'})")
    if r["apps"]:
        from vpnsplit import cgroups

        lines.append(cgroups.describe(r["apps"]))
    lines += _objects(r, "absent " if r["state"] == "not applied" else "MISSING")
    rpf = {0: "off", 1: "strict", 2: "loose", None: "no device"}
    how6 = "(all.forwarding)" if r["forwarding6_all"] else "(force_forwarding)"
    for dev, v in r["rp_filter"].items():
        line = f"  rp_filter on {dev}: {rpf.get(v, v)}"
        if dev in r["forwarding"]:
            line += f", forwarding {'on' if r['forwarding'][dev] else 'off'}"
        if dev in r["forwarding6"]:
            line += f", IPv6 forwarding {'on ' + how6 if r['forwarding6'][dev] else 'off'}"
        lines.append(line)
    if r["forwarding6_per_device"] is False and not r["forwarding6_all"]:
        lines.append("  IPv6 forwarding (net.ipv6.conf.all.forwarding): off: IPv6 sources are not forwarded; set it to 1 "
                     "(this kernel has no per-device force_forwarding, Linux 6.17+)")
    lines += [f"  PROBLEM  {p}" for p in r["problems"] if not p.startswith(("missing:", "stale:", "orphaned:"))]
    lines += [f"  NOTE     {c}" for c in r["confined"]]
    # both work whatever the device: up on an absent device applies the down state
    fix = f"vpnsplit {'up' if r['state'] == 'up' else 'down'} {r['tunnel']}"
    lines.append(f"  {'in sync' if r['in_sync'] else 'DRIFT: run ' + fix}")
    return "\n".join(lines)
