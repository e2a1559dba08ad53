"""Per-app tunnels: a tunnel's `app_slot` gives every socket of chosen programs a mark that sends it there.

    mark layout (bits): 0x80000000 APP_FLAG | slot << 24 (0x0f000000: slots 1-15), tested with APP_MASK
    P+2: from all to <lan> fwmark 0x83000000/0x8f000000 lookup main      # `lan` destinations stay direct
    P+3: from all fwmark 0x83000000/0x8f000000 lookup <tunnel table>    # everything else: the tunnel
    (with strict, appsnat.py's chain: marked packets leave only through their tunnel or to their `lan`)

The mark is the socket's (bpf.py sets sk_mark when a process of the app's cgroup creates it), so
the route lookup that picks the source address already sees it: an unbound socket gets the tunnel
address and needs no NAT; with strict and the tunnel down the table's unreachable default fails a
connect or send at once; TIME_WAIT ACKs and RSTs carry it too.
"""

from typing import NamedTuple

APP_FLAG, SLOT_BITS, SLOT_SHIFT = 0x80000000, 0x0F000000, 24
APP_MASK = APP_FLAG | SLOT_BITS
SLOTS = range(1, 16)


def mark(slot):
    """The packet mark of *slot*'s programs."""
    return APP_FLAG | slot << SLOT_SHIFT


def slot_of(value):
    """The slot a packet or socket mark carries, or None when it is not a per-app mark."""
    return (value & SLOT_BITS) >> SLOT_SHIFT if value & APP_FLAG and value & SLOT_BITS else None


class AppConfine(NamedTuple):
    """With strict: packets carrying MARK leave only through DEVICE, their tunnel (or to their AppReach)."""

    mark: int
    device: str

    def __str__(self):
        return f"apps: mark {self.mark:#x} leaves only through {self.device}"


class AppReach(NamedTuple):
    """Packets carrying MARK (of DEVICE's tunnel) may reach DST, a `lan` exception, on any device."""

    family: int
    mark: int
    dst: str
    device: str

    def __str__(self):
        return f"apps: mark {self.mark:#x} may reach {self.dst} directly"


def confine(tunnel):
    """The netfilter entries of a strict *tunnel*'s programs."""
    if tunnel.app_slot is None or not tunnel.strict:
        return set()
    value = mark(tunnel.app_slot)
    return {AppConfine(value, tunnel.device)} | {AppReach(n.version, value, _text(n), tunnel.device) for n in tunnel.lan}


def _text(net):
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
