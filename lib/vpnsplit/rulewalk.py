"""Which policy rule decided a route lookup: the kernel's rule walk, replayed.

The kernel answers a route query with the table it used (RTM_F_LOOKUP_TABLE) but never with
the rule that sent it there. This replays fib_rules_lookup() for the same flow the query
described (source, destination, input device, uid, no mark, no ports): rules in the kernel's
order, every selector the kernel has (not, from/to, iif/oif, fwmark/mask, uidrange, ipproto,
sport/dport, tos, tun_id, l3mdev), the actions (lookup, goto, nop, unreachable, prohibit,
blackhole) and the suppressors (suppress_prefixlength, suppress_ifgroup), which need a
lookup in the rule's table. A rule with a selector this code does not know makes the
answer Unknown rather than a guess; the caller still shows the rule only when its table is
the one the kernel reported.
"""

import ipaddress
from typing import NamedTuple

from vpnsplit.plan import LOCAL_TABLE, MAIN_TABLE

FIB_RULE_INVERT, FIB_RULE_IIF_DETACHED, FIB_RULE_OIF_DETACHED = 0x2, 0x8, 0x10
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP = 1, 2, 3
# an action and a route type share these numbers (FR_ACT_BLACKHOLE == RTN_BLACKHOLE...)
ERRORS = {6: "blackhole", 7: "unreachable", 8: "prohibit"}
RTN_THROW = 9
NO_SUPPRESS = 0xFFFFFFFF
NO_UID = 0xFFFFFFFF  # INVALID_UID: what a query with an input device carries
TABLE_NAMES = {MAIN_TABLE: "main", 253: "default", LOCAL_TABLE: "local"}
# attributes that select nothing (or that this module reads as such)
_KNOWN = {
    "FRA_TABLE",
    "FRA_PRIORITY",
    "FRA_PROTOCOL",
    "FRA_SUPPRESS_PREFIXLEN",
    "FRA_SUPPRESS_IFGROUP",
    "FRA_GOTO",
    "FRA_SRC",
    "FRA_DST",
    "FRA_IIFNAME",
    "FRA_OIFNAME",
    "FRA_FWMARK",
    "FRA_FWMASK",
    "FRA_UID_RANGE",
    "FRA_IP_PROTO",
    "FRA_SPORT_RANGE",
    "FRA_DPORT_RANGE",
    "FRA_L3MDEV",
    "FRA_TUN_ID",
    "FRA_FLOW",
    "FRA_PAD",
}


class Flow(NamedTuple):
    """What a route query describes: a packet from *src* to *dst*, arriving on *iif* ("lo" for
    one this host sends), with *uid* (the querying process's for local packets, none otherwise)."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    iif: str = "lo"
    uid: int = NO_UID
    master: bool = False  # iif is a VRF or enslaved to one (l3mdev rules then match: not replayed)


class Hit(NamedTuple):
    """The walk's answer: *rule* (a pyroute2 rule message) decided, with *table* (None for an
    action that decides alone) and *outcome* (the route's type name: unicast, local,
    unreachable...). *rule* None: no rule decided (the kernel then says unreachable)."""

    rule: object
    table: int | None
    outcome: str


class Unknown(NamedTuple):
    """The walk could not be replayed exactly; *why* says which selector stopped it."""

    why: str


def walk(rules, flow, lookup, group_of):
    """Replay the kernel's walk of *rules* (pyroute2 messages, in dump order) for *flow*.

    *lookup*(table) gives (route type, prefix length, oif) of the route *flow.dst* finds in
    that table, or None; *group_of*(ifindex) the device group (for suppress_ifgroup).
    Returns a Hit or an Unknown."""
    rules = list(rules)
    i = 0
    while i < len(rules):
        rule = rules[i]
        i += 1
        unknown = {name for name, _ in rule["attrs"]} - _KNOWN
        if unknown:
            return Unknown(
                f"rule {_priority(rule)} has a selector this version cannot replay ({', '.join(sorted(unknown))})"
            )
        if rule.get_attr("FRA_L3MDEV") and flow.master:
            return Unknown(f"rule {_priority(rule)} is an l3mdev (VRF) rule and {flow.iif} is part of a VRF")
        if not matches(rule, flow):
            continue
        action = rule["action"]
        if action == FR_ACT_GOTO:
            target = rule.get_attr("FRA_GOTO")
            later = [n for n in range(len(rules)) if _priority(rules[n]) == target]
            if later:
                i = later[0]
            continue
        if action == FR_ACT_NOP:
            continue
        if action in ERRORS:
            return Hit(rule, None, ERRORS[action])
        if action != FR_ACT_TO_TBL:
            return Unknown(f"rule {_priority(rule)} has action {action}, which this version cannot replay")
        table = rule.get_attr("FRA_TABLE") or rule["table"]
        found = lookup(table)
        if found is None or found[0] == RTN_THROW:
            continue
        rtype, prefixlen, oif = found
        if rtype in ERRORS:
            return Hit(rule, table, ERRORS[rtype])  # an error route ends the walk, suppressors aside
        suppress = rule.get_attr("FRA_SUPPRESS_PREFIXLEN")
        if suppress not in (None, NO_SUPPRESS) and prefixlen <= suppress:
            continue
        ifgroup = rule.get_attr("FRA_SUPPRESS_IFGROUP")
        if ifgroup not in (None, NO_SUPPRESS) and oif and group_of(oif) == ifgroup:
            continue
        return Hit(rule, table, ROUTE_TYPES.get(rtype, str(rtype)))
    return Hit(None, None, "unreachable")


ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", **ERRORS}


def matches(rule, flow):
    """fib_rule_match(): do the rule's selectors take *flow* (before `not`)?"""
    flags = rule["flags"]
    ok = _selectors(rule, flow) and not flags & (FIB_RULE_IIF_DETACHED | FIB_RULE_OIF_DETACHED)
    return ok != bool(flags & FIB_RULE_INVERT)


def _selectors(rule, flow):
    src, dst = rule.get_attr("FRA_SRC"), rule.get_attr("FRA_DST")
    if src is not None and flow.src not in ipaddress.ip_network(f"{src}/{rule['src_len']}", strict=False):
        return False
    if dst is not None and flow.dst not in ipaddress.ip_network(f"{dst}/{rule['dst_len']}", strict=False):
        return False
    if rule.get_attr("FRA_IIFNAME") not in (None, flow.iif):
        return False
    if rule.get_attr("FRA_OIFNAME") is not None:
        return False  # a query names no output device
    mark, mask = rule.get_attr("FRA_FWMARK"), rule.get_attr("FRA_FWMASK")
    if (mark or mask) and (mark or 0) & (NO_SUPPRESS if mask is None else mask):
        return False  # the flow carries mark 0
    uids = rule.get_attr("FRA_UID_RANGE")
    if uids is not None and not uids["start"] <= flow.uid <= uids["end"]:
        return False
    if rule.get_attr("FRA_IP_PROTO") or rule["tos"] or rule.get_attr("FRA_TUN_ID"):
        return False  # the flow has protocol 0, tos 0, no tunnel id
    for key in ("FRA_SPORT_RANGE", "FRA_DPORT_RANGE"):
        ports = rule.get_attr(key)
        if ports is not None and not ports["start"] <= 0 <= ports["end"]:
            return False
    if rule.get_attr("FRA_L3MDEV"):
        return False  # neither device of the flow is a VRF (walk() checked)
    return True


def _priority(rule):
    return rule.get_attr("FRA_PRIORITY") or 0


def text(rule):
    """The rule as `ip rule` prints it, with every selector it has."""
    parts = [f"{_priority(rule)}:"]
    if rule["flags"] & FIB_RULE_INVERT:
        parts.append("not")
    src, dst = rule.get_attr("FRA_SRC"), rule.get_attr("FRA_DST")
    parts.append(f"from {src}/{rule['src_len']}" if src else "from all")
    if dst:
        parts.append(f"to {dst}/{rule['dst_len']}")
    if rule["tos"]:
        parts.append(f"tos {rule['tos']:#x}")
    mark, mask = rule.get_attr("FRA_FWMARK"), rule.get_attr("FRA_FWMASK")
    if mark or mask:
        parts.append(f"fwmark {mark or 0:#x}" + (f"/{mask:#x}" if mask not in (None, NO_SUPPRESS) else ""))
    for key, word in (("FRA_IIFNAME", "iif"), ("FRA_OIFNAME", "oif")):
        if rule.get_attr(key):
            parts.append(f"{word} {rule.get_attr(key)}")
    uids = rule.get_attr("FRA_UID_RANGE")
    if uids is not None:
        parts.append(f"uidrange {uids['start']}-{uids['end']}")
    if rule.get_attr("FRA_IP_PROTO"):
        parts.append(f"ipproto {rule.get_attr('FRA_IP_PROTO')}")
    for key, word in (("FRA_SPORT_RANGE", "sport"), ("FRA_DPORT_RANGE", "dport")):
        ports = rule.get_attr(key)
        if ports is not None:
            parts.append(
                f"{word} {ports['start']}-{ports['end']}"
                if ports["start"] != ports["end"]
                else f"{word} {ports['start']}"
            )
    if rule.get_attr("FRA_L3MDEV"):
        parts.append("lookup [l3mdev-table]")
    action = rule["action"]
    if action == FR_ACT_TO_TBL and not rule.get_attr("FRA_L3MDEV"):
        table = rule.get_attr("FRA_TABLE") or rule["table"]
        parts.append(f"lookup {TABLE_NAMES.get(table, table)}")
    elif action == FR_ACT_GOTO:
        parts.append(f"goto {rule.get_attr('FRA_GOTO')}")
    elif action == FR_ACT_NOP:
        parts.append("nop")
    elif action in ERRORS:
        parts.append(ERRORS[action])
    suppress = rule.get_attr("FRA_SUPPRESS_PREFIXLEN")
    if suppress not in (None, NO_SUPPRESS):
        parts.append(f"suppress_prefixlength {suppress}")
    ifgroup = rule.get_attr("FRA_SUPPRESS_IFGROUP")
    if ifgroup not in (None, NO_SUPPRESS):
        parts.append(f"suppress_ifgroup {ifgroup}")
    return " ".join(parts)


def longest_match(routes, dst):
    """(type, prefix length, oif) of the route in *routes* (nldump.routes tuples of one table)
    that *dst* takes: the longest prefix, then the lowest metric; None if none covers it."""
    best = None
    for rdst, length, _proto, rtype, oif, _gateway, metric in routes:
        net = ipaddress.ip_network(f"{rdst or ('::' if dst.version == 6 else '0.0.0.0')}/{length}", strict=False)
        if dst in net:
            key = (-length, metric or 0)
            if best is None or key < best[0]:
                best = (key, (rtype, length, oif))
    return best and best[1]
