"""The host-wide default VPN (`vpnsplit default`): which tunnel it is, and the rules that send
all of the host's traffic through it.

The choice: `vpnsplit default NAME` (recorded in the state directory, "" after --off), else
the section saying `default = true` (lowest id wins), else none. The rules live at
plan.DEFAULT_PRIORITIES, after every tunnel's own: local and LAN routes stay in main,
replies of connections that came from outside leave through the uplink, the VPN client's
own packets to its servers never loop into the tunnel, and everything else goes into the
tunnel's table, whose strict unreachable default makes this a kill switch.
"""

import ipaddress
import logging
import socket

from vpnsplit import backstop, dns, marks
from vpnsplit.config import ID_BASE, PRIORITY_SPAN
from vpnsplit.errors import InputError, shown
from vpnsplit.marks import DEFAULT_PRIORITY, REPLY_MARK
from vpnsplit.netlink import RTN_UNICAST, RTPROT_KERNEL
from vpnsplit.plan import EVERYWHERE, MAIN_TABLE, ReplyMark, Rule, State, host_prefix

log = logging.getLogger("vpnsplit")
OFF = "off"  # converge's *default* that removes the default VPN's rules


def candidates(tunnels):
    """The sections saying `default = true`, the chosen one first.

    Seed 001: "lowest number = default VPN to use ... when multiple are enabled". The
    lowest `id` wins; a section without one counts by its priority, which is what an id
    derives (id N is priority ID_BASE + PRIORITY_SPAN * N), then by name. Empty when no
    section says default = true: a default VPN is never guessed, since it would silently
    send the host's traffic through a VPN.
    """
    rank = lambda t: (ID_BASE + PRIORITY_SPAN * t.id if t.id is not None else t.priority, t.name)  # noqa: E731
    return sorted((t for t in tunnels.values() if t.default), key=rank)


def configured(tunnels):
    """The tunnel `default = true` chooses (None if no section says so); logs the choice when several say it."""
    found = candidates(tunnels)
    if len(found) > 1:
        log.info("default = true in %s: tunnel %s is the default VPN (lowest id, else lowest priority)",
                 ", ".join(t.name for t in found), found[0].name)
    return next(iter(found), None)


def named(cfg, name):
    """The tunnel `vpnsplit default [NAME]` means: NAME, else the one `default = true` chooses."""
    if name:
        return cfg.tunnel(name)
    tunnel = configured(cfg.tunnels)
    if tunnel is None:
        raise InputError(f"no [tunnel.*] section in {shown(cfg.path)} says default = true; "
                         f"name the tunnel (vpnsplit default NAME) or add default = true to one")
    return tunnel


def chosen(statedir, tunnels, announce=False):
    """The default VPN's tunnel: `vpnsplit default NAME` if said (None after --off), else the
    section `default = true` chooses (logging which when several do and *announce*), else None."""
    name = statedir.default_choice()
    if name is None:
        return configured(tunnels) if announce else next(iter(candidates(tunnels)), None)
    return tunnels.get(name)


def target(statedir, tunnels, tunnel, lease):
    """converge's *default* for a run that brings *tunnel* to *lease* (None: down): the same
    pair if *tunnel* is the default VPN (given every configured *tunnels*), else None."""
    return (tunnel, lease) if tunnels and chosen(statedir, tunnels) is tunnel else None


def plan_rules(tunnel, lease, uplink, servers, direct=()):
    """The rules (and IPv6 reply marking) that send all of the host's traffic through *tunnel*.

    In order: routes more specific than a default stay in main (local and LAN), replies of
    connections that came to the host from outside keep leaving through the uplink (seed
    000's normal-table), the VPN's own packets to its *servers* never loop into the tunnel,
    and everything else goes into the tunnel's table.

    Replies are told by conntrack (ReplyMark, rule `fwmark REPLY_MARK`), and for IPv4 also by
    their source address (the *uplink* addresses): for an unbound socket IPv6 picks the
    source after the lookup, and when the lookup failed (the unreachable default, also after
    the client died without down) it looks up again with that source — the uplink address,
    which a `from <uplink>` rule would send out in the clear. A new connection carries no mark.
    Before all of them (31990) the VPN clients' own packets, marked marks.CLIENT_MARK, use main:
    any tunnel's server, known or not. With strict, the backstop's kill switch lets out of
    non-tunnel devices only those, replies, DHCP, the *direct* networks (main's routes) and the servers.
    The host's DNS follows (dns.DnsDefault): marked into the tunnel's table by rule marks.DNS_PRIORITY.

    With strict and servers given by host name, the host's own UDP DNS takes main at its first
    route lookup (marks.NAMES_PRIORITY), which comes before any nft chain: else a query to a resolver off
    the LAN meets the kill switch's unreachable default (or, tunnel up, leaves from the tunnel's
    address) before the names chain could tell a server's name. What then leaves is still the
    backstop's to decide: the names chain marks the servers' names (marks.CLIENT_MARK), the DNS
    redirect reroutes every other query into the tunnel, or refuses it while the tunnel is down.
    """
    carried = {a.version for a in (lease.locals if lease else [])}
    families = {4, 6} if tunnel.strict else carried
    rules, nft = set(), {ReplyMark(tunnel.device)} if families else set()
    for fam in families:
        every = EVERYWHERE[fam]
        rules.add(Rule(fam, marks.CLIENT_PRIORITY, MAIN_TABLE, every, fwmark=marks.CLIENT_MARK, fwmask=marks.CLIENT_MARK))
        rules.add(Rule(fam, DEFAULT_PRIORITY, MAIN_TABLE, every, suppress=0))
        if fam == 4:
            rules.update(Rule(fam, DEFAULT_PRIORITY + 1, MAIN_TABLE, host_prefix(a)) for a in uplink if a.version == fam)
        rules.add(Rule(fam, DEFAULT_PRIORITY + 1, MAIN_TABLE, every, fwmark=REPLY_MARK, fwmask=REPLY_MARK))
        rules.update(Rule(fam, DEFAULT_PRIORITY + 2, MAIN_TABLE, every, host_prefix(s)) for s in servers if s.version == fam)
        rules.add(Rule(fam, DEFAULT_PRIORITY + 3, tunnel.table, every))
        # the host's DNS, marked by dns.DnsDefault, into the tunnel whatever its destination
        rules.add(Rule(fam, marks.DNS_PRIORITY, tunnel.table, every, fwmark=marks.DNS_MARK, fwmask=marks.DNS_MARK))
        if tunnel.strict and tunnel.server_names:
            rules.add(Rule(fam, marks.NAMES_PRIORITY, MAIN_TABLE, every, iif="lo", ipproto=socket.IPPROTO_UDP, dport=dns.DNS_PORT))
    if families:
        nft.add(dns.plan_default(tunnel, lease))
    # the kill switch leaves direct what these rules keep in main: its routes and the servers (32002)
    direct = [*direct, *(ipaddress.ip_network(s) for s in servers)]
    return State(rules=frozenset(rules), nft=frozenset(nft | backstop.killswitch(tunnel, direct)))


def servers_in_place(state, tunnel):
    """The VPN servers that the default VPN's rules in *state* keep out of *tunnel* (none
    when those rules send the host through another tunnel)."""
    if not any(r.priority == DEFAULT_PRIORITY + 3 and r.table == tunnel.table for r in state.rules):
        return set()
    return {ipaddress.ip_network(r.dst).network_address for r in state.rules if r.priority == DEFAULT_PRIORITY + 2}


def desired(kernel, default, current):
    """The desired state of the default VPN (empty for OFF) given its *current* one; *default*
    is (tunnel, lease or None).

    The server exceptions come from the config, the lease (OpenVPN's trusted_ip, the
    WireGuard endpoints, read at up) and, while the tunnel is down or its client names no
    server, the exceptions in place: a reconnecting client must still reach its server
    through the kill switch.
    """
    if default == OFF:
        return State()
    tunnel, lease = default
    # a client that names no server (a wedged wireguard-go) keeps the exceptions in place:
    # dropping them would loop its packets into its own tunnel
    servers = {*tunnel.servers, *((lease and lease.servers) or servers_in_place(current, tunnel))}
    if not servers and (lease is not None or tunnel.strict):
        log.warning("tunnel %s: no VPN server address known (OpenVPN trusted_ip, the WireGuard endpoint, or servers = [...] "
                    "in the config): %s", tunnel.name,
                    "its own packets may loop into the tunnel" if lease else
                    "with strict, its VPN client cannot reach the server through the kill switch before it connects")
    # what rule 32000 keeps in main: its unicast routes more specific than a default (the LAN, containers);
    # not the kernel's route to an IPv6 address of this host (a /128 alias vpnsplit may add in this very run)
    direct = [net for fam in (socket.AF_INET, socket.AF_INET6) for net, proto, rtype, *_ in kernel.nl.main_routes(fam)
              if net and rtype == RTN_UNICAST and not (net.prefixlen == 128 and proto == RTPROT_KERNEL)]
    return plan_rules(tunnel, lease, kernel.nl.uplink_addresses(), sorted(servers, key=lambda a: (a.version, a)), direct)


def choose(kernel, statedir, tunnel, tunnels):
    """Make *tunnel* the default VPN (None: off), recording the choice so its hooks keep it
    current; returns the changes made. The tunnel that was the default VPN (of the configured
    *tunnels*) is re-applied as an ordinary one, so that what only the default VPN needs
    (src_valid_mark on its device) is switched back. The choice is recorded first: a run killed after it
    leaves drift `check` reports and a re-run mends; killed before, the old choice's next
    hook would quietly undo this. If the kernel refuses, the old choice is put back."""
    from vpnsplit import engine  # here: engine imports this module

    if tunnel is None:
        default, targets = OFF, []
    elif kernel.nl.link_index(tunnel.device) is None:
        # not connected: the tunnel goes down with it, so that with strict its table's
        # unreachable default is there and 32003 is a kill switch, not a rule into nothing
        default = (tunnel, None)
        targets = [default]
    else:
        # the tunnel itself too, so its record holds the servers read now (check compares with it)
        default = (tunnel, kernel.current_lease(tunnel, statedir.record(tunnel.name), servers=True))
        targets = [default]
    before = chosen(statedir, tunnels)
    if before not in (None, tunnel) and kernel.nl.link_index(before.device) is not None:
        targets = [*targets, (before, kernel.current_lease(before, statedir.record(before.name)))]
    previous = statedir.default_choice()
    statedir.choose_default("" if tunnel is None else tunnel.name)
    try:
        return engine.converge(kernel, statedir, targets, default, list(tunnels.values()))
    except BaseException:
        statedir.choose_default(previous)
        raise
