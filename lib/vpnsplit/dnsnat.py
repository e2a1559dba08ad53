"""The DNS kinds of vpnsplit's nft table (nftkinds.Kind): what they add to the table, how each is read back.

    map dns_src4 { type ipv4_addr : ipv4_addr; flags interval }    # source subnet : its tunnel's resolver
    chain dns_dstnat { type nat hook prerouting priority -101;     # before Docker's and iptables-nft's dstnat
        meta l4proto { tcp, udp } th dport 53 dnat ip to ip saddr map @dns_src4 }
    set dns_down4 { type ipv4_addr; flags interval }               # source subnets of strict tunnels that are down
    chain dns_refuse { type filter hook prerouting priority mangle;
        tcp dport 53 ip saddr @dns_down4 reject with tcp reset
        udp dport 53 ip saddr @dns_down4 reject with icmp port-unreachable }
    (the same for IPv6)

The programs of a tunnel's app_slot (dns.DnsApp; their sockets' mark, apps.py):

    map dns_app4 { type mark : ipv4_addr }                          # app mark : its tunnel's resolver
    chain dns_app { type nat hook output priority -102;             # a changed destination is routed again,
        meta l4proto { tcp, udp } th dport 53 meta nfproto ipv4       # by the same mark: into the tunnel
            dnat ip to meta mark & 0x8f000000 map @dns_app4 }
    set dns_app_down { type mark }                                  # strict tunnels' app marks while down
    chain dns_app_refuse { type filter hook output priority mangle;
        meta mark & 0x8f000000 @dns_app_down tcp dport 53 reject with tcp reset
        meta mark & 0x8f000000 @dns_app_down udp dport 53 reject }
    (the same for IPv6)

While a tunnel is the default VPN (dns.DnsDefault; tun0 its device, 10.8.0.1 its resolver):

    chain dns_mark { type route hook output priority mangle;       # every packet, so every one is rerouted
        meta l4proto { tcp, udp } th dport 53 oifname != "lo" meta mark & 0x20000000 == 0
            meta mark set meta mark | 0x40000000 ct mark set ct mark | 0x40000000 }
        # (strict and the tunnel down: `reject` instead, TCP with a reset, so every query fails at once)
    chain dns_restore { type filter hook prerouting priority mangle;  # replies: rule 31991 for the reverse-path check
        ct mark & 0x40000000 != 0 meta mark set meta mark | 0x40000000 }
    chain dns_out { type nat hook output priority -101;          # (no oifname: the output hook's stays the
        meta mark & 0x40000000 != 0 meta nfproto ipv4 dnat ip to 10.8.0.1 }   # one from before the reroute)
    chain dns_masq { type nat hook postrouting priority 99;        # before vpnsplit's own srcnat and Docker's
        meta mark & 0x40000000 != 0 oifname "tun0" masquerade }

Why not a DNAT in nat output alone: it keeps the uplink source, so the reroute meets rule 32001
and the query leaves by the uplink; a mark set in a nat chain covers only a connection's first
packet; and the reply, de-NAT-ed to the uplink address before routing, fails a strict
reverse-path check unless its mark (restored here) selects rule 31991 for it too, which the
kernel uses only with the tunnel device's src_valid_mark (dns.SRC_VALID_MARK).
CLIENT_MARK (0x20000000) packets are the VPN clients' own and are left alone.
"""

from vpnsplit.apps import APP_MASK
from vpnsplit.dns import DNS_PORT, DnsApp, DnsAppBlock, DnsBlock, DnsDefault, DnsSource
from vpnsplit.marks import CLIENT_MARK, DNS_MARK, MANGLE_PRIORITY
from vpnsplit.marks import DSTNAT_PRIORITY as NAT_DST_PRIORITY
from vpnsplit.marks import SRCNAT_PRIORITY as NAT_SRC_PRIORITY
from vpnsplit.nftkinds import ADDR, NFPROTO, OIFNAME, ElementKind, Kind, interval_key, interval_source, obj

NFPROTO_NAME = {4: "ipv4", 6: "ipv6"}

_L4 = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}}
_DPORT = {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": DNS_PORT}}
_META, _CT = {"meta": {"key": "mark"}}, {"ct": {"key": "mark"}}
# TCP gets a reset: an ICMPv6 error may be rate-limited away (measured: a refused TCP lookup then took 1 s)
_RESET = {"reject": {"type": "tcp reset"}}


def _dport(proto):
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": DNS_PORT}}


def _saddr_in(fam, name):
    return {"match": {"op": "==", "left": {"payload": {"protocol": NFPROTO[fam], "field": "saddr"}}, "right": f"@{name}{fam}"}}


class DnsSourceKind(ElementKind):
    """dns_src4/6: source subnet : its tunnel's resolver; chain dns_dstnat DNAT-s DNS from the subnet there."""

    type = DnsSource
    owner = "source"
    sets = {f"dns_src{f}": (ADDR[f], ADDR[f], ["interval"]) for f in (4, 6)}
    chains = {"dns_dstnat": ("nat", "prerouting", NAT_DST_PRIORITY, [
        [_L4, _DPORT, {"dnat": {"family": NFPROTO[f], "addr": {"map": {
            "key": {"payload": {"protocol": NFPROTO[f], "field": "saddr"}}, "data": f"@dns_src{f}"}}}}]
        for f in (4, 6)])}

    def elements(self, e):
        return [(f"dns_src{e.family}", [interval_key(e.source), e.to])]

    def read(self, listing):
        return {DnsSource(f, interval_source(key), to) for f in (4, 6) for key, to in listing.sets.get(f"dns_src{f}", [])}


class DnsBlockKind(ElementKind):
    """dns_down4/6: source subnets of strict tunnels that are down; chain dns_refuse refuses their DNS."""

    type = DnsBlock
    owner = "source"
    sets = {f"dns_down{f}": (ADDR[f], None, ["interval"]) for f in (4, 6)}
    chains = {"dns_refuse": ("filter", "prerouting", MANGLE_PRIORITY, [
        rule for f in (4, 6) for rule in (
            [_dport("tcp"), _saddr_in(f, "dns_down"), _RESET],
            [_dport("udp"), _saddr_in(f, "dns_down"),
             {"reject": {"type": "icmp" if f == 4 else "icmpv6", "expr": "port-unreachable"}}])])}

    def elements(self, e):
        return [(f"dns_down{e.family}", interval_key(e.source))]

    def read(self, listing):
        return {DnsBlock(f, interval_source(key)) for f in (4, 6) for key in listing.sets.get(f"dns_down{f}", [])}


def _nfproto(fam):
    return {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": NFPROTO_NAME[fam]}}


_APP = {"&": [_META, APP_MASK]}
# before the default VPN's dns_out: the first DNAT binds, and a program's DNS is its tunnel's, not the default VPN's
APP_DST_PRIORITY = NAT_DST_PRIORITY - 1


class DnsAppKind(ElementKind):
    """dns_app4/6: app mark : its tunnel's resolver; chain dns_app DNAT-s the programs' DNS there."""

    type = DnsApp
    owner = "app"
    sets = {f"dns_app{f}": ("mark", ADDR[f], None) for f in (4, 6)}
    chains = {"dns_app": ("nat", "output", APP_DST_PRIORITY, [
        [_L4, _DPORT, _nfproto(f), {"dnat": {"family": NFPROTO[f], "addr": {"map": {"key": _APP, "data": f"@dns_app{f}"}}}}]
        for f in (4, 6)])}

    def elements(self, e):
        return [(f"dns_app{e.family}", [e.mark, e.to])]

    def read(self, listing):
        return {DnsApp(f, mark, to) for f in (4, 6) for mark, to in listing.sets.get(f"dns_app{f}", [])}


class DnsAppBlockKind(ElementKind):
    """dns_app_down: the app marks of strict tunnels that are down; chain dns_app_refuse refuses their DNS."""

    type = DnsAppBlock
    owner = "app"
    sets = {"dns_app_down": ("mark", None, None)}
    down = {"match": {"op": "==", "left": _APP, "right": "@dns_app_down"}}
    chains = {"dns_app_refuse": ("filter", "output", MANGLE_PRIORITY, [
        [_dport("tcp"), down, _RESET], [_dport("udp"), down, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]])}

    def elements(self, e):
        return [("dns_app_down", e.mark)]

    def read(self, listing):
        return {DnsAppBlock(mark) for mark in listing.sets.get("dns_app_down", [])}


def _set_bit(key):
    return {"mangle": {"key": key, "value": {"|": [key, DNS_MARK]}}}


def _has_bit(key):
    return {"match": {"op": "!=", "left": {"&": [key, DNS_MARK]}, "right": 0}}


class DnsDefaultKind(Kind):
    """The default VPN's DNS: four chains that exist only while it is on (see above)."""

    type = DnsDefault
    owner = "default"
    own_chains = {
        "dns_mark": ("route", "output", MANGLE_PRIORITY),
        "dns_restore": ("filter", "prerouting", MANGLE_PRIORITY),
        "dns_out": ("nat", "output", NAT_DST_PRIORITY),
        "dns_masq": ("nat", "postrouting", NAT_SRC_PRIORITY),
    }

    @staticmethod
    def rules(entry):
        """chain name -> the rules (lists of expressions) of that chain for *entry*."""
        device = {"match": {"op": "==", "left": OIFNAME, "right": entry.device}}
        not_client = {"match": {"op": "==", "left": {"&": [_META, CLIENT_MARK]}, "right": 0}}
        local = {"match": {"op": "!=", "left": OIFNAME, "right": "lo"}}
        if entry.refuse:
            mark = [[_dport("tcp"), local, not_client, _RESET],
                    [_dport("udp"), local, not_client, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]]
        else:
            mark = [[_L4, _DPORT, local, not_client, _set_bit(_META), _set_bit(_CT)]]
        redirects = []
        for to in entry.to:
            fam = 6 if ":" in to else 4
            redirects.append([_has_bit(_META), _nfproto(fam), {"dnat": {"family": NFPROTO[fam], "addr": to}}])
        return {
            "dns_mark": mark,
            "dns_restore": [[_has_bit(_CT), _set_bit(_META)]],
            "dns_out": redirects,
            "dns_masq": [[_has_bit(_META), device, {"masquerade": None}]],
        }

    def commands(self, verb, entry):
        """Add (replacing whatever the chains hold) or delete (absent is fine) the chains."""
        cmds = []
        for name, rules in self.rules(entry).items():
            ctype, hook, prio = self.own_chains[name]
            cmds.append({"add": obj("chain", name=name, type=ctype, hook=hook, prio=prio, policy="accept")})
            if verb == "add":
                cmds += [{"flush": obj("chain", name=name)}] + [{"add": obj("rule", chain=name, expr=expr)} for expr in rules]
            else:
                cmds.append({"delete": obj("chain", name=name)})
        return cmds

    def read(self, listing):
        """The DnsDefault the chains stand for, unless all four do not hold exactly its rules."""
        rules = listing.rules
        if not set(self.own_chains) <= listing.chains or len(rules["dns_masq"]) != 1:
            return set()
        device = next((e["match"]["right"] for e in rules["dns_masq"][0] if e.get("match", {}).get("left") == OIFNAME), None)
        if not isinstance(device, str):
            return set()
        to = tuple(e["dnat"]["addr"] for rule in rules["dns_out"] for e in rule if isinstance(e.get("dnat", {}).get("addr"), str))
        entry = DnsDefault(device, to, refuse=any("reject" in e for rule in rules["dns_mark"] for e in rule))
        return {entry} if all(rules[name] == want for name, want in self.rules(entry).items()) else set()


KINDS = (DnsSourceKind(), DnsBlockKind(), DnsAppKind(), DnsAppBlockKind(), DnsDefaultKind())
