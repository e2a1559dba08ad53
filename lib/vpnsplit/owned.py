"""Ownership by record: what vpnsplit applied for a tunnel, as its record keeps it, and what to remove.

Every run records, per tunnel, the kernel objects it left in place for it (a plan.State: its
rules, the routes of its table, its aliases with their devices, its entries in vpnsplit's nft
table); the forwarding switches it turned on are recorded beside (state.Record.forwarding).
A later run removes what the record holds and nothing wants any more, so a config edit
(another alias, alias_device, table or priority) or a removed section leaves nothing behind:

    leftovers(recorded, desired, claimed)   # plain data: recorded - desired - other records' claims

and `status`/`check` report such leftovers still in the kernel as orphans. The default VPN's
objects are not a tunnel's: they follow the recorded choice (default_vpn).

In the record (NAME.json) the objects are a list of {"kind": ..., field: value} per State part,
which from_json validates as strictly as the lease: a damaged record must never name a device
or address vpnsplit then writes to.
"""

import ipaddress
import json

from vpnsplit import addresses, apps, backstop, dns, retire
from vpnsplit.errors import InputError
from vpnsplit.plan import Address, Dnat, Guard, Route, Rule, Snat, State

# the kinds of object a tunnel owns, by the name its record gives them
KINDS = {cls.__name__: cls for cls in (Rule, Route, Address, Snat, Dnat, Guard, backstop.Confine, backstop.Reach,
                                       dns.DnsSource, dns.DnsBlock, dns.DnsApp, dns.DnsAppBlock, apps.AppConfine,
                                       apps.AppReach, apps.AppSnat, retire.Retired)}
PARTS = State._fields  # rules, routes, addresses, nft
# fields that hold neither an address nor a device name
_WORDS = {"type": ("unicast", "unreachable"), "proto": ("", "tcp", "udp")}


def to_json(state):
    """*state* as the record writes it: {part: [{"kind": ..., field: value, ...}, ...]}, sorted."""
    return {part: sorted(({"kind": type(o).__name__, **o._asdict()} for o in getattr(state, part)),
                         key=lambda d: json.dumps(d, sort_keys=True)) for part in PARTS}


def from_json(doc, where, fix="remove it"):
    """The State a record's "applied" field stands for; InputError naming *where* and *fix* if it is damaged."""
    try:
        if not isinstance(doc, dict) or set(doc) - set(PARTS):
            raise ValueError(f"applied is not an object of {', '.join(PARTS)}")
        parts = {}
        for part in PARTS:
            items = doc.get(part, [])
            if not isinstance(items, list):
                raise ValueError(f"applied.{part} is not a list")
            parts[part] = frozenset(_object(item) for item in items)
    except ValueError as e:
        raise InputError(f"{where}: damaged ({e}); {fix}") from None
    return State(**parts)


def _object(item):
    cls = KINDS.get(item.get("kind")) if isinstance(item, dict) else None
    if cls is None or set(item) - {"kind", *cls._fields}:
        raise ValueError(f"an object of unknown kind or with unknown fields: {item!r:.80}")
    values = {**cls._field_defaults, **{k: v for k, v in item.items() if k != "kind"}}
    if set(cls._fields) - set(values):
        raise ValueError(f"{item['kind']} without {', '.join(sorted(set(cls._fields) - set(values)))}")
    for field in cls._fields:
        if not _valid(field, values[field], cls.__annotations__[field]):
            raise ValueError(f"{item['kind']} {field} {values[field]!r:.60}")
    return cls(**{f: values[f] for f in cls._fields})


def _valid(field, value, hint):
    """A field value of the kinds above, by its type *hint*: numbers, known words, device names, addresses
    and prefixes, None where optional (str | None)."""
    if hint is int:
        return type(value) is int and (field != "family" or value in (4, 6))  # no bool
    if field in _WORDS:
        return value in _WORDS[field]
    if value is None:
        return hint is not str
    if not isinstance(value, str):
        return False
    if field in ("device", "iif"):
        try:
            return value == "" and field == "iif" or addresses.ifname(value, "state") == value
        except InputError:
            return False
    try:
        return value == "" and field == "dst" or bool(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return False


def leftovers(recorded, desired, claimed=State()):
    """What *recorded* (a tunnel's record) holds that *desired* (this run's plan, every tunnel of
    the run together) no longer wants and no other record (*claimed*) holds: what the run removes."""
    return State(*(mine - want - theirs for mine, want, theirs in zip(recorded, desired, claimed)))


def app_slots(state):
    """The per-app slots (apps.py) whose mark *state*'s rules steer."""
    return {apps.slot_of(r.fwmark) for r in state.rules if r.fwmask == apps.APP_MASK} - {None}


def union(states):
    out = State()
    for s in states:
        out = out | s
    return out


def device(record):
    """The tunnel device a record (state.Record) is about: its lease's, else the one its tunnel routes,
    guards and backstop entries name (an alias may sit on another device, lo say); None if it names none."""
    if record.lease is not None:
        return record.lease.device
    state = record.applied or State()
    named = {o.device for o in state.nft if isinstance(o, (Guard, backstop.Confine, retire.Retired))}
    named |= {r.device for r in state.routes if r.device}
    return named.pop() if len(named) == 1 else None


def tables(state):
    """The routing tables *state*'s rules and routes use, main's aside (a LAN exception's)."""
    return sorted({r.table for r in state.rules | state.routes} - {254})


def describe(state):
    """A short text of what *state* holds: "table 100, priorities 1000-1003, aliases 10.192.8.5 on tun0, 6 nft entries"."""
    prios = sorted({r.priority for r in state.rules})
    parts = [f"table{'s' if len(tables(state)) > 1 else ''} {', '.join(map(str, tables(state)))}" if tables(state) else None,
             f"priorities {prios[0]}-{prios[-1]}" if len(prios) > 1 else f"priority {prios[0]}" if prios else None,
             "aliases " + ", ".join(f"{a.address} on {a.device}" for a in sorted(state.addresses)) if state.addresses else None,
             f"{len(state.nft)} nft entr{'y' if len(state.nft) == 1 else 'ies'}" if state.nft else None]
    return ", ".join(p for p in parts if p) or "nothing"
