"""A retired alias kept confined while sockets are still bound to it.

When a config edit retires an alias (or its section goes), the run takes it off its device and
destroys the sockets bound to it (sockets.py). The kernel keeps a UDP socket's explicit bind,
though: an unconnected IPv6 one that sendto()s on sends from the old alias, and with its rules
gone the main table sends that by the uplink, in the clear; so does a raw or ping socket (`ping -I`),
which nothing can destroy (IPv4 refuses a source no device holds, but not for a socket with
IP_TRANSPARENT). So while datagram sockets (UDP, raw, ping) are still bound to it, the retired alias
stays in the backstop as a source confined to no device at all: its packets are dropped wherever
they would leave (the sender gets EPERM), link scope aside, as for any confined source. Its
unconnected UDP sockets are not destroyed: left hashed, /proc/net keeps listing them, so a later run
knows they are still there (a destroyed one is not listed until it sends again; a connected one is
destroyed all the same, and counts again once it connects or sends again).

The entry (Retired) is recorded with what its tunnel's run applied, so ownership, teardown and
`check` treat it as any other object: every run over that tunnel (hooks, up, the watcher's
converge) asks again and the first that finds no socket bound to it removes it. No run starts
when such a socket closes (nothing tells the watcher), so it stays until the next one. An address
a device holds again, or that a tunnel's config wants (an alias, a lease's tunnel address, inside
a source subnet), is never confined this way.
"""

import ipaddress
from typing import NamedTuple


class Retired(NamedTuple):
    """ADDRESS, once an alias of DEVICE's tunnel, leaves through no device while sockets are bound to it."""

    family: int
    address: str
    device: str

    def __str__(self):
        return (f"backstop: retired alias {self.address} (of {self.device}) leaves by no device "
                f"while sockets are bound to it")

    # equal only to its own kind: as a plain tuple it would equal a Confine or Guard with the same fields
    def __eq__(self, other):
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(("Retired", *self))


def candidates(applied, left, retired, device):
    """The Retired entries one tunnel's run considers, from its record's *applied* State: the aliases
    among *retired* (this run takes them off their devices) that it held, and the Retired entries it
    recorded that nothing wants (in *left*). *device*: the tunnel's device, which they name (None: a
    section gone with its lease, whose record names no device: the alias's own)."""
    new = {Retired(a.family, a.address, device or a.device) for a in applied.addresses
           if ipaddress.ip_address(a.address) in retired}
    return new | {e for e in applied.nft & left.nft if isinstance(e, Retired)}


def confinable(entries, held, keep, subnets):
    """The *entries* whose address no device *holds* (after the run), that is not among the addresses a
    run *keeps* (configured aliases, tunnel addresses) and lies in none of the configured source *subnets*."""
    out = set()
    for e in entries:
        address = ipaddress.ip_address(e.address)
        if address not in held and address not in keep and not any(address in net for net in subnets):
            out.add(e)
    return out


def kept(tunnels, left, retired, keep, subnets):
    """{tunnel name: the Retired entries its record keeps}: those still confinable that sockets are
    bound to now. *tunnels*: (name, device, applied State) of each tunnel the run handles; *left*: what
    the run removes; *retired*: the aliases it retires (sockets.retired); *keep*: addresses never retired;
    *subnets*: every configured tunnel's sources."""
    wanted = {name: candidates(applied, left, retired, device) for name, device, applied in tunnels}
    if not any(wanted.values()):
        return {}
    from vpnsplit import sockets  # a run that retires no alias never needs it

    taken = {ipaddress.ip_address(a.address) for a in left.addresses}
    held = sockets.held_addresses() - taken
    bound = sockets.bound({ipaddress.ip_address(e.address) for es in wanted.values() for e in es})
    return {name: frozenset(e for e in confinable(es, held, keep, subnets) if ipaddress.ip_address(e.address) in bound)
            for name, es in wanted.items()}


def explained(entries):
    """{entry: why it is still there} for each of *entries* (Retired) that sockets are still bound to."""
    from vpnsplit import sockets

    bound = sockets.bound({ipaddress.ip_address(e.address) for e in entries})
    out = {}
    for e in entries:
        found = bound.get(ipaddress.ip_address(e.address))
        if found:
            out[e] = (f"retired alias {e.address} kept confined: {len(found)} socket(s) still bound to it "
                      f"({sockets.owners(found)}); restart the service holding them")
    return out
