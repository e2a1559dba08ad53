"""vpnsplit's nftables table: `table inet vpnsplit`, changed only in atomic JSON batches.

    table inet vpnsplit {
        map snat4 { type ipv4_addr . ifname : ipv4_addr; flags interval }  # alias or source subnet . out-device : tunnel address
        map dnat4 { type ipv4_addr . ifname . inet_proto . inet_service : ipv4_addr }  # port forwards to the alias
        map dnatall4 { type ipv4_addr . ifname : ipv4_addr }                # forward = ["all"]
        set guard_addr4 { type ipv4_addr }                     # addresses only reachable via ...
        set guard_path4 { type ipv4_addr . ifname }            # ... their own device
        (the same for IPv6)
        chain postrouting { type nat hook postrouting priority 99;  # before Docker's and iptables-nft's at 100
            snat ip to ip saddr . oifname map @snat4 }
        chain dstnat { type nat hook prerouting priority -101;
            dnat ip to ip daddr . iifname . meta l4proto . th dport map @dnat4
            dnat ip to ip daddr . iifname map @dnatall4 }
        chain prerouting { type filter hook prerouting priority raw;
            ip daddr @guard_addr4 ip daddr . iifname != @guard_path4 fib saddr type != local drop }
        # only while the default VPN is on (plan.ReplyMark; vpn0 its tunnel, 0x10000000 marks.REPLY_MARK):
        chain replies_pre { type filter hook prerouting priority mangle;
            ct state new iifname != "vpn0" fib daddr type local ct mark set ct mark or 0x10000000
            ct mark and 0x10000000 != 0 meta mark set meta mark or 0x10000000 }
        chain replies_out { type route hook output priority mangle;
            ct mark and 0x10000000 != 0 meta mark set meta mark or 0x10000000 }
        (the backstop's sets and chains: backstop.py)
    }

A packet costs one lookup per chain however many tunnels exist, and a tunnel's change of
address is elements replaced inside one transaction. Which kinds of entry the table holds,
and how each is written and read, is nftkinds'. We own this table whole and touch nothing
outside it.
"""

import json

from vpnsplit.errors import KernelError
from vpnsplit.nftkinds import CHAINS, EVERY_CHAIN, FAMILY, KINDS, SETS, TABLE, Listing, obj


class NftError(KernelError):
    """libnftables refused a batch (the message is its own error text), or is missing.
    Raised before the first step (while observing), it ends the run with exit 1 and one line."""


def skeleton():
    """Commands that (re)create the table's fixed part; safe to send again (chains flushed first)."""
    cmds = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for name, (key, data, flags) in SETS.items():
        extra = {"flags": flags} if flags else {}
        cmds.append({"add": obj("map", name=name, type=key, map=data, **extra) if data else obj("set", name=name, type=key, **extra)})
    for name, (ctype, hook, prio, rules) in CHAINS.items():
        hooked = dict(type=ctype, hook=hook, prio=prio, policy="accept") if hook else {}
        cmds.append({"add": obj("chain", name=name, **hooked)})
        if rules is None:  # a regular chain whose rules are an entry's: never flushed here
            continue
        cmds.append({"flush": obj("chain", name=name)})
        cmds += [{"add": obj("rule", chain=name, expr=expr)} for expr in rules]
    return cmds


def _entry_cmds(verb, entries):
    return [cmd for entry in sorted(entries, key=repr) for cmd in KINDS[type(entry)].commands(verb, entry)]


def _delete_table():
    # `delete` of a missing table fails; adding it first makes the pair idempotent.
    return [{"add": {"table": {"family": FAMILY, "name": TABLE}}}, {"delete": {"table": {"family": FAMILY, "name": TABLE}}}]


def _listing(items):
    """(skeleton intact, Listing) of the items `list table` answered."""
    sets, chains, rules, comments = {}, set(), {name: [] for name in EVERY_CHAIN}, {name: [] for name in EVERY_CHAIN}
    for item in items:
        kind, body = next(iter(item.items()))
        if kind in ("set", "map") and body["name"] in SETS:
            key, data, flags = SETS[body["name"]]
            if body.get("type") == key and body.get("map") == data and body.get("flags") == flags:
                # only a set of our type holds our entries (another's elements don't parse as ours)
                sets[body["name"]] = body.get("elem", [])
        elif kind == "chain" and body["name"] in EVERY_CHAIN:
            if (body.get("type"), body.get("hook"), body.get("prio")) == EVERY_CHAIN[body["name"]]:
                chains.add(body["name"])
        elif kind == "rule" and body.get("chain") in rules:
            rules[body["chain"]].append(body["expr"])
            comments[body["chain"]].append(body.get("comment"))
    fixed = {n: spec[3] for n, spec in CHAINS.items() if spec[3] is not None}
    intact = set(CHAINS) <= chains and set(sets) == set(SETS) and all(_same(rules[n], want) for n, want in fixed.items())
    return intact, Listing(sets, chains, rules, comments)


def _same(listed, wanted):
    """Whether a chain's *listed* rules are the *wanted* ones. nftables 1.1 (Debian 13) lists a masked
    value in a concatenation looked up in an interval set with the mask's bytes swapped (`meta mark &
    0x0000008f . ip daddr @app_to4` for 0x8f000000; the rule it loaded is right: the mask, then hton),
    so either rendering of such a rule is that rule."""
    return len(listed) == len(wanted) and all(got in (rule, _swapped(rule)) for got, rule in zip(listed, wanted))


def _swapped(node):
    """*node* with every 32-bit mask inside a concatenation byte-swapped, as nftables 1.1 lists it."""
    if isinstance(node, list):
        return [_swapped(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "concat" in node:
        return {"concat": [{"&": [m["&"][0], int.from_bytes(m["&"][1].to_bytes(4, "big"), "little")]}
                           if isinstance(m, dict) and isinstance(m.get("&", [None, None])[1], int) else m
                           for m in node["concat"]]}
    return {k: _swapped(v) for k, v in node.items()}


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

    def run(self, cmds):
        """Send *cmds* as one atomic batch; NftError with libnftables' message if refused."""
        rc, out, err = self.nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise NftError(" ".join(err.split()) or f"libnftables returned {rc}")
        return out

    def observe(self):
        """(skeleton intact, every entry of every kind in the table). A missing table: (False, set())."""
        try:
            out = self.run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError:
            return False, set()
        intact, listing = _listing(out["nftables"] if isinstance(out, dict) else json.loads(out)["nftables"])
        return intact, {entry for kind in KINDS.values() for entry in kind.read(listing)}

    def change(self, add, remove, intact, current):
        """Apply one atomic batch adding and removing entries, repairing the skeleton if needed.

        *current* is every entry the table holds now (all tunnels); when none would remain,
        the whole table goes. Returns the batch that undoes this one.
        """
        if not (current - remove) | add:
            self.run(_delete_table())
            return skeleton() + _entry_cmds("add", current) if current else _delete_table()
        repair = [] if intact else skeleton()
        # remove before add: a map element keyed by (alias, device) gets a new value that way
        self.run(repair + _entry_cmds("delete", remove) + _entry_cmds("add", add))
        if not current and not intact:
            return _delete_table()
        return repair + _entry_cmds("delete", add) + _entry_cmds("add", remove)
