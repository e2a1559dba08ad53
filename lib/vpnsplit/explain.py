"""`vpnsplit explain SRC [DST]`: where does a packet from SRC go, according to the kernel?

The route itself comes from the kernel (`ip route get DST from SRC`, or for a source that is
not this host's, as if forwarded in through the device that holds it). The kernel does not
say which rule matched, so that part walks the rule list the way the kernel does: by
priority, first rule whose selectors match. NAT comes from vpnsplit's nft maps, and a route
of type unreachable in a vpnsplit table is strict fail-closed at work.
"""

import errno
import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from vpnsplit import dns
from vpnsplit.netlink import AF, RTN, RTN_LOCAL
from vpnsplit.plan import LOCAL_TABLE, MAIN_TABLE, RTPROT_VPNSPLIT, Snat

# "An internet address" when no DST is given: a documentation address; a lookup sends nothing.
INTERNET = {4: "192.0.2.1", 6: "2001:db8::1"}
TABLE_NAMES = {MAIN_TABLE: "main", 253: "default", LOCAL_TABLE: "local"}


def explain(kernel, tunnels, src, dst=None):
    """A dict describing the path of a packet from *src* to *dst* (tunnels: the configured ones)."""
    src = ipaddress.ip_address(src)
    dst = ipaddress.ip_address(dst or INTERNET[src.version])
    nl = kernel.nl
    local = _is_local(nl, src)
    iif = None if local else nl.connected_device(ipaddress.ip_network(src))
    rule = _matching_rule(nl, src, dst, iif or "lo")
    by_table = {t.table: t for t in tunnels.values()}
    out = {
        "src": str(src),
        "dst": str(dst),
        "origin": "this host" if local else (f"forwarded in via {iif}" if iif else "not on this host or any connected network"),
        "rule": rule,
        "table": rule["table"] if rule else None,
        "tunnel": by_table[rule["table"]].name if rule and rule["table"] in by_table else None,
    }
    spec = {"dst": str(dst), "src": str(src), "family": AF[src.version]}
    if iif:
        spec["iif"] = nl.link_index(iif)
    try:
        [route] = nl.ipr.route("get", **spec)
        oif = route.get_attr("RTA_OIF")
        out.update(
            verdict=RTN.get(route["type"], str(route["type"])),
            device=nl.link_name(oif) if oif else None,
            gateway=route.get_attr("RTA_GATEWAY"),
            table=route.get_attr("RTA_TABLE"),
        )
    except NetlinkError as e:
        out.update(verdict="unreachable" if e.code in (errno.EHOSTUNREACH, errno.ENETUNREACH) else f"error: {e.args[1] if len(e.args) > 1 else e.code}",
                   device=None, gateway=None)
    out["strict_drop"] = out["verdict"] == "unreachable" and out["tunnel"] is not None
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
                    "text": f"default VPN: marked {dns.DNS_MARK:#x}, rule {dns.DNS_PRIORITY} into tunnel {name} ({e.device}), "
                            f"{where}, source rewritten to the tunnel address (masquerade)"}
    return {"action": "none", "to": None, "tunnel": None, "text": "not redirected by vpnsplit: it goes where the route to its resolver goes"}


def _is_local(nl, addr):
    fam = AF[addr.version]
    return any(
        (m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")) == str(addr) for m in nl.ipr.get_addr(family=fam)
    )


def _matching_rule(nl, src, dst, iif):
    """The first rule, by priority, whose selectors match the packet (None if none does)."""
    rules = []
    for m in nl.ipr.get_rules(family=AF[src.version]):
        rules.append(m)
    rules.sort(key=lambda m: m.get_attr("FRA_PRIORITY") or 0)
    for m in rules:
        if m["action"] != 1 or m.get_attr("FRA_FWMARK") or m.get_attr("FRA_SUPPRESS_PREFIXLEN") not in (None, 0xFFFFFFFF):
            continue  # only plain "lookup" rules decide here; marks and suppressors need packet state
        if not _covers(m.get_attr("FRA_SRC"), m["src_len"], src) or not _covers(m.get_attr("FRA_DST"), m["dst_len"], dst):
            continue
        if m.get_attr("FRA_IIFNAME") not in (None, iif) or m.get_attr("FRA_OIFNAME"):
            continue
        table = m.get_attr("FRA_TABLE")
        if table == LOCAL_TABLE and not _is_local_route(nl, dst):
            continue  # `lookup local` only answers for local destinations
        return {"priority": m.get_attr("FRA_PRIORITY") or 0, "table": table,
                "table_name": TABLE_NAMES.get(table, str(table)), "vpnsplit": m.get_attr("FRA_PROTOCOL") == RTPROT_VPNSPLIT,
                "text": _rule_text(m, table)}
    return None


def _is_local_route(nl, addr):
    try:
        return nl.ipr.route("get", dst=str(addr), family=AF[addr.version])[0]["type"] == RTN_LOCAL
    except NetlinkError:
        return False


def _covers(prefix, length, addr):
    return prefix is None or addr in ipaddress.ip_network(f"{prefix}/{length}", strict=False)


def _rule_text(m, table):
    src = f"{m.get_attr('FRA_SRC')}/{m['src_len']}" if m.get_attr("FRA_SRC") else "all"
    dst = f" to {m.get_attr('FRA_DST')}/{m['dst_len']}" if m.get_attr("FRA_DST") else ""
    return f"{m.get_attr('FRA_PRIORITY') or 0}: from {src}{dst} lookup {TABLE_NAMES.get(table, table)}"


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
    lines.append(f"  rule:   {rule['text']}" + ("  [vpnsplit]" if rule["vpnsplit"] else "") if rule else "  rule:   none matched")
    where = f"table {r['table']}" + (f" (tunnel {r['tunnel']})" if r["tunnel"] else "")
    if r["verdict"] == "unicast":
        hop = f"via {r['gateway']} " if r["gateway"] else ""
        lines.append(f"  route:  {where}: {hop}dev {r['device']}")
        lines.append(f"  nat:    source rewritten to {r['nat']} (vpnsplit SNAT)" if r["nat"] else "  nat:    none by vpnsplit (leaves with its own source)")
    else:
        lines.append(f"  route:  {where}: {r['verdict']}")
    if r["strict_drop"]:
        lines.append(f"  strict: tunnel {r['tunnel']} is down; the packet is refused here, it cannot leak through the main table")
    lines.append(f"  dns:    {r['dns']['text']}")
    return "\n".join(lines)
