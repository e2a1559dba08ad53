"""The backstop's kinds of vpnsplit's nft table (nftkinds.Kind): the sets and chains of backstop.py,
what they add to the table and how each is read back."""

from vpnsplit import backstop
from vpnsplit.marks import BACKSTOP_PRIORITY, CLIENT_NAMES_PRIORITY
from vpnsplit.nftkinds import ElementKind, Kind, chain_commands


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
        return chain_commands(verb, self._chains, backstop.killswitch_chains(entry), {backstop.CLIENT_NAMES: entry.names})

    def read(self, listing):
        found = backstop.killswitch_from(listing.rules, listing.comments.get(backstop.CLIENT_NAMES, []))
        return {found} if found else set()


KINDS = (ConfineKind(), ReachKind(), DirectKind(), KillSwitchKind())
