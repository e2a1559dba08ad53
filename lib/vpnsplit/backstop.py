"""The netfilter backstop: what may leave the host, decided in netfilter rather than by the rules.

The routing rules choose the good path; these chains make a rule sweep (`ip rule flush`), a
socket bound to the uplink (SO_BINDTODEVICE, `ping -I eth0`) or a foreign rule unable to leak.
One filter chain on postrouting at priority 90: source NAT runs at 99/100, so it still sees
the original source, and it sees forwarded `sources` as well as the host's own packets.

    set confine_src4 { type ipv4_addr; flags interval }                 # alias, tunnel address, source subnet ...
    set confine_host4 { type ipv4_addr . ifname }                       # ... leaves only through its tunnel (a host),
    set confine_out4 { type ipv4_addr . ifname; flags interval }        # ... (a subnet)
    set confine_to4 { type ipv4_addr . ipv4_addr; flags interval }      # ... or to its own subnet and `lan`
    set direct4 { type ipv4_addr; flags interval }                      # the default VPN's LAN (main's routes)
    (the same for IPv6)
    chain backstop { type filter hook postrouting priority 90;
        ip saddr . oifname @confine_host4 accept   # the usual packet: an alias or tunnel address, out its tunnel
        ip saddr @confine_src4 jump confine4       # any other from a confined source
        jump killswitch }                          # the rest: empty unless the default VPN is on
    chain confine4 {
        ip saddr . oifname @confine_out4 accept
        ip saddr . ip daddr @confine_to4 accept
        oifname "lo" accept; jump link_scope       # LOCAL: what never leaves the host or its links
        drop }
    chain link_scope { <multicast, link-local, broadcast, ND/MLD> accept }
    chain client_names { type route hook output priority -151;   # the VPN servers' names (KillSwitch.names)
        udp dport 53 @th,160,128 <vpn.example.com on the wire> meta mark set meta mark | 0x20000000 }
    chain killswitch {                   # empty unless the default VPN is on with strict (KillSwitch)
        oifname "vpn0" accept            # its tunnel
        oifname "lo" accept; jump link_scope
        meta mark & 0x20000000 != 0 accept   # CLIENT_MARK: the VPN clients' own packets
        ct mark & 0x10000000 != 0 accept     # REPLY_MARK: replies of connections from outside
        <DHCP, DHCPv6> accept
        meta l4proto { tcp, udp } th dport 53 drop   # DNS only through the tunnel (the redirect)
        ip daddr @direct4 accept
        drop }

Why this shape (BENCHMARKS.md part 8, each rule's cost measured there): the usual packet meets one
rule, a lookup in a hash set of concatenations (~0.15 us); a lookup in a set of concatenated
intervals (pipapo) costs twice that, so the hosts, which are most packets, sit in the hash set and
the interval sets are asked only for a confined source that missed it. An unconfined packet meets
the two source lookups only: loopback and link scope are accepted in the chains that would drop
(confine, kill switch), not on everyone's way (they cost it ~0.2 us).

Entries are NamedTuples like plan's; nat.py stores them (`elements`) and reads them back (`entries`).
The kill switch's and the server names' rules are rendered in backstopnat.py.
"""

import ipaddress
from typing import NamedTuple

CHAIN, KILLSWITCH, CLIENT_NAMES, LINK_SCOPE = "backstop", "killswitch", "client_names", "link_scope"
CONFINE = {4: "confine4", 6: "confine6"}
PROTO = {4: "ip", 6: "ip6"}  # nft's payload protocol of each IP version (nftkinds.NFPROTO)
ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}


def _typed(cls):
    """Equal only to its own kind: as plain tuples KillSwitch("vpn0") would equal plan.ReplyMark("vpn0")
    and Confine(4, a, dev) a Guard(4, a, dev), and a set would keep one of each pair."""
    cls.__eq__ = lambda self, other: type(self) is type(other) and tuple.__eq__(self, other)
    cls.__ne__ = lambda self, other: not self == other
    cls.__hash__ = lambda self: hash((cls.__name__, *self))
    return cls


@_typed
class Confine(NamedTuple):
    """With strict: packets from SOURCE (an alias, the tunnel address or a source subnet) leave
    only through DEVICE, its tunnel (or to the destinations of its Reach entries)."""

    family: int
    source: str
    device: str

    def __str__(self):
        return f"backstop: {self.source} leaves only through {self.device}"


@_typed
class Reach(NamedTuple):
    """A source subnet of DEVICE's tunnel may reach DST on any device: its own subnet (the host
    talking to its containers) and the configured `lan` exceptions."""

    family: int
    source: str
    dst: str
    device: str

    def __str__(self):
        return f"backstop: {self.source} may reach {self.dst} directly"


@_typed
class KillSwitch(NamedTuple):
    """The default VPN's kill switch: nothing leaves through a device other than DEVICE but the
    VPN clients' marked packets, replies, DHCP and the Direct destinations. A DNS query for one
    of NAMES (the VPN servers' host names) is the clients' too: it gets CLIENT_MARK on its way
    out (chain client_names), so a client that resolves its server at boot is not cut off."""

    device: str
    names: tuple = ()

    def __str__(self):
        names = f"; DNS queries for {', '.join(self.names)} leave as the clients'" if self.names else ""
        return f"kill switch: nothing leaves but through {self.device} (clients' mark, replies, DHCP, the LAN){names}"


@_typed
class Direct(NamedTuple):
    """A destination the default VPN leaves direct (what rule 32000 keeps in main)."""

    family: int
    dst: str

    def __str__(self):
        return f"kill switch: {self.dst} stays direct"


def confine(tunnel, locals_=()):
    """The backstop entries of a strict *tunnel*: its aliases, its tunnel addresses *locals_*
    (while up) and its source subnets, each confined to the tunnel."""
    if not tunnel.strict:
        return set()
    dev = tunnel.device
    hosts = [a for a in (tunnel.alias, tunnel.alias6, *locals_) if a is not None]
    out = {Confine(a.version, str(a), dev) for a in hosts}
    for net in tunnel.sources:
        out.add(Confine(net.version, _text(net), dev))
        reached = (net, *(lan for lan in tunnel.lan if lan.version == net.version))
        out.update(Reach(net.version, _text(net), _text(dst), dev) for dst in reached)
    return out


def _text(net):
    """A network as nft lists it back from an interval set: a host as a plain address."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def killswitch(tunnel, routes):
    """The kill switch of default *tunnel* (strict only), leaving the main table's non-default
    *routes* (networks) direct, as rule 32000 does."""
    if not tunnel.strict:
        return set()
    nets = [n for n in routes if n.prefixlen]
    collapsed = {v: ipaddress.collapse_addresses(m for m in nets if m.version == v) for v in (4, 6)}
    direct = {Direct(v, _text(n)) for v, ns in collapsed.items() for n in ns}
    return {KillSwitch(tunnel.device, tuple(sorted(tunnel.server_names)))} | direct


# -- nft -------------------------------------------------------------------------------------

def sets():
    """name -> (key type, flags) of the backstop's sets."""
    out = {}
    for fam in (4, 6):
        out[f"confine_src{fam}"] = (ADDR[fam], ["interval"])
        out[f"confine_host{fam}"] = ([ADDR[fam], "ifname"], None)
        out[f"confine_out{fam}"] = ([ADDR[fam], "ifname"], ["interval"])
        out[f"confine_to{fam}"] = ([ADDR[fam], ADDR[fam]], ["interval"])
        out[f"direct{fam}"] = (ADDR[fam], ["interval"])
    return out


def _payload(protocol, field):
    return {"payload": {"protocol": protocol, "field": field}}


def _is(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _nets(*nets):
    return {"set": [_key(n) for n in nets]}


def _key(net):
    """An interval-set key: a plain address for a host, {"prefix": ...} for a subnet."""
    n = ipaddress.ip_network(net)
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


def _net(key):
    """The inverse of _key, for what nft lists."""
    return f"{key['prefix']['addr']}/{key['prefix']['len']}" if isinstance(key, dict) else key


_OIF = {"meta": {"key": "oifname"}}
# in type order, as nft lists them
_ND = ["mld-listener-query", "mld-listener-report", "mld-listener-done", "nd-router-solicit", "nd-router-advert",
       "nd-neighbor-solicit", "nd-neighbor-advert", "nd-redirect", "mld2-listener-report"]


# what never leaves the host or its links, which every drop of the backstop lets through
LOCAL = [[_is(_OIF, "lo"), {"accept": None}], [{"jump": {"target": LINK_SCOPE}}]]


def chains():
    """The backstop's fixed chains, name -> rules, in the order they must be created (a chain before
    the rules that jump to it). What varies lives in the sets and the kill switch chain."""
    out = {LINK_SCOPE: [  # link scope never leaves the link: neighbour discovery, MLD, link-local, multicast, broadcast
        [_is(_payload("ip", "daddr"), _nets("224.0.0.0/4", "255.255.255.255/32")), {"accept": None}],
        [_is(_payload("ip6", "daddr"), _nets("fe80::/10", "ff00::/8")), {"accept": None}],
        [_is(_payload("icmpv6", "type"), {"set": _ND}), {"accept": None}],
    ]}
    # the usual packet first, so that it meets one rule: a host (alias, tunnel address) out its tunnel;
    # an unconfined one meets two lookups and the kill switch chain (empty without the default VPN)
    main = [[_is({"concat": [_payload(PROTO[fam], "saddr"), _OIF]}, f"@confine_host{fam}"), {"accept": None}] for fam in (4, 6)]
    for fam in (4, 6):
        saddr, daddr = _payload(PROTO[fam], "saddr"), _payload(PROTO[fam], "daddr")
        out[CONFINE[fam]] = [
            [_is({"concat": [saddr, _OIF]}, f"@confine_out{fam}"), {"accept": None}],
            [_is({"concat": [saddr, daddr]}, f"@confine_to{fam}"), {"accept": None}],
            *LOCAL,
            [{"drop": None}],
        ]
        main.append([_is(saddr, f"@confine_src{fam}"), {"jump": {"target": CONFINE[fam]}}])
    out[CHAIN] = main + [[{"jump": {"target": KILLSWITCH}}]]
    return out


def elements(entry):
    """The (set name, element) pairs that stand for one Confine, Reach or Direct."""
    if isinstance(entry, Confine):
        key = _key(entry.source)
        where = "host" if isinstance(key, str) else "out"  # a hash set for a host, intervals for a subnet
        return [(f"confine_src{entry.family}", key), (f"confine_{where}{entry.family}", {"concat": [key, entry.device]})]
    if isinstance(entry, Reach):
        return [(f"confine_to{entry.family}", {"concat": [_key(entry.source), _key(entry.dst)]})]
    return [(f"direct{entry.family}", _key(entry.dst))]


def sealed(family, address):
    """The elements that confine *address* to no device at all (a retired alias, retire.py): a confined
    source with no way out of its own, so the confine chain drops its packets (link scope aside)."""
    return [(f"confine_src{family}", _key(address))]


def entries(contents):
    """Confine, Reach and Direct entries from the sets' *contents* (name -> listed elements).
    A Reach names the device its source is confined to; a half-present Confine counts as absent,
    and so does a host in the subnets' set (elements() never puts one there)."""
    out = set()
    for fam in (4, 6):
        sources = {_net(e) for e in contents.get(f"confine_src{fam}", [])}
        device = {}
        hosts = [e for e in contents.get(f"confine_host{fam}", []) if isinstance(e["concat"][0], str)]
        for elem in hosts + [e for e in contents.get(f"confine_out{fam}", []) if not isinstance(e["concat"][0], str)]:
            source, dev = elem["concat"]
            device[_net(source)] = dev
            if _net(source) in sources:
                out.add(Confine(fam, _net(source), dev))
        for elem in contents.get(f"confine_to{fam}", []):
            source, dst = (_net(k) for k in elem["concat"])
            if source in device:
                out.add(Reach(fam, source, dst, device[source]))
        out.update(Direct(fam, _net(e)) for e in contents.get(f"direct{fam}", []))
    return out
