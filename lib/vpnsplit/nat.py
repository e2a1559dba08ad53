"""vpnsplit's nftables table: `table inet vpnsplit`, changed only in atomic JSON batches.

The table holds one SNAT map per family, keyed by (source address . output interface):

    map snat4 { type ipv4_addr . ifname : ipv4_addr }
    chain postrouting { type nat hook postrouting priority srcnat;
        snat ip to ip saddr . oifname map @snat4
        snat ip6 to ip6 saddr . oifname map @snat6 }

so a packet costs one map lookup however many tunnels exist, and a tunnel's change of
address is one element replaced inside one transaction. Matching the output interface
keeps the alias from being rewritten onto any other path (see seed 003 on NAT ordering).
We own this table whole; nothing outside it is ever read or written.
"""

import json

from vpnsplit.plan import Snat

FAMILY, TABLE = "inet", "vpnsplit"
MAPS = {4: ("snat4", "ipv4_addr", "ip"), 6: ("snat6", "ipv6_addr", "ip6")}
# A number, not "srcnat": the JSON parser silently makes a hookless chain from the string.
SRCNAT_PRIORITY = 100


class NftError(Exception):
    """libnftables refused a batch; the message is its own error text."""


def _obj(kind, **fields):
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _snat_rule(fam):
    name, _, proto = MAPS[fam]
    key = {"concat": [{"payload": {"protocol": proto, "field": "saddr"}}, {"meta": {"key": "oifname"}}]}
    return [{"snat": {"family": proto, "addr": {"map": {"key": key, "data": "@" + name}}}}]


def skeleton():
    """Commands that (re)create the table's fixed part; safe to send again (rules flushed first)."""
    cmds = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for name, keytype, _ in MAPS.values():
        cmds.append({"add": _obj("map", name=name, type=[keytype, "ifname"], map=keytype)})
    cmds.append({"add": _obj("chain", name="postrouting", type="nat", hook="postrouting", prio=SRCNAT_PRIORITY, policy="accept")})
    cmds.append({"flush": _obj("chain", name="postrouting")})
    for fam in MAPS:
        cmds.append({"add": _obj("rule", chain="postrouting", expr=_snat_rule(fam))})
    return cmds


def _element(verb, snat):
    name = MAPS[snat.family][0]
    return {verb: _obj("element", name=name, elem=[[{"concat": [snat.alias, snat.device]}, snat.to]])}


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
        """(skeleton_intact, every Snat element in the table). A missing table: (False, set())."""
        try:
            out = self._run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError:
            return False, set()
        items = out["nftables"] if isinstance(out, dict) else json.loads(out)["nftables"]
        elements, maps, rules, chain_ok = set(), set(), [], False
        by_name = {name: fam for fam, (name, _, _) in MAPS.items()}
        for item in items:
            if "map" in item and item["map"]["name"] in by_name:
                m = item["map"]
                fam = by_name[m["name"]]
                if m.get("type") == [MAPS[fam][1], "ifname"] and m.get("map") == MAPS[fam][1]:
                    maps.add(fam)
                for key, to in m.get("elem", []):
                    alias, device = key["concat"]
                    elements.add(Snat(fam, alias, device, to))
            elif "chain" in item and item["chain"]["name"] == "postrouting":
                c = item["chain"]
                chain_ok = (c.get("type"), c.get("hook"), c.get("prio")) == ("nat", "postrouting", SRCNAT_PRIORITY)
            elif "rule" in item and item["rule"].get("chain") == "postrouting":
                rules.append(item["rule"]["expr"])
        intact = chain_ok and maps == set(MAPS) and rules == [_snat_rule(f) for f in MAPS]
        return intact, elements

    def change(self, add, remove, intact, current):
        """Apply one atomic batch: adds and removes Snat elements, repairing the skeleton if needed.

        *current* is every element the table holds now (all tunnels); when none would remain,
        the whole table goes. Returns the batch that undoes this one.
        """
        remaining = (current - remove) | add
        if not remaining:
            self._run(_delete_table())
            return skeleton() + [_element("add", s) for s in sorted(current)] if current else _delete_table()
        cmds = [] if intact else skeleton()
        # Elements of a map are keyed by (alias, device): drop the old value before the new one.
        cmds += [_element("delete", s) for s in sorted(remove)]
        cmds += [_element("add", s) for s in sorted(add)]
        self._run(cmds)
        if not current and not intact:
            return _delete_table()
        undo = [] if intact else skeleton()
        undo += [_element("delete", s) for s in sorted(add)]
        undo += [_element("add", s) for s in sorted(remove)]
        return undo

    def run(self, cmds):
        self._run(cmds)
