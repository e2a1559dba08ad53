"""The per-app tunnels' kinds of vpnsplit's nft table (nftkinds.Kind): apps.py's sets and chain.

    set app_mark { type mark }                                   # strict tunnels' app marks ...
    set app_out { type mark . ifname }                           # ... leave only through their tunnel
    set app_to4 { type mark . ipv4_addr; flags interval }        # ... or to their `lan` (app_to6 likewise)
    chain apps { type filter hook output priority 91;            # after every reroute (route chains, nat output)
        oifname "lo" accept
        meta mark & 0x8f000000 . oifname @app_out accept
        meta mark & 0x8f000000 . ip daddr @app_to4 accept
        meta mark & 0x8f000000 . ip6 daddr @app_to6 accept
        meta mark & 0x8f000000 @app_mark meta l4proto tcp reject with tcp reset
        meta mark & 0x8f000000 @app_mark drop }

It catches what the rules cannot: a socket bound to the uplink device (its route lookup failing,
the kernel sends a bound socket's packets on-link out of that device), a rule sweep. It drops (a
send fails with EPERM) and resets TCP, whose connect would otherwise retry a dropped SYN for
minutes. An output chain, not postrouting like the backstop's: only the host's own sockets carry
the mark, and reject needs output. nftables 1.0.6's JSON takes a masked mark in a concatenation.
"""

from vpnsplit import apps
from vpnsplit.nftkinds import ADDR, NFPROTO, ElementKind, interval_key, interval_source

PRIORITY = 91
CHAIN = "apps"


def sets():
    """name -> (key type, flags)."""
    return {"app_mark": ("mark", None), "app_out": (["mark", "ifname"], None),
            **{f"app_to{f}": (["mark", ADDR[f]], ["interval"]) for f in (4, 6)}}


def _masked():
    return {"&": [{"meta": {"key": "mark"}}, apps.APP_MASK]}


def _in(left, name):
    return {"match": {"op": "==", "left": left, "right": f"@{name}"}}


def chain_rules():
    out = [[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}}, {"accept": None}]]
    out += [[_in({"concat": [_masked(), {"meta": {"key": "oifname"}}]}, "app_out"), {"accept": None}]]
    out += [[_in({"concat": [_masked(), {"payload": {"protocol": NFPROTO[f], "field": "daddr"}}]}, f"app_to{f}"), {"accept": None}]
            for f in (4, 6)]
    tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    return out + [[_in(_masked(), "app_mark"), tcp, {"reject": {"type": "tcp reset"}}], [_in(_masked(), "app_mark"), {"drop": None}]]


def elements(entry):
    if isinstance(entry, apps.AppConfine):
        return [("app_mark", entry.mark), ("app_out", {"concat": [entry.mark, entry.device]})]
    return [(f"app_to{entry.family}", {"concat": [entry.mark, interval_key(entry.dst)]})]


def confines(contents):
    """AppConfine entries of the sets' *contents* (name -> listed elements); half-present counts as absent."""
    marks = set(contents.get("app_mark", []))
    return {apps.AppConfine(m, dev) for m, dev in (e["concat"] for e in contents.get("app_out", [])) if m in marks}


def reaches(contents):
    """AppReach entries: each names the device its mark is confined to (none: not ours, absent)."""
    device = {c.mark: c.device for c in confines(contents)}
    out = set()
    for fam in (4, 6):
        for elem in contents.get(f"app_to{fam}", []):
            value, key = elem["concat"]
            if value in device:
                out.add(apps.AppReach(fam, value, interval_source(key), device[value]))
    return out


class AppConfineKind(ElementKind):
    """app_mark and app_out: a strict tunnel's app mark and the device its packets may leave by."""

    type = apps.AppConfine
    sets = {name: (key, None, flags) for name, (key, flags) in sets().items() if not name.startswith("app_to")}
    chains = {CHAIN: ("filter", "output", PRIORITY, chain_rules())}

    def elements(self, e):
        return elements(e)

    def read(self, listing):
        return confines(listing.sets)


class AppReachKind(AppConfineKind):
    """app_to4/6: an app mark . a `lan` destination it may reach on any device."""

    type = apps.AppReach
    sets = {name: (key, None, flags) for name, (key, flags) in sets().items() if name.startswith("app_to")}
    chains = {}

    def read(self, listing):
        return reaches(listing.sets)


KINDS = (AppConfineKind(), AppReachKind())
