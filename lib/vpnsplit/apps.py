"""Per-app tunnels: a tunnel's `app_slot` gives every socket of chosen programs a mark that sends it there.

    mark layout (bits): 0x80000000 APP_FLAG | slot << 24 (0x0f000000: slots 1-15), tested with APP_MASK
    P+2: from all to <lan> fwmark 0x83000000/0x8f000000 lookup main      # `lan` destinations stay direct
    P+3: from all fwmark 0x83000000/0x8f000000 lookup <tunnel table>    # everything else: the tunnel
    (with strict, appsnat.py's chain: marked packets leave only through their tunnel or to their `lan`)
    AppSnat: marked packets leaving by their tunnel are SNAT-ed to the tunnel address (a socket bound
    to another address of the host: the uplink's, the LAN's), their replies get the mark back

The mark is the socket's (bpf.py sets sk_mark when a process of the app's cgroup creates it), so
the route lookup that picks the source address already sees it: an unbound socket gets the tunnel
address and needs no NAT; with strict and the tunnel down the table's unreachable default fails a
connect or send at once; TIME_WAIT ACKs and RSTs carry it too.
"""

from typing import NamedTuple

from vpnsplit.errors import InputError

APP_FLAG, SLOT_BITS, SLOT_SHIFT = 0x80000000, 0x0F000000, 24
APP_MASK = APP_FLAG | SLOT_BITS
SLOTS = range(1, 16)


def mark(slot):
    """The packet mark of *slot*'s programs."""
    return APP_FLAG | slot << SLOT_SHIFT


def slot_of(value):
    """The slot a packet or socket mark carries, or None when it is not a per-app mark."""
    return (value & SLOT_BITS) >> SLOT_SHIFT if value & APP_FLAG and value & SLOT_BITS else None


def from_config(section, where):
    """(app_slot or None, cgroups, units) of a config *section*; InputError naming the bad value."""
    slot = section.get("app_slot")
    if slot is not None and (isinstance(slot, bool) or not isinstance(slot, int) or slot not in SLOTS):
        raise InputError(f"{where}: app_slot = {slot!r} must be an integer {SLOTS.start}-{SLOTS.stop - 1}")
    return slot, _paths(section, "cgroups", slot, where), _paths(section, "units", slot, where)


def _paths(section, key, slot, where):
    """`cgroups`: paths below the cgroup2 root ("system.slice/x.service"); `units`: unit paths as they
    end ("transmission-daemon.service", "user@1000.service/app.slice/firefox.scope")."""
    value = section.get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{where}: {key} = {value!r} must be a list")
    if value and slot is None:
        raise InputError(f"{where}: {key} = {value!r} needs app_slot = 1..15 (the mark of the tunnel's programs)")
    for item in value:
        parts = item.split("/") if isinstance(item, str) else [""]
        if any(p in ("", ".", "..") or not p.isprintable() for p in parts):
            raise InputError(f"{where}: {key} entry {item!r} must be a relative cgroup path like \"system.slice/x.service\"")
    return tuple(value)


class AppConfine(NamedTuple):
    """With strict: packets carrying MARK leave only through DEVICE, their tunnel (or to their AppReach)."""

    mark: int
    device: str

    def __str__(self):
        return f"apps: mark {self.mark:#x} leaves only through {self.device}"


class AppSnat(NamedTuple):
    """While up: packets carrying MARK that leave through DEVICE, their tunnel, get source TO, the tunnel address
    (those of a socket bound to another address of the host; an unbound one's have it already)."""

    family: int
    mark: int
    device: str
    to: str

    def __str__(self):
        return f"apps: mark {self.mark:#x} leaving by {self.device} gets source {self.to}"


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


def snat(tunnel, locals_):
    """The AppSnat entries of *tunnel* while up with the tunnel addresses *locals_*."""
    if tunnel.app_slot is None:
        return set()
    return {AppSnat(a.version, mark(tunnel.app_slot), tunnel.device, str(a)) for a in locals_}


def _text(net):
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
