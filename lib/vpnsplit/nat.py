"""vpnsplit's nftables table: `table inet vpnsplit`, changed only in atomic JSON batches.

    table inet vpnsplit {
        map snat4 { type ipv4_addr . ifname : ipv4_addr; flags interval }  # alias or source subnet . out-device : tunnel address
        map dnat4 { type ipv4_addr . ifname . inet_proto . inet_service : ipv4_addr }  # port forwards to the alias
        map dnatall4 { type ipv4_addr . ifname : ipv4_addr }                # forward = ["all"]
        set guard_addr4 { type ipv4_addr }                     # addresses only reachable via ...
        set guard_path4 { type ipv4_addr . ifname }            # ... their own device
        (the same for IPv6)
        chain postrouting { type nat hook postrouting priority srcnat;
            snat ip to ip saddr . oifname map @snat4 }
        chain dstnat { type nat hook prerouting priority dstnat;
            dnat ip to ip daddr . iifname . meta l4proto . th dport map @dnat4
            dnat ip to ip daddr . iifname map @dnatall4 }
        chain prerouting { type filter hook prerouting priority raw;
            ip daddr @guard_addr4 ip daddr . iifname != @guard_path4 fib saddr type != local drop }
        # only while the default VPN is on (plan.ReplyMark; vpn0 its tunnel, 0x10000000 plan.REPLY_MARK):
        chain replies_in { type filter hook input priority filter;
            meta nfproto ipv6 ct state new iifname != "vpn0" ct mark set ct mark or 0x10000000 }
        chain replies_out { type route hook output priority mangle;
            meta nfproto ipv6 ct mark and 0x10000000 != 0 meta mark set meta mark or 0x10000000 }
    }

A packet costs one lookup per chain however many tunnels exist, and a tunnel's change of
address is elements replaced inside one transaction. SNAT matches the output interface so
the alias is never rewritten onto another path (seed 003 on NAT ordering); the guard is
wg-quick's anti-spoofing rule. The reply chains mark the default VPN's IPv6 replies for
rule 32001; a route chain because only there does a changed packet mark make the kernel look
the route up again. We own this table whole and touch nothing outside it.
"""

import json

from vpnsplit.errors import KernelError
from vpnsplit.plan import REPLY_MARK, Dnat, Guard, ReplyMark, Snat

FAMILY, TABLE = "inet", "vpnsplit"
PROTO = {4: "ip", 6: "ip6"}
ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}
# Numbers, not "srcnat"/"raw": the JSON parser silently makes a hookless chain from a string.
SRCNAT_PRIORITY, DSTNAT_PRIORITY, RAW_PRIORITY, MANGLE_PRIORITY, FILTER_PRIORITY = 100, -100, -300, -150, 0


class NftError(KernelError):
    """libnftables refused a batch (the message is its own error text), or is missing.
    Raised before the first step (while observing), it ends the run with exit 1 and one line."""


def _obj(kind, **fields):
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _payload(fam, field):
    return {"payload": {"protocol": PROTO[fam], "field": field}}


def _snat_rule(fam):
    key = {"concat": [_payload(fam, "saddr"), {"meta": {"key": "oifname"}}]}
    return [{"snat": {"family": PROTO[fam], "addr": {"map": {"key": key, "data": f"@snat{fam}"}}}}]


def _dnat_rules(fam):
    ports = {"concat": [_payload(fam, "daddr"), {"meta": {"key": "iifname"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}
    every = {"concat": [_payload(fam, "daddr"), {"meta": {"key": "iifname"}}]}
    return [
        [{"dnat": {"family": PROTO[fam], "addr": {"map": {"key": key, "data": f"@{name}{fam}"}}}}]
        for key, name in ((ports, "dnat"), (every, "dnatall"))
    ]


def _guard_rule(fam):
    return [
        {"match": {"op": "==", "left": _payload(fam, "daddr"), "right": f"@guard_addr{fam}"}},
        {"match": {"op": "!=", "left": {"concat": [_payload(fam, "daddr"), {"meta": {"key": "iifname"}}]}, "right": f"@guard_path{fam}"}},
        {"match": {"op": "!=", "left": {"fib": {"result": "type", "flags": ["saddr"]}}, "right": "local"}},
        {"drop": None},
    ]


def _rules(chain):
    """Every rule of *chain*, IPv4 first."""
    build = CHAINS[chain][3]
    out = []
    for fam in (4, 6):
        rules = build(fam)
        out += rules if isinstance(rules[0], list) else [rules]
    return out


# name -> (chain type, hook, priority, rule builder)
CHAINS = {
    "postrouting": ("nat", "postrouting", SRCNAT_PRIORITY, _snat_rule),
    "dstnat": ("nat", "prerouting", DSTNAT_PRIORITY, _dnat_rules),
    "prerouting": ("filter", "prerouting", RAW_PRIORITY, _guard_rule),
}


# The default VPN's reply marking (plan.ReplyMark): chains that exist only while it is on.
REPLY_CHAINS = {"replies_in": ("filter", "input", FILTER_PRIORITY), "replies_out": ("route", "output", MANGLE_PRIORITY)}
_IIFNAME = {"meta": {"key": "iifname"}}


def _reply_rules(device):
    """chain name -> the one rule of that reply chain, for the default VPN's tunnel *device*."""
    ipv6 = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}
    ct, meta = {"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}
    return {
        "replies_in": [ipv6, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                       {"match": {"op": "!=", "left": _IIFNAME, "right": device}},
                       {"mangle": {"key": ct, "value": {"|": [ct, REPLY_MARK]}}}],
        "replies_out": [ipv6, {"match": {"op": "!=", "left": {"&": [ct, REPLY_MARK]}, "right": 0}},
                        {"mangle": {"key": meta, "value": {"|": [meta, REPLY_MARK]}}}],
    }


def _reply_cmds(verb, entry):
    """Add (replacing whatever the chains hold) or delete (absent is fine) the reply chains."""
    cmds = []
    for name, expr in _reply_rules(entry.device).items():
        ctype, hook, prio = REPLY_CHAINS[name]
        cmds.append({"add": _obj("chain", name=name, type=ctype, hook=hook, prio=prio, policy="accept")})
        if verb == "add":
            cmds += [{"flush": _obj("chain", name=name)}, {"add": _obj("rule", chain=name, expr=expr)}]
        else:
            cmds.append({"delete": _obj("chain", name=name)})
    return cmds


def _reply_mark(chains, rules):
    """The ReplyMark that the reply chains stand for, or None unless both hold exactly their rule."""
    if not set(REPLY_CHAINS) <= chains or len(rules["replies_in"]) != 1:
        return None
    device = next((e["match"]["right"] for e in rules["replies_in"][0] if e.get("match", {}).get("left") == _IIFNAME), None)
    if not isinstance(device, str) or any(rules[name] != [expr] for name, expr in _reply_rules(device).items()):
        return None
    return ReplyMark(6, device)


def _sets():
    """name -> (key type, map data type or None, flags) for every set and map of the table."""
    out = {}
    for fam in (4, 6):
        # interval: an alias is a one-address range, a source subnet a wider one
        out[f"snat{fam}"] = ([ADDR[fam], "ifname"], ADDR[fam], ["interval"])
        out[f"dnat{fam}"] = ([ADDR[fam], "ifname", "inet_proto", "inet_service"], ADDR[fam], None)
        out[f"dnatall{fam}"] = ([ADDR[fam], "ifname"], ADDR[fam], None)
        out[f"guard_addr{fam}"] = (ADDR[fam], None, None)
        out[f"guard_path{fam}"] = ([ADDR[fam], "ifname"], None, None)
    return out


SETS = _sets()


def skeleton():
    """Commands that (re)create the table's fixed part; safe to send again (chains flushed first)."""
    cmds = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for name, (key, data, flags) in SETS.items():
        extra = {"flags": flags} if flags else {}
        cmds.append({"add": _obj("map", name=name, type=key, map=data, **extra) if data else _obj("set", name=name, type=key, **extra)})
    for name, (ctype, hook, prio, _) in CHAINS.items():
        cmds.append({"add": _obj("chain", name=name, type=ctype, hook=hook, prio=prio, policy="accept")})
        cmds.append({"flush": _obj("chain", name=name)})
        cmds += [{"add": _obj("rule", chain=name, expr=expr)} for expr in _rules(name)]
    return cmds


def _elements(entry):
    """The (set name, element) pairs that stand for one Snat or Guard."""
    if isinstance(entry, Snat):
        return [(f"snat{entry.family}", [{"concat": [_prefix(entry.source), entry.device]}, entry.to])]
    if isinstance(entry, Dnat):
        if entry.proto:
            return [(f"dnat{entry.family}", [{"concat": [entry.address, entry.device, entry.proto, entry.port]}, entry.to])]
        return [(f"dnatall{entry.family}", [{"concat": [entry.address, entry.device]}, entry.to])]
    return [(f"guard_addr{entry.family}", entry.address), (f"guard_path{entry.family}", {"concat": [entry.address, entry.device]})]


def _prefix(source):
    """An interval-map key: a plain address for a host, {"prefix": ...} for a subnet."""
    addr, _, length = source.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}} if length else addr


def _source(key):
    """The inverse of _prefix, for what nft lists."""
    return f"{key['prefix']['addr']}/{key['prefix']['len']}" if isinstance(key, dict) else key


def _element_cmds(verb, entries):
    cmds = []
    for entry in sorted(entries, key=repr):
        if isinstance(entry, ReplyMark):
            cmds += _reply_cmds(verb, entry)
            continue
        for name, elem in _elements(entry):
            if verb == "delete" and isinstance(elem, list):
                elem = elem[0]  # a map element is deleted by its key
            cmds.append({verb: _obj("element", name=name, elem=[elem])})
    return cmds


def _delete_table():
    # `delete` of a missing table fails; adding it first makes the pair idempotent.
    return [{"add": {"table": {"family": FAMILY, "name": TABLE}}}, {"delete": {"table": {"family": FAMILY, "name": TABLE}}}]


class NatTable:
    """The libnftables context, and what our table currently holds."""

    def __init__(self):
        try:
            import nftables
        except ImportError:
            raise NftError(
                "the nftables Python binding is missing: apt install python3-nftables, "
                "and use a venv made with --system-site-packages"
            ) from None
        self.nft = nftables.Nftables()
        self.nft.set_json_output(True)

    def _run(self, cmds):
        rc, out, err = self.nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise NftError(" ".join(err.split()) or f"libnftables returned {rc}")
        return out

    def observe(self):
        """(skeleton_intact, every Snat, Dnat, Guard and ReplyMark in the table). A missing table: (False, set())."""
        try:
            out = self._run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError:
            return False, set()
        items = out["nftables"] if isinstance(out, dict) else json.loads(out)["nftables"]
        every_chain = {name: spec[:3] for name, spec in CHAINS.items()} | REPLY_CHAINS
        contents, sets, chains, rules = {}, set(), set(), {name: [] for name in every_chain}
        for item in items:
            kind, body = next(iter(item.items()))
            if kind in ("set", "map") and body["name"] in SETS:
                key, data, flags = SETS[body["name"]]
                if body.get("type") == key and body.get("map") == data and body.get("flags") == flags:
                    sets.add(body["name"])
                    # only a set of our type holds our entries (another's elements don't parse as ours)
                    contents[body["name"]] = body.get("elem", [])
            elif kind == "chain" and body["name"] in every_chain:
                if (body.get("type"), body.get("hook"), body.get("prio")) == every_chain[body["name"]]:
                    chains.add(body["name"])
            elif kind == "rule" and body.get("chain") in rules:
                rules[body["chain"]].append(body["expr"])
        intact = set(CHAINS) <= chains and sets == set(SETS) and all(rules[n] == _rules(n) for n in CHAINS)
        reply = _reply_mark(chains, rules)
        return intact, _entries(contents) | ({reply} if reply else set())

    def change(self, add, remove, intact, current):
        """Apply one atomic batch adding and removing entries, repairing the skeleton if needed.

        *current* is every entry the table holds now (all tunnels); when none would remain,
        the whole table goes. Returns the batch that undoes this one.
        """
        if not (current - remove) | add:
            self._run(_delete_table())
            return skeleton() + _element_cmds("add", current) if current else _delete_table()
        repair = [] if intact else skeleton()
        # remove before add: a map element keyed by (alias, device) gets a new value that way
        self._run(repair + _element_cmds("delete", remove) + _element_cmds("add", add))
        if not current and not intact:
            return _delete_table()
        return repair + _element_cmds("delete", add) + _element_cmds("add", remove)

    def run(self, cmds):
        self._run(cmds)


def _entries(contents):
    """Rebuild Snat, Dnat and Guard objects from set contents; a half-present guard counts as absent."""
    entries = set()
    for fam in (4, 6):
        for key, to in contents.get(f"snat{fam}", []):
            source, device = key["concat"]
            entries.add(Snat(fam, _source(source), device, to))
        for key, to in contents.get(f"dnat{fam}", []):
            address, device, proto, port = key["concat"]
            entries.add(Dnat(fam, address, device, proto, port, to))
        for key, to in contents.get(f"dnatall{fam}", []):
            entries.add(Dnat(fam, *key["concat"], "", 0, to))
        guarded = set(contents.get(f"guard_addr{fam}", []))
        for elem in contents.get(f"guard_path{fam}", []):
            address, device = elem["concat"]
            if address in guarded:
                entries.add(Guard(fam, address, device))
    return entries
