"""Shadowing: a foreign rule that captures a tunnel's traffic before vpnsplit's own rules.

wg-quick without `Table = off` puts `not fwmark 0xca6c lookup 51820` at 10002, ahead of any
tunnel whose rules come later: that tunnel's alias and containers then silently leave through
the other tunnel. The rules alone cannot tell (the foreign rule is not ours), so the kernel is
asked: `ip route get` from each alias, tunnel address and source subnet (as if forwarded in
through its device). A table other than the tunnel's is reported, naming the first rule before
vpnsplit's that leads to that table. Reads only, without pyroute2 unless something is found
(status and check of a sound host stay pyroute2-free); a route the kernel refuses is no capture.
"""

from vpnsplit import nldump
from vpnsplit.netlink import AF

# a documentation address stands for "the internet": a lookup sends nothing
PROBE = {4: "192.0.2.1", 6: "2001:db8::1"}
FIB_RULE_INVERT = 2


def probes(tunnel, lease):
    """(source address, its source subnet or None) for every source of *tunnel*'s traffic while up."""
    families = {a.version for a in lease.locals}
    out = [(a, None) for a in (tunnel.alias, tunnel.alias6) if a is not None and a.version in families]
    out += [(a.ip, None) for a in lease.locals]
    # a host of the subnet that is not the host's own address on it (that one is likely the first)
    out += [(net[-2] if net.num_addresses > 2 else net[0], net) for net in tunnel.sources if net.version in families]
    return out


def shadowed(nl, tunnel, lease):
    """One line per source whose route the kernel takes from a table other than *tunnel*'s."""
    lines = []
    for src, net in probes(tunnel, lease):
        device = net and nl.connected_device(net)
        if net is not None and not device:
            continue
        iif = nl.link_index(device) if device else None
        table = nldump.route_table(AF[src.version], PROBE[src.version], str(src), iif)
        if table is not None and table != tunnel.table:
            where = f"{net} (a host in it, in via {device})" if net else str(src)
            lines.append(f"traffic from {where} is routed by table {table}, not the tunnel's {tunnel.table}: "
                         f"{_culprit(nl, src.version, table, tunnel)} captures it before vpnsplit's rules")
    return lines


def _culprit(nl, version, table, tunnel):
    """The first rule (by priority) before the tunnel's last that looks up *table*, as `ip rule` shows it."""
    rules = sorted(nl.ipr.get_rules(family=AF[version]), key=lambda m: m.get_attr("FRA_PRIORITY") or 0)
    for m in rules:
        priority = m.get_attr("FRA_PRIORITY") or 0
        if priority >= tunnel.priority + 4:
            break
        if m.get_attr("FRA_TABLE") == table:
            return f"rule '{_text(m, priority, table)}'"
    return f"a rule into table {table}"


def _text(m, priority, table):
    src = f"{m.get_attr('FRA_SRC')}/{m['src_len']}" if m.get_attr("FRA_SRC") else "all"
    mark = m.get_attr("FRA_FWMARK")
    parts = [f"{priority}:", "not" if m["flags"] & FIB_RULE_INVERT else "", f"from {src}",
             f"fwmark {mark:#x}" if mark else "", f"lookup {table}"]
    return " ".join(p for p in parts if p)
