"""`vpnsplit explain SRC [DST]`: where does a packet from SRC go, according to the kernel?

The route and the table it came from are the kernel's own answer (`ip route get DST from
SRC`, with RTM_F_LOOKUP_TABLE; a source that is not this host's is asked as if forwarded in
through the device its subnet is connected to). The kernel does not say which rule sent it
there, so the rule is the kernel's rule walk replayed (rulewalk.py), shown only when it
leads to the table the kernel reported: otherwise `rule: unknown`, never a guess. NAT comes
from vpnsplit's nft maps; a route of type unreachable in a tunnel's table is strict
fail-closed at work.
"""

import errno
import ipaddress
import os

from pyroute2.netlink.exceptions import NetlinkError

from vpnsplit import dns, nldump, rulewalk, sysctl
from vpnsplit.errors import InputError
from vpnsplit.marks import DNS_MARK, DNS_PRIORITY
from vpnsplit.netlink import AF
from vpnsplit.plan import RTPROT_VPNSPLIT, Snat

# "An internet address" when no DST is given: a documentation address; a lookup sends nothing.
INTERNET = {4: "192.0.2.1", 6: "2001:db8::1"}
RTM_F_LOOKUP_TABLE = 0x1000
# the error a refused query returns, by the kind of route (or rule action) that refused it
REFUSED = {
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EACCES: "prohibit",
}
# EINVAL: a blackhole, or a source this host cannot send from; only the replayed walk tells which


def addresses(src, dst):
    """SRC and DST (default: an internet address of SRC's family) as addresses; InputError
    naming the value that is not one, or the two families when they differ."""
    parsed = []
    for value, what in ((src, "SRC"), (dst, "DST")):
        try:
            parsed.append(None if value is None else ipaddress.ip_address(value))
        except ValueError:
            raise InputError(f"{what} {value!r} is not an IP address") from None
    src, dst = parsed
    dst = dst or ipaddress.ip_address(INTERNET[src.version])
    if src.version != dst.version:
        raise InputError(
            f"SRC {src} is IPv{src.version} and DST {dst} is IPv{dst.version}; a packet has one family"
        )
    return src, dst


def explain(kernel, tunnels, src, dst=None):
    """A dict describing the path of a packet from *src* to *dst* (tunnels: the configured ones)."""
    src, dst = addresses(src, dst)
    nl = kernel.nl
    local = _is_local(nl, src)
    iif = None if local else nl.connected_device(ipaddress.ip_network(src))
    out = {
        "src": str(src),
        "dst": str(dst),
        "origin": "this host"
        if local
        else (f"forwarded in via {iif}" if iif else "not on this host or any connected network"),
        "iif": iif,
        # IPv4 forwarding is checked by the route lookup (a refusal), IPv6's after it: say it either way
        "forwarding": sysctl.forwarding(iif, src.version) if iif else None,
    }
    out.update(_kernel_route(nl, src, dst, iif))
    hit = _walk(nl, src, dst, iif)
    out.update(_confirmed(hit, out))
    by_table = {t.table: t for t in tunnels.values()}
    out["tunnel"] = by_table[out["table"]].name if out["table"] in by_table else None
    out["strict_drop"] = (
        out["tunnel"] is not None and out["verdict"] == "unreachable" and out["rule_status"] == "matched"
    )
    out["nat"] = _nat(kernel, src, out["device"]) if out["verdict"] == "unicast" else None
    out["dns"] = _dns(kernel, tunnels, src, local)
    return out


def _dns(kernel, tunnels, src, local):
    """Where a DNS query (UDP/TCP 53, to any resolver) from *src* goes, by vpnsplit's DNS entries:
    {"action": "redirect"|"refuse"|"none", "to": resolver or None, "tunnel": name or None, "text": ...}; "routed":
    the redirected query is routed as a packet from SRC to the resolver (a source subnet's, not the host's marked one)."""
    _, entries = kernel.nat_view()
    by_device = {t.device: t.name for t in tunnels.values()}
    by_source = {str(n): t.name for t in tunnels.values() for n in t.sources}
    for e in entries:
        if isinstance(e, (dns.DnsSource, dns.DnsBlock)) and src in ipaddress.ip_network(e.source):
            name = by_source.get(e.source)
            if isinstance(e, dns.DnsBlock):
                return {"action": "refuse", "to": None, "tunnel": name,
                        "text": f"refused at once: source subnet {e.source} of tunnel {name}, which is down (strict)"}
            return {"action": "redirect", "to": e.to, "tunnel": name, "routed": True,
                    "text": f"redirected to {e.to} (tunnel {name}'s resolver), whatever resolver it asks"}
        if isinstance(e, dns.DnsDefault) and local:
            name = by_device.get(e.device)
            if e.refuse:
                return {"action": "refuse", "to": None, "tunnel": name,
                        "text": f"refused at once: the default VPN's tunnel {name} is down (strict)"}
            to = next((a for a in e.to if ipaddress.ip_address(a).version == src.version), None)
            where = f"redirected to {to} (its resolver)" if to else "to the resolver it asks (no resolver of this family known)"
            return {"action": "redirect", "to": to, "tunnel": name,
                    "text": f"default VPN: marked {DNS_MARK:#x}, rule {DNS_PRIORITY} into tunnel {name} ({e.device}), "
                            f"{where}, source rewritten to the tunnel address (masquerade)"}
    return {"action": "none", "to": None, "tunnel": None, "text": "not redirected by vpnsplit: it goes where the route to its resolver goes"}


def _kernel_route(nl, src, dst, iif):
    """The kernel's answer: verdict, table (None when it refused), device, gateway, and the errno."""
    spec = {"dst": str(dst), "src": str(src), "family": AF[src.version], "flags": RTM_F_LOOKUP_TABLE}
    if iif:
        spec["iif"] = nl.link_index(iif)
    try:
        [route] = nl.ipr.route("get", **spec)
    except NetlinkError as e:
        verdict = REFUSED.get(e.code) or f"error: {e.args[1] if len(e.args) > 1 else e.code}"
        return {"verdict": verdict, "table": None, "device": None, "gateway": None, "errno": e.code}
    oif = route.get_attr("RTA_OIF")
    return {
        "verdict": rulewalk.ROUTE_TYPES.get(route["type"], str(route["type"])),
        "table": route.get_attr("RTA_TABLE"),
        "device": nl.link_name(oif) if oif else None,
        "gateway": route.get_attr("RTA_GATEWAY"),
        "errno": None,
    }


def _walk(nl, src, dst, iif):
    """The kernel's rule walk replayed for the flow the query described."""
    fam = AF[src.version]
    flow = rulewalk.Flow(
        src, dst, iif or "lo", rulewalk.NO_UID if iif else os.getuid(), master=bool(iif and _in_vrf(nl, iif))
    )

    def group_of(index):
        return nl.ipr.get_links(index)[0].get_attr("IFLA_GROUP")

    return rulewalk.walk(
        nl.ipr.get_rules(family=fam),
        flow,
        lambda table: rulewalk.longest_match(nldump.routes(fam, table), dst),
        group_of,
    )


def _in_vrf(nl, device):
    link = nl.ipr.get_links(nl.link_index(device))[0]
    info = link.get_attr("IFLA_LINKINFO")
    return bool(link.get_attr("IFLA_MASTER")) or bool(info and info.get_attr("IFLA_INFO_KIND") == "vrf")


def _confirmed(hit, out):
    """The rule to show: the walk's, when it leads where the kernel went (to the table the
    kernel reported; for a refusal, to a route or action that refuses the same way, from a
    device that forwards). The table of a refusal is then the walk's, as the kernel gives none."""
    if isinstance(hit, rulewalk.Unknown):
        return {"rule": None, "rule_status": "unknown", "rule_why": hit.why}
    if out["table"] is not None:
        agrees = hit.table == out["table"] and hit.outcome not in rulewalk.ERRORS.values()
        why = f"the rules replayed lead to {_table(hit)}, the kernel used table {out['table']}"
    else:
        said = REFUSED.get(out["errno"]) or ("blackhole" if out["errno"] == errno.EINVAL else None)
        agrees = said == hit.outcome and out["forwarding"] is not False
        why = f"the kernel refused ({out['verdict']}); the rules replayed lead to {_table(hit)}: {hit.outcome}"
    if not agrees:
        return {"rule": None, "rule_status": "unknown", "rule_why": why}
    if hit.rule is None:
        return {"rule": None, "rule_status": "none"}
    rule = hit.rule
    table = out["table"] if out["table"] is not None else hit.table
    return {
        "rule": {
            "priority": rule.get_attr("FRA_PRIORITY") or 0,
            "table": hit.table,
            "vpnsplit": rule.get_attr("FRA_PROTOCOL") == RTPROT_VPNSPLIT,
            "text": rulewalk.text(rule),
        },
        "rule_status": "matched",
        "table": table,
        "verdict": hit.outcome if out["table"] is None else out["verdict"],
    }


def _table(hit):
    return "no rule" if hit.rule is None else (f"table {hit.table}" if hit.table is not None else "a rule's own action")


def _is_local(nl, addr):
    fam = AF[addr.version]
    return any((m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")) == str(addr) for m in nl.ipr.get_addr(family=fam))


def _nat(kernel, src, device):
    """The address vpnsplit's SNAT map rewrites *src* to when leaving via *device*, or None."""
    _, entries = kernel.nat_view()
    for e in entries:
        if isinstance(e, Snat) and e.device == device and src in ipaddress.ip_network(e.source, strict=False):
            return e.to
    return None


def describe(r):
    """A few readable lines for people."""
    lines = [f"{r['src']} -> {r['dst']} ({r['origin']})"]
    rule = r["rule"]
    if rule:
        lines.append(f"  rule:   {rule['text']}" + ("  [vpnsplit]" if rule["vpnsplit"] else ""))
    elif r["rule_status"] == "none":
        lines.append("  rule:   none (no rule's table has a route for it)")
    else:
        lines.append(f"  rule:   unknown ({r['rule_why']})")
    table = r["table"]
    where = "table " + rulewalk.TABLE_NAMES.get(table, str(table)) if table is not None else "no table"
    where += f" (tunnel {r['tunnel']})" if r["tunnel"] else ""
    if r["verdict"] == "unicast":
        hop = f"via {r['gateway']} " if r["gateway"] else ""
        lines.append(f"  route:  {where}: {hop}dev {r['device']}")
        lines.append(
            f"  nat:    source rewritten to {r['nat']} (vpnsplit SNAT)"
            if r["nat"]
            else "  nat:    none by vpnsplit (leaves with its own source)"
        )
    else:
        lines.append(f"  route:  {where}: {r['verdict']}")
    if r["forwarding"] is False:
        lines.append(
            f"  forwarding: off on {r['iif']}: the kernel does not forward what arrives there "
            f"({'net.ipv4.conf.' + r['iif'] + '.forwarding' if ':' not in r['src'] else 'IPv6 forwarding'} is 0)"
        )
    if r["strict_drop"]:
        lines.append(
            f"  strict: tunnel {r['tunnel']} is down; the packet is refused here, it cannot leak through the main table"
        )
    lines.append(f"  dns:    {r['dns']['text']}")
    return "\n".join(lines)
