"""The kinds of entry in vpnsplit's nft table, each declared in one place.

A kind ties a planned object (plan.Snat, Dnat, Guard, ReplyMark) to the table: the sets or
maps that hold it and the fixed chains whose rules read them (both part of the table's
skeleton), how one object is written as commands, and how it is read back from a
listing. nat.NatTable knows only kinds, so adding one is a class here (and its plan type).
"""

from typing import NamedTuple

# backstop.py is a leaf that plan imports, so nft's names of the IP versions live there, once
from vpnsplit.backstop import ADDR
from vpnsplit.backstop import PROTO as NFPROTO
from vpnsplit.marks import DSTNAT_PRIORITY, MANGLE_PRIORITY, RAW_PRIORITY, REPLY_MARK, SRCNAT_PRIORITY
from vpnsplit.plan import Dnat, Guard, ReplyMark, Snat

FAMILY, TABLE = "inet", "vpnsplit"
IIFNAME, OIFNAME = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}


def obj(kind, **fields):
    """An nft JSON object of vpnsplit's table."""
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _payload(fam, field):
    return {"payload": {"protocol": NFPROTO[fam], "field": field}}


def _concat(*parts):
    return {"concat": list(parts)}


class Listing(NamedTuple):
    """What `nft list table inet vpnsplit` shows, sorted for the kinds to read."""

    sets: dict  # set or map name -> its elements, for each of ours of our type
    chains: set  # names of our chains with our type, hook and priority
    rules: dict  # chain name -> the expressions of its rules, in order
    comments: dict = {}  # chain name -> the comment of each of its rules, in order


class Kind:
    """How one planned type lives in the table. Subclasses declare the data."""

    type = None  # the plan class
    # "tunnel": the tunnel whose device it names observes it; "source": the tunnel whose source subnet it
    # names does; "default": the default VPN does
    owner = "tunnel"
    sets = {}  # name -> (key type, map data type or None, flags)
    chains = {}  # fixed chains: name -> (chain type, hook, priority, [rule expressions]); hook None: a
    # regular chain; rules None: a regular chain created but never flushed by the skeleton (its rules are an entry's)
    own_chains = {}  # chains that exist only while an object of this kind does: name -> (type, hook, priority)

    def commands(self, verb, entry):
        """The commands that add (verb "add") or delete ("delete") *entry*."""
        raise NotImplementedError

    def read(self, listing):
        """Every object of this kind that *listing* holds."""
        raise NotImplementedError


class ElementKind(Kind):
    """A kind whose objects are elements of its sets and maps."""

    def elements(self, entry):
        """The (set name, element) pairs that stand for *entry*; a map element is [key, value]."""
        raise NotImplementedError

    def commands(self, verb, entry):
        # a map element is deleted by its key
        return [{verb: obj("element", name=name, elem=[elem[0] if verb == "delete" and isinstance(elem, list) else elem])}
                for name, elem in self.elements(entry)]


def interval_key(source):
    """An interval-map key: a plain address for a host, {"prefix": ...} for a subnet."""
    addr, _, length = source.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}} if length else addr


def interval_source(key):
    """The inverse of interval_key, for what nft lists."""
    return f"{key['prefix']['addr']}/{key['prefix']['len']}" if isinstance(key, dict) else key


class SnatKind(ElementKind):
    """snat4/6: alias or source subnet . out-device : tunnel address; an interval map, since
    an alias is a one-address range and a source subnet a wider one. SNAT matches the output
    interface so the alias is never rewritten onto another path (seed 003 on NAT ordering)."""

    type = Snat
    sets = {f"snat{f}": ([ADDR[f], "ifname"], ADDR[f], ["interval"]) for f in (4, 6)}
    chains = {"postrouting": ("nat", "postrouting", SRCNAT_PRIORITY, [
        [{"snat": {"family": NFPROTO[f], "addr": {"map": {"key": _concat(_payload(f, "saddr"), OIFNAME), "data": f"@snat{f}"}}}}]
        for f in (4, 6)])}

    def elements(self, e):
        return [(f"snat{e.family}", [_concat(interval_key(e.source), e.device), e.to])]

    def read(self, listing):
        return {Snat(f, interval_source(key["concat"][0]), key["concat"][1], to) for f in (4, 6) for key, to in listing.sets.get(f"snat{f}", [])}


def _dnat_keys(f):
    ports = _concat(_payload(f, "daddr"), IIFNAME, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}})
    return (("dnat", ports), ("dnatall", _concat(_payload(f, "daddr"), IIFNAME)))


class DnatKind(ElementKind):
    """dnat4/6: tunnel address . in-device . protocol . port : alias; dnatall4/6 the same for
    every port (forward = ["all"])."""

    type = Dnat
    sets = {name: spec for f in (4, 6) for name, spec in (
        (f"dnat{f}", ([ADDR[f], "ifname", "inet_proto", "inet_service"], ADDR[f], None)),
        (f"dnatall{f}", ([ADDR[f], "ifname"], ADDR[f], None)))}
    chains = {"dstnat": ("nat", "prerouting", DSTNAT_PRIORITY, [
        [{"dnat": {"family": NFPROTO[f], "addr": {"map": {"key": key, "data": f"@{name}{f}"}}}}]
        for f in (4, 6) for name, key in _dnat_keys(f)])}

    def elements(self, e):
        if e.proto:
            return [(f"dnat{e.family}", [_concat(e.address, e.device, e.proto, e.port), e.to])]
        return [(f"dnatall{e.family}", [_concat(e.address, e.device), e.to])]

    def read(self, listing):
        out = set()
        for f in (4, 6):
            out.update(Dnat(f, *key["concat"], to) for key, to in listing.sets.get(f"dnat{f}", []))
            out.update(Dnat(f, *key["concat"], "", 0, to) for key, to in listing.sets.get(f"dnatall{f}", []))
        return out


class GuardKind(ElementKind):
    """guard_addr4/6 and guard_path4/6: an address is dropped unless it arrives on its own
    device (or from this host): wg-quick's anti-spoofing rule."""

    type = Guard
    sets = {name: spec for f in (4, 6) for name, spec in (
        (f"guard_addr{f}", (ADDR[f], None, None)), (f"guard_path{f}", ([ADDR[f], "ifname"], None, None)))}
    chains = {"prerouting": ("filter", "prerouting", RAW_PRIORITY, [[
        {"match": {"op": "==", "left": _payload(f, "daddr"), "right": f"@guard_addr{f}"}},
        {"match": {"op": "!=", "left": _concat(_payload(f, "daddr"), IIFNAME), "right": f"@guard_path{f}"}},
        {"match": {"op": "!=", "left": {"fib": {"result": "type", "flags": ["saddr"]}}, "right": "local"}},
        {"drop": None},
    ] for f in (4, 6)])}

    def elements(self, e):
        return [(f"guard_addr{e.family}", e.address), (f"guard_path{e.family}", _concat(e.address, e.device))]

    def read(self, listing):
        out = set()
        for f in (4, 6):
            guarded = set(listing.sets.get(f"guard_addr{f}", []))
            # a half-present guard counts as absent
            out.update(Guard(f, *elem["concat"]) for elem in listing.sets.get(f"guard_path{f}", []) if elem["concat"][0] in guarded)
        return out


def chain_commands(verb, chains, rules, comments=None):
    """Add (replacing whatever the chains hold) or delete (absent is fine; a regular chain is
    flushed) the chains one entry stands for; *comments*: chain name -> a comment per rule."""
    cmds = []
    for name, exprs in rules.items():
        ctype, hook, prio = chains[name]
        cmds.append({"add": obj("chain", name=name, **(dict(type=ctype, hook=hook, prio=prio, policy="accept") if hook else {}))})
        if verb == "add":
            notes = (comments or {}).get(name) or [None] * len(exprs)
            cmds.append({"flush": obj("chain", name=name)})
            cmds += [{"add": obj("rule", chain=name, expr=e, **({"comment": c} if c else {}))} for e, c in zip(exprs, notes)]
        else:
            cmds.append({"delete" if hook else "flush": obj("chain", name=name)})
    return cmds


class ReplyMarkKind(Kind):
    """The default VPN's reply marking: two chains that exist only while it is on. Prerouting,
    so that forwarded replies (a published container port) are marked before their route is
    chosen; a route chain for the host's own, because only there does a changed packet mark
    make the kernel look the route up again (rule 32001)."""

    type = ReplyMark
    owner = "default"
    own_chains = {"replies_pre": ("filter", "prerouting", MANGLE_PRIORITY), "replies_out": ("route", "output", MANGLE_PRIORITY)}

    @staticmethod
    def rules(device):
        """chain name -> the rules of that chain, for the default VPN's tunnel *device*."""
        ct, meta = {"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}
        restore = [{"match": {"op": "!=", "left": {"&": [ct, REPLY_MARK]}, "right": 0}},
                   {"mangle": {"key": meta, "value": {"|": [meta, REPLY_MARK]}}}]
        # new connections for this host arriving not through the tunnel (before DNAT: a published container port counts)
        arrived = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                   {"match": {"op": "!=", "left": IIFNAME, "right": device}},
                   {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                   {"mangle": {"key": ct, "value": {"|": [ct, REPLY_MARK]}}}]
        return {"replies_pre": [arrived, restore], "replies_out": [restore]}

    def commands(self, verb, entry):
        return chain_commands(verb, self.own_chains, self.rules(entry.device))

    def read(self, listing):
        """The marking the chains stand for, unless they do not both hold exactly their rules."""
        if not set(self.own_chains) <= listing.chains or not listing.rules["replies_pre"]:
            return set()
        device = next((e["match"]["right"] for e in listing.rules["replies_pre"][0] if e.get("match", {}).get("left") == IIFNAME), None)
        if not isinstance(device, str) or any(listing.rules[name] != exprs for name, exprs in self.rules(device).items()):
            return set()
        return {ReplyMark(device)}


# the DNS and backstop kinds build on the classes above, so they are imported only once those exist
from vpnsplit import appsnat, backstopnat, dnsnat, retirednat  # noqa: E402

KINDS = {kind.type: kind for kind in (SnatKind(), DnatKind(), GuardKind(), ReplyMarkKind(), *dnsnat.KINDS,
                                      *backstopnat.KINDS, *appsnat.KINDS, *retirednat.KINDS)}
SETS = {name: spec for kind in KINDS.values() for name, spec in kind.sets.items()}
CHAINS = {name: spec for kind in KINDS.values() for name, spec in kind.chains.items()}
# every chain of ours: name -> (type, hook, priority)
EVERY_CHAIN = {name: spec[:3] for name, spec in CHAINS.items()} | {
    name: spec for kind in KINDS.values() for name, spec in kind.own_chains.items()}


def owner(entry):
    """"tunnel" or "default": who observes *entry*."""
    return KINDS[type(entry)].owner
