"""`vpnsplit explain --pid PID [DST]` and `--unit UNIT [DST]`: where a program's packets go.

The program's cgroup (/proc/PID/cgroup, or the unit's) and the mark programs attached on its way
up to the root say which mark its new sockets get (with several, the outermost one's runs last and
wins); the kernel's own route lookup with that mark (`ip route get DST mark M`) says the table,
device and the source address an unbound socket would get. Its DNS (UDP/TCP 53, to DST as its
resolver) is told apart: vpnsplit's dns_app redirects it to the tunnel's resolver (dns.DnsApp),
asked again of the kernel with the mark and port 53 (rule P+1), or refuses it while strict and down.
"""

import ipaddress
import os

from pyroute2.netlink.exceptions import NetlinkError

from vpnsplit import apps, bpf, cgroups, dns, explain
from vpnsplit.errors import InputError
from vpnsplit.netlink import AF


def cgroup_of(pid):
    try:
        with open(f"/proc/{int(pid)}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = line[3:].strip()
                    if path.startswith("/.."):
                        raise InputError(f"--pid: process {pid} is outside this cgroup namespace ({path})")
                    return path
    except (OSError, ValueError):
        pass
    raise InputError(f"--pid: no process {pid!r} (or it is in no cgroup2 cgroup)")


def unit_cgroup(top, unit):
    path = cgroups.find_units(top, [unit]).get(unit)
    if path is None:
        raise InputError(f"--unit: no cgroup of {unit!r} exists now (is it running?)")
    return "/" + os.path.relpath(path, top)


def mark_of(top, cgroup):
    """(mark or None, the cgroup whose program sets it); None where attached programs cannot be read."""
    found, path = (None, None), cgroup.strip("/")
    while True:
        names = bpf.attached(os.path.join(top, path))
        slots = [int(n[len(bpf.NAME_PREFIX):]) for n in names if n.startswith(bpf.NAME_PREFIX)]
        if slots:
            found = (apps.mark(slots[0]), "/" + path)
        if not path:
            return found
        path = os.path.dirname(path)


def explain_program(kernel, tunnels, top, cgroup, dst=None):
    dst = ipaddress.ip_address(dst) if dst else ipaddress.ip_address(explain.INTERNET[4])
    try:
        mark, where = mark_of(top, cgroup)
    except OSError as e:
        raise InputError(f"cannot read the cgroup's mark programs ({e.strerror}): run it as root") from None
    by_slot = {t.app_slot: t for t in tunnels.values() if t.app_slot is not None}
    tunnel = by_slot.get(apps.slot_of(mark)) if mark else None
    out = {"cgroup": cgroup, "mark": mark, "marked_by": where, "tunnel": tunnel.name if tunnel else None, "dst": str(dst)}
    out.update(_route(kernel, dst, mark))
    out["dns"] = _dns(kernel, mark, dst)
    return out


def _route(kernel, dst, mark, **selectors):
    """The kernel's answer for a packet of a socket with *mark* to *dst*: verdict, table, device, source."""
    spec = {"dst": str(dst), "family": AF[dst.version], "flags": explain.RTM_F_LOOKUP_TABLE, **({"mark": mark} if mark else {})}
    try:
        [route] = kernel.nl.ipr.route("get", **spec, **selectors)
        oif = route.get_attr("RTA_OIF")
        return {"verdict": "unicast", "table": route.get_attr("RTA_TABLE"), "device": kernel.nl.link_name(oif) if oif else None,
                "source": route.get_attr("RTA_PREFSRC")}
    except NetlinkError as e:
        return {"verdict": explain.REFUSED.get(e.code, f"error {e.code}"), "table": None, "device": None, "source": None}


def _dns(kernel, mark, dst):
    """Where the program's DNS query to *dst* (UDP 53) goes: {"action": "redirect"|"refuse"|"none", "to", ...};
    a redirected one with the kernel's route to the resolver (verdict, table, device, source)."""
    for e in kernel.nat_view()[1] if mark else ():
        if isinstance(e, dns.DnsAppBlock) and e.mark == mark:
            return {"action": "refuse", "to": None, "text": "refused at once (strict: the tunnel is down), whatever resolver it asks"}
        if isinstance(e, dns.DnsApp) and e.mark == mark and e.family == dst.version:
            route = _route(kernel, ipaddress.ip_address(e.to), mark, ip_proto=17, dport=dns.DNS_PORT)
            hop = (f"table {route['table']}, dev {route['device']}, source {route['source']}" if route["verdict"] == "unicast"
                   else route["verdict"])
            return {"action": "redirect", "to": e.to, **route,
                    "text": f"redirected to {e.to} (the tunnel's resolver), whatever resolver it asks: {hop}"}
    return {"action": "none", "to": None, "text": "not redirected by vpnsplit: it goes where the route to its resolver goes"}


def describe(r, who):
    head = f"{who}: cgroup {r['cgroup']}"
    if r["mark"] is None:
        return f"{head}: in no per-app tunnel (no mark program on its way to the root): its packets go as the host's"
    lines = [f"{head}: its sockets get mark {r['mark']:#x} (program on {r['marked_by']}), tunnel {r['tunnel'] or 'unknown'}"]
    if r["verdict"] == "unicast":
        lines.append(f"  to {r['dst']}: table {r['table']}, dev {r['device']}, source {r['source']} (an unbound socket's)")
    else:
        lines.append(f"  to {r['dst']}: {r['verdict']}" + (" (strict: the tunnel is down; nothing leaves)" if r["tunnel"] else ""))
    lines.append(f"  dns to {r['dst']} (port 53): {r['dns']['text']}")
    return "\n".join(lines)


def main(args, cfg, kernel):
    """The explain command for --pid or --unit: DST is explain's first positional argument."""
    top = cgroups.root()
    cgroup = cgroup_of(args.pid) if args.pid else unit_cgroup(top, args.unit)
    try:
        dst = args.src and ipaddress.ip_address(args.src)
    except ValueError:
        raise InputError(f"DST {args.src!r} is not an IP address") from None
    report = explain_program(kernel, cfg.tunnels, top, cgroup, dst)
    return report, describe(report, f"pid {args.pid}" if args.pid else f"unit {args.unit}")
