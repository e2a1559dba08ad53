"""A bridge per tunnel (seed 001's `br-NAME`): the steps that create, address and raise it, and
remove it again once its section is gone; its state for `status` and `check`.

The bridge's subnets are the tunnel's `sources` (config.py merges them), so the rules, SNAT,
backstop, DNS redirect and forwarding switches of source subnets cover it; this module only
keeps the device itself in step with the config. It is created at `up --all` (boot), before any
VPN client runs, and brought up without carrier, so containers can attach at once: their
traffic fails closed until the tunnel is up. `down` leaves it. The state file `bridges` records,
per bridge, the tunnel it serves, whether vpnsplit created it and which addresses vpnsplit put
on it; only a bridge vpnsplit created is ever deleted, and only when its section is gone (its
tunnel torn down from its record) or names another, and nothing is attached to it. A bridge that existed before is used as it is: it gets the
configured addresses, which go again when its section does.

Idempotency contract of every change here: the step's do() returns True only when it changed
the kernel (creating an existing bridge, adding a present address or raising an up device
returns False), and its undo() puts back what do() changed.
"""

import errno
import fcntl
import ipaddress
import json
import logging
import socket
import struct

from vpnsplit.errors import InputError
from vpnsplit.nlrequests import IFA_F_NODAD, no_device, tolerate
from vpnsplit.transaction import Step

log = logging.getLogger("vpnsplit")
RECORD = "bridges"  # in the state directory, beside the tunnels' NAME.json
IFF_UP, SIOCGIFFLAGS = 0x1, 0x8913


def _is_up(name):
    """Whether device *name* is administratively up (one ioctl; no pyroute2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("256s", name.encode())), 16)[0]
        except OSError:
            return False
    return bool(flags & IFF_UP)


class _Device:
    """The kernel operations on one bridge, each with the idempotency contract above."""

    def __init__(self, nl, name):
        self.nl, self.name = nl, name

    def _index(self):
        index = self.nl.link_index(self.name)
        if index is None:
            raise no_device(self.name)
        return index

    def create(self):
        """Create the bridge, down. An existing device of that name: False."""
        return tolerate(self.nl.ipr.link, "add", (errno.EEXIST,), ifname=self.name, kind="bridge")

    def delete(self):
        """Delete the bridge. Already gone: False."""
        index = self.nl.link_index(self.name)
        return index is not None and tolerate(self.nl.ipr.link, "del", (errno.ENODEV,), index=index)

    def set_up(self, up=True):
        """Bring the bridge up (without carrier it stays NO-CARRIER, addresses and routes in place) or down."""
        if _is_up(self.name) == up:
            return False
        self.nl.ipr.link("set", index=self._index(), state="up" if up else "down")
        return True

    def _addr(self, cmd, iface, codes):
        spec = dict(index=self._index(), family=socket.AF_INET if iface.version == 4 else socket.AF_INET6,
                    address=str(iface.ip), prefixlen=iface.network.prefixlen)
        if iface.version == 6:
            spec["flags"] = IFA_F_NODAD  # usable at once, with or without carrier
        return tolerate(self.nl.ipr.addr, cmd, codes, **spec)

    def add_address(self, iface):
        """Put *iface* (address/prefix) on the bridge. Already there: False."""
        return self._addr("add", iface, (errno.EEXIST,))

    def del_address(self, iface):
        """Take *iface* off the bridge. Already gone, or the bridge is: False."""
        return self.nl.link_index(self.name) is not None and self._addr("del", iface, (errno.EADDRNOTAVAIL,))

    def has(self, iface):
        """Whether the bridge carries *iface*'s address (one address dump per run, shared)."""
        from vpnsplit.plan import Address

        wanted = Address(iface.version, self.name, str(iface.ip))
        return bool(self.nl.addresses(self.name, {wanted}))

    def ports(self):
        """The names of the devices attached to the bridge (one link dump)."""
        index = self.nl.link_index(self.name)
        return [m.get_attr("IFLA_IFNAME") for m in self.nl.ipr.get_links() if index and m.get_attr("IFLA_MASTER") == index]

    def recreate(self, ifaces):
        """Undo of a deletion: the bridge again, with *ifaces*, up."""
        self.create()
        for iface in ifaces:
            self.add_address(iface)
        self.set_up()


def _read(statedir):
    """The record {bridge: {"tunnel", "created", "addresses"}} and its raw bytes (None: absent).
    A damaged record reads as empty: vpnsplit then deletes no bridge, which is the safe side."""
    raw = statedir.read_file(RECORD)
    try:
        doc = json.loads(raw) if raw is not None else {}
        if not isinstance(doc, dict) or not all(isinstance(e, dict) for e in doc.values()):
            raise ValueError("not an object of objects")
    except (ValueError, RecursionError) as e:
        log.warning("state file %s: damaged (%s): no bridge is deleted until a run writes it again", RECORD, e)
        doc = {}
    return doc, raw


def _recorded(entry):
    out = []
    for value in entry.get("addresses", []) if isinstance(entry.get("addresses"), list) else []:
        try:
            out.append(ipaddress.ip_interface(value))
        except (TypeError, ValueError):
            pass
    return out


def _ensure(nl, tunnel, entry):
    """The steps that bring *tunnel*'s bridge in line with the config, updating its record *entry*.
    An existing device's kind is asked (a pyroute2 request) only when something is to change."""
    dev, out = _Device(nl, tunnel.bridge), []
    existed = nl.link_index(dev.name) is not None
    entry["tunnel"] = tunnel.name
    if not existed:
        out.append(Step(f"create bridge {dev.name}", dev.create, dev.delete))
        entry["created"] = True
    for iface in tunnel.bridge_addresses:
        if not existed or not dev.has(iface):
            out.append(Step(f"add address {iface} to bridge {dev.name}", lambda i=iface: dev.add_address(i),
                            lambda i=iface: dev.del_address(i)))
    for iface in _recorded(entry):
        if iface not in tunnel.bridge_addresses and existed and dev.has(iface):
            out.append(Step(f"delete address {iface} from bridge {dev.name} (no longer configured)",
                            lambda i=iface: dev.del_address(i), lambda i=iface: dev.add_address(i)))
    entry["addresses"] = sorted({str(i) for i in tunnel.bridge_addresses})
    if not existed or not _is_up(dev.name):
        out.append(Step(f"bring bridge {dev.name} up", dev.set_up, lambda: dev.set_up(False)))
    if existed and out and (kind := nl.link_kind(dev.name)) != "bridge":
        raise InputError(f"tunnel {tunnel.name}: bridge = {dev.name!r}: that device exists and is "
                         f"{'a ' + kind if kind else 'not a bridge'}; name another or remove it")
    return out


def steps(nl, statedir, targets, configured, gone=()):
    """The steps of one run for the bridges: for each of the *targets* (tunnels) that names one,
    create it if absent, put on the configured addresses (and take off those vpnsplit added
    that the config no longer names), raise it; retire (retire()) each recorded bridge whose
    tunnel is torn down from its record in this run (*gone*, engine.teardown), no longer names
    it, or is gone from the *configured* tunnels (every one; empty: not known) with no record
    left (a bridge that stayed because something was attached); then one step recording the
    result. Refuses (InputError, before any change) a device of the bridge's name that is not a bridge."""
    doc, raw = _read(statedir)
    new, out = {k: dict(v) for k, v in doc.items()}, []
    for tunnel in targets:
        if tunnel.bridge:
            entry = new.setdefault(tunnel.bridge, {"created": False, "addresses": []})
            out += _ensure(nl, tunnel, entry)
    sections = {t.name: t.bridge for t in (*configured, *targets)}
    recorded = set(statedir.names()) if doc else set()  # a host without bridges lists no state directory
    for bridge, entry in sorted(doc.items()):
        owner = entry.get("tunnel")
        if owner in gone or sections.get(owner, bridge) != bridge or configured and owner not in sections and owner not in recorded:
            out += retire(nl, bridge, new)
    if new != doc:
        text = json.dumps(new, indent=2, sort_keys=True) + "\n"
        out.append(Step("record bridges", lambda: statedir.write_file(RECORD, text) or True,
                        lambda: statedir.write_file(RECORD, raw)))
    return out


def retire(nl, bridge, record):
    """The steps that retire *bridge*, whose section is gone, and drop it from *record* (the
    record being written): one vpnsplit created is deleted, unless something is still attached
    (then it stays, recorded, until a later run finds it empty); on one it did not create, the
    addresses vpnsplit put there are taken off and the device stays."""
    dev, entry = _Device(nl, bridge), record[bridge]
    ifaces = _recorded(entry)
    if nl.link_index(bridge) is None:
        del record[bridge]
        return []
    if entry.get("created") is True:
        ports = dev.ports()
        if ports:
            log.info("bridge %s stays: no section names it, but %s %s attached", bridge, ", ".join(ports),
                     "is" if len(ports) == 1 else "are")
            return []
        del record[bridge]
        return [Step(f"delete bridge {bridge} (its section is gone, nothing attached)", dev.delete, lambda: dev.recreate(ifaces))]
    del record[bridge]
    return [Step(f"delete address {i} from bridge {bridge} (its section is gone; vpnsplit did not create the bridge)",
                 lambda i=i: dev.del_address(i), lambda i=i: dev.add_address(i)) for i in ifaces if dev.has(i)]


def report(nl, statedir, tunnel):
    """(*tunnel*'s bridge as `status --json` shows it, problems for `check`); (None, []) without one."""
    if not tunnel.bridge:
        return None, []
    dev, fix = _Device(nl, tunnel.bridge), f"vpnsplit up {tunnel.name} puts it back"
    present = nl.link_index(dev.name) is not None
    have = [i for i in tunnel.bridge_addresses if present and dev.has(i)]
    up = present and _is_up(dev.name)
    problems = [] if present else [f"bridge {dev.name} does not exist ({fix})"]
    problems += [f"bridge {dev.name} lacks its address {i} ({fix})" for i in tunnel.bridge_addresses if present and i not in have]
    problems += [f"bridge {dev.name} is down ({fix})"] if present and not up else []
    created = _read(statedir)[0].get(dev.name, {}).get("created") is True
    return {"name": dev.name, "present": present, "up": up, "created_by_vpnsplit": created,
            "addresses": [str(i) for i in have], "ports": dev.ports() if present else []}, problems
