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

While a tunnel is up (apps.AppSnat; vpn0 its device, 10.8.0.2 its address):

    map app_snat4 { type mark . ifname : ipv4_addr }             # app mark . its tunnel : the tunnel address
    chain app_snat { type nat hook postrouting priority 99;     # vpnsplit's srcnat priority (first packets)
        meta mark & 0x8f000000 != 0 ct mark 0 ct mark set meta mark & 0x8f000000
        meta nfproto ipv4 snat ip to meta mark & 0x8f000000 . oifname map @app_snat4 }
    chain app_replies { type filter hook prerouting priority mangle;
        ct mark & 0x8f000000 != 0 meta mark 0 meta mark set ct mark & 0x8f000000
        ip daddr 127.0.0.0/8 iifname != "lo" drop }                # before de-NAT: only from the wire
    (the same for IPv6)

A socket bound to another address of the host (the uplink's, the LAN's) still carries the mark, so
the rules send it into the tunnel: SNAT gives it the tunnel address (an unbound socket's packets
have it already: SNAT to the same address changes nothing). Conntrack keeps the mark, and the
replies get it back before routing, so the strict reverse-path check (with the tunnel's
src_valid_mark, sysctl.py) finds their way back through the tunnel; de-NAT-ed to the uplink's
address, they would be dropped. Both only where no mark is set yet, so they only OR bits in.

A program's DNS to a stub on this host (systemd-resolved's 127.0.0.53) is redirected to the tunnel's
resolver (dnsnat.py's dns_app) with its loopback source, which the kernel lets leave only by a device
with route_localnet (switched on for the per-app tunnel, sysctl.py) and which app_snat then rewrites;
its reply, de-NAT-ed to 127.0.0.1, is let in by the same switch. Packets from the wire for 127.0.0.0/8
are dropped before any de-NAT (a tunnel peer must never reach this host's loopback services).

The apps chain catches what the rules cannot: a socket bound to the uplink device (its route lookup failing,
the kernel sends a bound socket's packets on-link out of that device), a rule sweep. It drops (a
send fails with EPERM) and resets TCP, whose connect would otherwise retry a dropped SYN for
minutes. An output chain, not postrouting like the backstop's: only the host's own sockets carry
the mark, and reject needs output. nftables 1.0.6's JSON takes a masked mark in a concatenation.
"""

from vpnsplit import apps
from vpnsplit.marks import MANGLE_PRIORITY, SRCNAT_PRIORITY
from vpnsplit.nftkinds import ADDR, NFPROTO, OIFNAME, ElementKind, interval_key, interval_source

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


_META, _CT = {"meta": {"key": "mark"}}, {"ct": {"key": "mark"}}


def _copy(to, frm):
    """Where a connection's *frm* mark has an app mark and its *to* mark none yet: *to* gets the app bits."""
    # the whole mask: nft lists a test of the one bit 0x80000000 as a prefix match (`mark != 0/1`)
    return [{"match": {"op": "!=", "left": {"&": [frm, apps.APP_MASK]}, "right": 0}},
            {"match": {"op": "==", "left": to, "right": 0}}, {"mangle": {"key": to, "value": {"&": [frm, apps.APP_MASK]}}}]


class AppSnatKind(ElementKind):
    """app_snat4/6: an app mark . its tunnel : the tunnel address; chain app_snat SNATs there, app_replies restores the mark."""

    type = apps.AppSnat
    sets = {f"app_snat{f}": (["mark", "ifname"], ADDR[f], None) for f in (4, 6)}
    chains = {"app_snat": ("nat", "postrouting", SRCNAT_PRIORITY, [_copy(_CT, _META)] + [
        [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4" if f == 4 else "ipv6"}},
         {"snat": {"family": NFPROTO[f], "addr": {"map": {"key": {"concat": [_masked(), OIFNAME]}, "data": f"@app_snat{f}"}}}}]
        for f in (4, 6)]), "app_replies": ("filter", "prerouting", MANGLE_PRIORITY, [_copy(_META, _CT), [
            # every received packet walks this chain: each rule's cheapest test that fails for most packets first
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"drop": None}]])}

    def elements(self, e):
        return [(f"app_snat{e.family}", [{"concat": [e.mark, e.device]}, e.to])]

    def read(self, listing):
        return {apps.AppSnat(f, key["concat"][0], key["concat"][1], to) for f in (4, 6) for key, to in listing.sets.get(f"app_snat{f}", [])}


KINDS = (AppConfineKind(), AppReachKind(), AppSnatKind())
