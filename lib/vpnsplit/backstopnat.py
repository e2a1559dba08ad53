"""The backstop's kinds of vpnsplit's nft table (nftkinds.Kind): the sets and chains of backstop.py,
what they add to the table and how each is read back; the kill switch's rules and the server names'."""

from vpnsplit import backstop
from vpnsplit.marks import BACKSTOP_PRIORITY, CLIENT_MARK, CLIENT_NAMES_PRIORITY, REPLY_MARK
from vpnsplit.nftkinds import OIFNAME, ElementKind, Kind, chain_commands


def _match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol, field):
    return {"payload": {"protocol": protocol, "field": field}}


def _marked(key, mark):
    return _match({"&": [key, mark]}, 0, "!=")


def killswitch_rules(device):
    """The kill switch chain's rules: out *device*, or one of the exceptions, or dropped."""
    ct, meta = {"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}
    def udp(sport, dport):
        return [_match(_payload("udp", "sport"), sport), _match(_payload("udp", "dport"), dport), {"accept": None}]

    return [
        [_match(OIFNAME, device), {"accept": None}],
        *backstop.LOCAL,
        [_marked(meta, CLIENT_MARK), {"accept": None}],
        [_marked(ct, REPLY_MARK), {"accept": None}],
        udp(68, 67),
        udp(546, 547),
        # DNS goes to the tunnel's resolvers (the default VPN's DNS redirect), never in the clear
        [_match({"meta": {"key": "l4proto"}}, {"set": ["tcp", "udp"]}),
         _match({"payload": {"protocol": "th", "field": "dport"}}, 53), {"drop": None}],
        [_match(_payload("ip", "daddr"), "@direct4"), {"accept": None}],
        [_match(_payload("ip6", "daddr"), "@direct6"), {"accept": None}],
        [{"drop": None}],
    ]


# The query's name on the wire starts after the UDP header (8 bytes) and the DNS header (12).
QNAME_OFFSET = 160
_MARK = {"meta": {"key": "mark"}}


def name_rule(name):
    """`udp dport 53 @th,160,128 ... meta mark set meta mark | CLIENT_MARK comment NAME`: a query
    for exactly NAME (its wire form ends with the root label, so no longer name matches). The name
    is compared in 16-byte pieces, the most nft compares at once, written as nft lists them."""
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    expr = [_match(_payload("udp", "dport"), 53)]
    for at in range(0, len(wire), 16):
        piece = wire[at:at + 16]
        value = int.from_bytes(piece, "big")
        expr.append(_match({"payload": {"base": "th", "offset": QNAME_OFFSET + 8 * at, "len": 8 * len(piece)}},
                           f"{value:#x}" if len(piece) > 8 else value))
    return expr + [{"mangle": {"key": _MARK, "value": {"|": [_MARK, CLIENT_MARK]}}}]


def killswitch_chains(entry):
    """chain name -> rules, for the kill switch chain and the server names' route chain."""
    return {backstop.KILLSWITCH: killswitch_rules(entry.device), backstop.CLIENT_NAMES: [name_rule(n) for n in entry.names]}


def killswitch_from(rules, comments):
    """The KillSwitch that the kill switch chain's and the names chain's *rules* stand for, or None.
    *comments*: the names chain's rule comments (each rule names its server)."""
    if not rules[backstop.KILLSWITCH]:
        return None
    first = rules[backstop.KILLSWITCH][0][0].get("match", {})
    device = first.get("right") if first.get("left") == OIFNAME else None
    entry = backstop.KillSwitch(device, tuple(comments)) if isinstance(device, str) else None
    held = {n: rules.get(n, []) for n in (backstop.KILLSWITCH, backstop.CLIENT_NAMES)}
    return entry if entry and held == killswitch_chains(entry) else None


class _BackstopSetKind(ElementKind):
    """A backstop entry type whose objects are elements of the sets named with *prefixes*
    (backstop.elements writes them, backstop.entries reads them)."""

    prefixes = ()

    def __init__(self):
        self.sets = {name: (key, None, flags) for name, (key, flags) in backstop.sets().items() if name.startswith(self.prefixes)}

    def elements(self, e):
        return backstop.elements(e)

    def read(self, listing):
        return {e for e in backstop.entries(listing.sets) if isinstance(e, self.type)}


class ConfineKind(_BackstopSetKind):
    """The backstop (backstop.py): confine_src4/6 and confine_host4/6 (hosts), confine_out4/6
    (subnets) hold a strict tunnel's sources and the device each may leave by; its chains also
    read the Reach and Direct kinds' sets and jump to the kill switch chain (regular, the KillSwitch's)."""

    type, prefixes = backstop.Confine, ("confine_src", "confine_host", "confine_out")
    chains = {backstop.KILLSWITCH: (None, None, None, None)} | {
        name: ("filter", "postrouting", BACKSTOP_PRIORITY, rules) if name == backstop.CHAIN else (None, None, None, rules)
        for name, rules in backstop.chains().items()}


class ReachKind(_BackstopSetKind):
    """confine_to4/6: a source subnet . a destination it may reach on any device."""

    type, prefixes = backstop.Reach, ("confine_to",)


class DirectKind(_BackstopSetKind):
    """direct4/6: what the default VPN's kill switch leaves direct (main's routes)."""

    type, prefixes, owner = backstop.Direct, ("direct",), "default"


class KillSwitchKind(Kind):
    """The default VPN's kill switch: the rules of the (regular) kill switch chain, and the
    server names' route chain, which exists only while it is on."""

    type = backstop.KillSwitch
    owner = "default"
    own_chains = {backstop.CLIENT_NAMES: ("route", "output", CLIENT_NAMES_PRIORITY)}
    _chains = own_chains | {backstop.KILLSWITCH: (None, None, None)}

    def commands(self, verb, entry):
        return chain_commands(verb, self._chains, killswitch_chains(entry), {backstop.CLIENT_NAMES: entry.names})

    def read(self, listing):
        found = killswitch_from(listing.rules, listing.comments.get(backstop.CLIENT_NAMES, []))
        return {found} if found else set()


KINDS = (ConfineKind(), ReachKind(), DirectKind(), KillSwitchKind())
