"""The planner: from a tunnel's config and its lease, the kernel objects that should exist.

Pure functions over NamedTuples (immutable, hashable, ordered values; a tenth of what a
frozen dataclass costs to define, which every hook run pays at import), so the whole
desired state can be tested without root. Everything here is "ours": rules and routes carry RTPROT_VPNSPLIT, the NAT entries
live in vpnsplit's own nft table, and a tunnel's objects are told apart by its table.
"""

from typing import NamedTuple

from vpnsplit import apps, backstop, dns
from vpnsplit.errors import InputError
from vpnsplit.marks import CLIENT_PRIORITY, DEFAULT_PRIORITY, REPLY_MARK

# The route/rule protocol number that marks vpnsplit's objects (`ip rule` shows "proto 118";
# `make install` names it in /etc/iproute2/rt_protos.d). Unassigned in iproute2's list.
RTPROT_VPNSPLIT = 118
# The strict fail-closed route: a metric no real route beats, as with OpenWrt pbr.
UNREACHABLE_METRIC = 0xFF000000
# Explicit for both families: the kernel turns an IPv6 metric of 0 into 1024 anyway.
TUNNEL_METRIC = 1024
EVERYWHERE = {4: "0.0.0.0/0", 6: "::/0"}  # the destination of a default route, by IP version
# The host-wide default VPN's rules (default_vpn): after every tunnel's own rules (config keeps
# those below), before wg-quick's 32764/32765 and the kernel's main rule at 32766.
DEFAULT_PRIORITIES = range(DEFAULT_PRIORITY, DEFAULT_PRIORITY + 4)
# every rule from the clients' mark rule (31990) and the DNS mark rule (31991) to 32003 is the default VPN's
DEFAULT_OWNED = range(CLIENT_PRIORITY, DEFAULT_PRIORITY + 4)


MAIN_TABLE, LOCAL_TABLE = 254, 255


class Rule(NamedTuple):
    """`ip rule add from SRC [to DST] [fwmark MARK/MASK] lookup TABLE priority PRIORITY proto 118`."""

    family: int
    priority: int
    table: int
    src: str  # a prefix, e.g. "10.8.0.2/32"
    dst: str = ""  # a prefix, or "" for any destination
    suppress: int = -1  # suppress_prefixlength, or -1 for none
    # last, with defaults: a rule without a mark compares, sorts and prints as before
    fwmark: int = 0
    fwmask: int = 0  # 0: no fwmark selector (the kernel reports neither then)
    iif: str = ""  # "lo": the host's own packets only
    ipproto: int = 0  # an IP protocol number (17: UDP), or 0 for any
    dport: int = 0  # a destination port (with ipproto), or 0 for any

    def __str__(self):
        to = f" to {self.dst}" if self.dst else ""
        iif = f" iif {self.iif}" if self.iif else ""
        mark = f" fwmark {self.fwmark:#x}/{self.fwmask:#x}" if self.fwmask else ""
        proto = f" ipproto {self.ipproto}" if self.ipproto else ""
        dport = f" dport {self.dport}" if self.dport else ""
        suppress = f" suppress_prefixlength {self.suppress}" if self.suppress >= 0 else ""
        return f"rule from {self.src}{to}{iif}{mark}{proto}{dport} lookup {self.table}{suppress} priority {self.priority}"


class Route(NamedTuple):
    """A route in a tunnel's table: `unicast` via the tunnel, or the strict `unreachable` default."""

    family: int
    table: int
    dst: str
    type: str = "unicast"
    device: str | None = None
    gateway: str | None = None
    metric: int = TUNNEL_METRIC

    def __str__(self):
        how = "unreachable" if self.type == "unreachable" else ""
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.device}" if self.device else ""
        metric = f" metric {self.metric}"
        return f"route {how + ' ' if how else ''}{self.dst}{via}{dev} table {self.table}{metric}"


class Address(NamedTuple):
    """An alias address (/32 or /128) on a device."""

    family: int
    device: str
    address: str

    def __str__(self):
        return f"address {self.address}/{32 if self.family == 4 else 128} on {self.device}"


class Snat(NamedTuple):
    """An entry in vpnsplit's SNAT map: packets from SOURCE (an alias, or a source subnet
    like "10.20.1.0/24") leaving via DEVICE get the source address TO."""

    family: int
    source: str
    device: str
    to: str

    def __str__(self):
        return f"snat {self.source} -> {self.to} out {self.device}"


class Dnat(NamedTuple):
    """An inbound port forward: connections arriving on DEVICE for ADDRESS (the tunnel
    address) and PROTO/PORT go to TO (the alias). PROTO "" and PORT 0 mean every port."""

    family: int
    address: str
    device: str
    proto: str
    port: int
    to: str

    def __str__(self):
        what = f"{self.proto}/{self.port}" if self.proto else "all ports"
        return f"dnat {self.address} {what} in {self.device} -> {self.to}"


class Guard(NamedTuple):
    """Anti-spoofing, as wg-quick does it: packets to ADDRESS are dropped unless they arrive
    on DEVICE (or come from this host), so the alias and the tunnel address can't be reached
    from the LAN side."""

    family: int
    address: str
    device: str

    def __str__(self):
        return f"guard {self.address} reachable only via {self.device}"


class ReplyMark(NamedTuple):
    """The default VPN's reply marking, two chains of vpnsplit's nft table: a connection for
    this host (also one DNAT-ed on to a container) that arrives on any device but DEVICE (the
    default VPN's tunnel) gets REPLY_MARK in its conntrack mark, and its packets get it as
    packet mark (in prerouting for forwarded replies, in a route chain for the host's own, so
    the kernel looks the route up again), which rule 32001 sends to main. Both families."""

    device: str

    def __str__(self):
        return f"mark replies of connections arriving not via {self.device} with {REPLY_MARK:#x}"


class State(NamedTuple):
    """A set of kernel objects: what should exist (planned) or what does (observed).

    `nft` holds the entries of vpnsplit's nft table (Snat, Dnat, Guard and ReplyMark objects)."""

    rules: frozenset = frozenset()
    routes: frozenset = frozenset()
    addresses: frozenset = frozenset()
    nft: frozenset = frozenset()

    def objects(self):
        return sorted(self.rules) + sorted(self.routes) + sorted(self.addresses) + sorted(self.nft, key=repr)

    def __or__(self, other):
        """Both states together (tunnels' objects never overlap: tables, aliases, devices are unique)."""
        return State(*(mine | theirs for mine, theirs in zip(self, other)))


def _fam(addr):
    return addr.version


def host_prefix(addr):
    """*addr* as a one-address prefix."""
    return f"{addr}/{addr.max_prefixlen}"


def plan_up(tunnel, lease):
    """The desired state while the tunnel is up with *lease*."""
    if lease.device != tunnel.device:
        raise InputError(f"tunnel {tunnel.name}: lease is for device {lease.device!r}, config says {tunnel.device!r}")
    for local in lease.locals:
        for alias in (tunnel.alias, tunnel.alias6):
            if alias is not None and alias == local.ip:
                raise InputError(f"tunnel {tunnel.name}: alias {alias} equals the tunnel address the VPN gave {lease.device}")
    rules, routes, nft = set(), set(), set()
    for local, alias, gateway in (
        (lease.local4, tunnel.alias, lease.gateway4 or tunnel.gateway),
        (lease.local6, tunnel.alias6, lease.gateway6 or tunnel.gateway6),
    ):
        if local is None:
            continue
        fam = local.version
        routes.add(_tunnel_route(tunnel, lease, local, gateway))
        if lease.dev_type == "tap":
            routes.add(Route(fam, tunnel.table, str(local.network), device=tunnel.device))
        rules.add(Rule(fam, tunnel.priority, tunnel.table, host_prefix(local.ip)))
        nft.add(Guard(fam, str(local.ip), tunnel.device))
        if alias is not None:
            nft.add(Snat(fam, str(alias), tunnel.device, str(local.ip)))
            nft.update(Dnat(fam, str(local.ip), tunnel.device, proto, port, str(alias)) for proto, port in tunnel.forward)
        nft.update(Snat(fam, str(net), tunnel.device, str(local.ip)) for net in tunnel.sources if net.version == fam)
    nft.update(backstop.confine(tunnel, [a.ip for a in lease.locals]) | apps.snat(tunnel, [a.ip for a in lease.locals]))
    families = [a.version for a in lease.locals]
    down = plan_down(tunnel, families=families)
    # the sources' DNS: redirected while up, refused only while down
    nft.update(e for e in down.nft if not isinstance(e, (dns.DnsBlock, dns.DnsAppBlock)))
    return State(
        rules=frozenset(rules | down.rules),
        routes=frozenset(routes | down.routes),
        addresses=_aliases(tunnel, families) | down.addresses,
        nft=frozenset(nft | dns.plan_sources(tunnel, lease) | dns.plan_apps(tunnel, lease)),
    )


def plan_down(tunnel, families=()):
    """The desired state while the tunnel is down.

    With `strict`, the table keeps an unreachable default for both families and the aliases
    and source subnets keep their rules into it, so traffic from them fails at once instead
    of falling through to the main table. An alias on a device of its own (`alias_device`, e.g. lo) stays, so
    services bound to it keep their sockets. *families* are the address families the tunnel
    carries while up; it lets plan_up reuse this for the parts it shares.
    """
    rules, routes, guards = set(), set(), set()
    steered = {4, 6} if tunnel.strict else set(families)
    for alias in (tunnel.alias, tunnel.alias6):
        if alias is not None and _fam(alias) in steered:
            rules.add(Rule(_fam(alias), tunnel.priority + 1, tunnel.table, host_prefix(alias)))
            guards.add(Guard(_fam(alias), str(alias), tunnel.device))
    for net in tunnel.sources:
        if net.version in steered:
            # the exceptions first (P+2, into main): the subnet itself — without it the host's own
            # address on the bridge would route into the tunnel and the reverse-path check of
            # the subnet's ARP would fail —, and the configured LAN; then everything into the tunnel (P+3)
            local = (net, *(lan for lan in tunnel.lan if lan.version == net.version))
            rules.update(Rule(net.version, tunnel.priority + 2, MAIN_TABLE, str(net), str(dst)) for dst in local)
            rules.add(Rule(net.version, tunnel.priority + 3, tunnel.table, str(net)))
    # the programs of its cgroups (apps.py): `lan` direct (P+2), the rest into the tunnel (P+3)
    rules |= _app_rules(tunnel, steered)
    if tunnel.strict:
        for fam in (4, 6):
            routes.add(Route(fam, tunnel.table, EVERYWHERE[fam], type="unreachable", metric=UNREACHABLE_METRIC))
        guards.update(backstop.confine(tunnel) | apps.confine(tunnel))  # the backstop holds without the rules
    keep_aliases = tunnel.strict and tunnel.alias_device not in (None, tunnel.device)
    addrs = _aliases(tunnel, (4, 6)) if keep_aliases else frozenset()
    guards |= dns.plan_sources(tunnel, None) | dns.plan_apps(tunnel, None)
    return State(rules=frozenset(rules), routes=frozenset(routes), addresses=addrs, nft=frozenset(guards))


def _app_rules(tunnel, families):
    if tunnel.app_slot is None:
        return set()
    mark, rules = apps.mark(tunnel.app_slot), set()
    for fam in families:
        every = EVERYWHERE[fam]
        # their DNS into the tunnel before the `lan` exceptions, whatever resolver it asks: the tunnel address
        # is its source, so dns.DnsApp's redirect to the tunnel's resolver needs no NAT and passes rp_filter
        rules.update(Rule(fam, tunnel.priority + 1, tunnel.table, every, fwmark=mark, fwmask=apps.APP_MASK,
                          ipproto=proto, dport=dns.DNS_PORT) for proto in (6, 17))
        rules.update(Rule(fam, tunnel.priority + 2, MAIN_TABLE, every, str(lan), fwmark=mark, fwmask=apps.APP_MASK)
                     for lan in tunnel.lan if lan.version == fam)
        rules.add(Rule(fam, tunnel.priority + 3, tunnel.table, every, fwmark=mark, fwmask=apps.APP_MASK))
    return rules


def _aliases(tunnel, families):
    return frozenset(
        Address(_fam(a), tunnel.alias_dev, str(a)) for a in (tunnel.alias, tunnel.alias6) if a is not None and _fam(a) in families
    )


def _tunnel_route(tunnel, lease, local, gateway):
    fam = local.version
    if lease.dev_type == "tun":
        return Route(fam, tunnel.table, EVERYWHERE[fam], device=tunnel.device)
    if gateway is None:
        key = "gateway" if fam == 4 else "gateway6"
        raise InputError(
            f"tunnel {tunnel.name}: tap device {tunnel.device} needs an IPv{fam} gateway: OpenVPN passed none "
            f"(route-nopull drops route_vpn_gateway); set {key} = \"...\" in [tunnel.{tunnel.name}]"
        )
    if gateway not in local.network:
        raise InputError(f"tunnel {tunnel.name}: gateway {gateway} is not inside the tunnel subnet {local.network}")
    return Route(fam, tunnel.table, EVERYWHERE[fam], device=tunnel.device, gateway=str(gateway))


class Diff(NamedTuple):
    add: State
    remove: State


def diff(desired, current):
    """What to add and remove to turn *current* into *desired* (both States of one tunnel)."""

    def part(name):
        want, have = getattr(desired, name), getattr(current, name)
        return frozenset(want - have), frozenset(have - want)

    parts = {name: part(name) for name in ("rules", "routes", "addresses", "nft")}
    return Diff(
        add=State(**{k: v[0] for k, v in parts.items()}),
        remove=State(**{k: v[1] for k, v in parts.items()}),
    )
