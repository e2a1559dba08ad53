"""Sockets bound to an alias vpnsplit retired: closed with inet_diag SOCK_DESTROY, so none keeps sending.

An alias leaves for good when a config edit changes `alias`/`alias6`, or its section is removed. IPv6
checks a socket's bound source only at bind time: a socket bound before keeps sending from the old
alias once no device holds it, and with the alias no longer vpnsplit's its rules are gone as well, so
those packets take the main table, the uplink, in the clear. (IPv4 refuses such sends with EINVAL, but
a TCP peer is never told.) So right after a retired alias leaves its device, and before its rules and
NAT go, every TCP and UDP socket of either family bound to it is destroyed, as Android's netd does when
an address goes: TCP is reset (the application gets ECONNABORTED, the peer a RST); UDP gets
ECONNABORTED once and loses its peer, so a connected socket can no longer send. But the kernel keeps
a UDP socket's explicit bind (picking a new port): an unconnected one that sendto()s on, or one that
connects again, sends from the old alias again, and so does a raw or ping socket (`ping -I`), which
cannot be destroyed. So the unconnected UDP sockets of an alias retire.py keeps confined (its packets
dropped by the backstop while any datagram socket is bound to it) are *spared*: left bound and hashed,
where /proc/net lists them (a destroyed one is not, until it sends again); a connected one is still
destroyed (one whose source was chosen by the route rather than bound loses it, so a reconnect picks
another). Those left are named in a warning (their processes), with the fix: restart the service.

Destroy needs CONFIG_INET_DIAG_DESTROY (Debian 12's and 13's kernels set it; inet_diag is a module
they load on first use); without it the kernel answers EOPNOTSUPP and one warning names the fallback.
Idempotency: closing what is already closed finds nothing; a socket gone meanwhile answers ENOENT.
"""

import errno
import ipaddress
import logging
import os
import socket
import struct

from vpnsplit import nldump

log = logging.getLogger("vpnsplit")
SOCK_DESTROY = 21
PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_NLMSG_ERROR = 2


def retired(left, desired, keep):
    """The addresses to close sockets on: the aliases among *left* (what a run removes: its Address
    objects, its rules' one-address sources) that *desired* still uses nowhere and that are not in
    *keep* (every configured alias, the leases' tunnel addresses: a reconnect is no retirement)."""

    def hosts(state):
        out = {ipaddress.ip_address(a.address) for a in state.addresses}
        for rule in state.rules:
            net = ipaddress.ip_network(rule.src, strict=False)
            if net.prefixlen == net.max_prefixlen:
                out.add(net.network_address)
        return out

    return sorted(hosts(left) - hosts(desired) - set(keep), key=lambda a: (a.version, a))


def close_bound(addresses, spare=()):
    """Destroy every TCP and UDP socket bound to one of *addresses* that no device holds (now, after
    the run removed them), but the unconnected UDP sockets of those in *spare* (kept confined: retire.py).
    Returns True when it closed any; logs one line per address it closed on."""
    held = held_addresses()
    gone = [a for a in addresses if a not in held]
    if not gone:
        return False
    from pyroute2.netlink.diag import DiagSocket

    with DiagSocket() as diag:
        diag.bind()
        found = {a: _bound(diag, a) for a in gone}
        doomed = {a: [(p, m) for p, m in found[a] if not (a in spare and p == socket.IPPROTO_UDP and not m["idiag_dport"])]
                  for a in gone}
        closed = {a: _close(diag, doomed[a]) for a in gone}
    for address, count in closed.items():
        if count is None:
            log.warning("cannot close the sockets bound to the retired alias %s: this kernel has no socket destroy "
                        "(CONFIG_INET_DIAG_DESTROY); restart the services bound to it, or IPv6 ones keep sending "
                        "from it through the uplink", address)
            continue
        if count:
            log.info("closed %d socket(s) bound to the retired alias %s", count, address)
        udp = [msg for proto, msg in found[address] if proto == socket.IPPROTO_UDP]
        kept = bound({address}).get(address) if address in spare else None
        if kept:
            log.warning("%d socket(s) are bound to the retired alias %s (%s): kept confined, their packets are dropped "
                        "until they close (the next run after that removes it); restart the service holding them",
                        len(kept), address, owners(kept))
        # a destroyed UDP socket is unhashed until it sends again, so a dump cannot tell which rebound: name them all
        elif udp and address.version == 6:  # IPv4 refuses to send from an address no device holds
            log.warning("%d UDP socket(s) were bound to the retired alias %s (%s): the kernel keeps an explicit bind, "
                        "so one that sends on without a new connect (sendto) sends from it, by the uplink; "
                        "restart the service holding them", len(udp), address, owners({m["idiag_inode"] for m in udp}))
    return any(closed.values())


# the datagram sockets' tables, by IP version: UDP, raw (ping -I as root), ping sockets
_TABLES = {4: ("udp", "raw", "icmp"), 6: ("udp6", "raw6", "icmp6")}


def bound(addresses):
    """{address: {socket inode, ...}} of the *addresses* that datagram sockets (UDP, raw, ping) are bound to, as
    this namespace's /proc/net lists them (a kernel's raw socket diag is often not built; ping sockets have none)."""
    out = {}
    for version in sorted({a.version for a in addresses}):
        for table in _TABLES[version]:
            with open(f"/proc/net/{table}") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    local = _listed(fields[1].partition(":")[0])
                    if local in addresses:
                        out.setdefault(local, set()).add(int(fields[9]))
    return out


def _listed(hexed):
    """An address as /proc/net lists it: 32-bit words in host byte order."""
    return ipaddress.ip_address(b"".join(struct.pack("=I", int(hexed[i:i + 8], 16)) for i in range(0, len(hexed), 8)))


def held_addresses():
    """Every address a device of this namespace holds."""
    return {ipaddress.ip_address(local or addr) for _index, _fam, _len, _scope, local, addr in nldump.addresses()}


def _bound(diag, address):
    """The sockets bound to *address*: (protocol number, inet_diag message) of each, TCP and UDP."""
    out = []
    for proto in PROTOCOLS.values():
        for msg in diag.get_sock_stats(family=FAMILY[address.version], protocol=proto):
            if msg.get("idiag_src") and ipaddress.ip_address(msg["idiag_src"]) == address:
                out.append((proto, msg))
    return out


def _close(diag, bound):
    """Destroy the sockets *bound* (_bound's): how many went, or None when the kernel cannot destroy."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.diag import inet_diag_req

    count = 0
    for proto, msg in bound:
        req = inet_diag_req()
        req["sdiag_family"], req["sdiag_protocol"], req["idiag_states"] = msg["idiag_family"], proto, 0xFFFFFFFF
        for field in ("idiag_sport", "idiag_dport", "idiag_if", "idiag_cookie"):
            req[field] = msg[field]
        for field in ("idiag_src", "idiag_dst"):
            req[field] = _words(ipaddress.ip_address(msg[field]))
        code = _answer(diag.nlm_request(req, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK))
        if code == errno.EOPNOTSUPP:
            return None
        if code not in (0, errno.ENOENT):  # ENOENT: closed meanwhile
            raise OSError(code, f"destroying a {msg['idiag_src']} socket: {os.strerror(code)}")
        count += code == 0
    return count


def _words(address):
    """*address* as inet_diag's four big-endian words (an IPv4 address in the first)."""
    return struct.unpack(">4I", address.packed.ljust(16, b"\0"))


def _answer(replies):
    """The errno of the kernel's answer to a SOCK_DESTROY (0: done). pyroute2's sock_diag marshal does
    not read NLMSG_ERROR (in 0.7 and 0.9 alike), so the code is read off the raw message."""
    for msg in replies:
        if msg["header"]["type"] == _NLMSG_ERROR:
            return -struct.unpack_from("=i", msg.data, msg.offset + 16)[0]
    return 0


def owners(inodes):
    """"pid 123 (name)" of the processes holding the sockets of *inodes* (found in /proc), or their inodes."""
    inodes = {f"socket:[{inode}]" for inode in inodes}
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                with open(f"/proc/{pid}/comm") as f:
                    found.add(f"pid {pid} ({f.read().strip()})")
        except OSError:
            continue
    return ", ".join(sorted(found)) or "inodes " + ", ".join(sorted(inodes))
