"""What `vpnsplit watch` listens to: rtnetlink and nftables events, sorted into those that
may touch what vpnsplit owns or should own, and the rest.

pyroute2 opens and binds the two multicast sockets (`IPRoute().bind(groups=...)` and
`NFTSocket().bind(groups=...)`, the same calls in 0.7 and 0.9); the watcher then reads their
file descriptors itself, non-blocking, and decodes only the few header fields that decide
relevance (as nldump does for dumps): pyroute2 decodes a whole message into objects,
~100 us each, which would be 1 s of CPU for one sweep of 10,000 foreign rules.

Relevant (foreign, i.e. not sent by the watcher's own write socket or nft batches):
  rules     a rule carrying RTPROT_VPNSPLIT removed
  routes    anything in a tunnel's table; a default route in main (the uplink: rule 32001)
  addresses a global address added or removed, except an alias being put back
  links     a tunnel's device or an alias device created, changed (down flushes routes) or removed
  nftables  a batch that touched table inet vpnsplit (`nft flush ruleset` deletes it)
"""

import errno
import os
import socket
import struct
from typing import NamedTuple

from vpnsplit.nldump import attributes
from vpnsplit.plan import MAIN_TABLE, RTPROT_VPNSPLIT

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_DELRULE = 16, 17, 20, 21, 24, 25, 33
# RTMGRP_LINK | IPV4_IFADDR | IPV4_ROUTE | IPV4_RULE | IPV6_IFADDR | IPV6_ROUTE | (1 << RTNLGRP_IPV6_RULE - 1)
RT_GROUPS = 0x1 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 1 << 18
NFNLGRP_NFTABLES = 7
NFT_SUBSYS, NFT_MSG_NEWGEN, NFT_GEN_PROC_PID, NFT_GEN_PROC_NAME = 10, 15, 2, 3
NFPROTO_INET, NFT_TABLE = 1, "vpnsplit"
IFLA_IFNAME, IFA_ADDRESS, IFA_LOCAL, RTA_TABLE, FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL = 3, 1, 2, 15, 6, 15, 21
_HDR = struct.Struct("=IHHII")
_U32, _BE32 = struct.Struct("=I"), struct.Struct("!I")
LIFE = {RTM_NEWLINK: "changed", RTM_DELLINK: "removed", RTM_NEWADDR: "added", RTM_DELADDR: "removed",
        RTM_NEWROUTE: "added/changed", RTM_DELROUTE: "removed", RTM_DELRULE: "removed"}


class Event(NamedTuple):
    """One foreign change that may concern vpnsplit: *what* names the object, *by* the program
    (a netlink port, usually the sender's pid, or the name an nft batch carries)."""

    what: str
    by: str = ""


OVERFLOW = Event("netlink socket overflowed (ENOBUFS): events were lost")


class Scope(NamedTuple):
    """What the configured tunnels make relevant: their tables, devices and alias addresses."""

    tables: frozenset
    devices: frozenset
    aliases: frozenset

    @classmethod
    def of(cls, tunnels):
        ts = list(tunnels.values())
        return cls(frozenset(t.table for t in ts), frozenset(d for t in ts for d in (t.device, t.alias_dev)),
                   frozenset(a.packed for t in ts for a in (t.alias, t.alias6) if a is not None))


class Listener:
    """The two subscribed sockets. `drain(fd)` reads everything queued on one of them."""

    def __init__(self):
        from pyroute2 import IPRoute
        from pyroute2.netlink.nfnetlink.nftsocket import NFTSocket

        self._rt, self._nft = IPRoute(), NFTSocket()
        self._rt.bind(groups=RT_GROUPS)
        self._nft.bind(groups=1 << (NFNLGRP_NFTABLES - 1))
        self.fds = (self._rt.fileno(), self._nft.fileno())
        for fd in self.fds:
            os.set_blocking(fd, False)
        self._batch = []  # the relevant messages of the nft batch being received, until its NEWGEN

    def close(self):
        self._rt.close()
        self._nft.close()

    def drain(self, fd, scope, own_ports, most=4096):
        """The relevant foreign events queued on *fd* (OVERFLOW among them if the kernel dropped some),
        from at most *most* datagrams: in an endless storm the caller still gets to converge.

        *own_ports*: the netlink ports the watcher writes through (rtnetlink notifications
        carry the requester's port); nft batches are told by the pid their NEWGEN names."""
        out = []
        for _ in range(most):
            try:
                buf = os.read(fd, 1 << 16)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                out.append(OVERFLOW)
                continue
            off = 0
            while off + _HDR.size <= len(buf):
                length, mtype, _, _, port = _HDR.unpack_from(buf, off)
                if length < _HDR.size:
                    break
                end = min(off + length, len(buf))
                if fd == self.fds[1]:
                    out += self._nft_message(mtype, buf, off, end)
                elif port not in own_ports:
                    what = _rt_message(mtype, buf, off + _HDR.size, end, scope)
                    if what:
                        out.append(Event(what, f"netlink port {port}" if port else "the kernel"))
                off += (length + 3) & ~3
        return out

    def _nft_message(self, mtype, buf, off, end):
        if mtype >> 8 != NFT_SUBSYS:
            return []
        attrs = attributes(buf, off + _HDR.size + 4, end)
        if mtype & 0xFF != NFT_MSG_NEWGEN:
            # every nft object message names its table in attribute 1
            if buf[off + _HDR.size] == NFPROTO_INET and attrs.get(1, b"").rstrip(b"\0") == NFT_TABLE.encode():
                self._batch.append(mtype & 0xFF)
            return []
        touched, self._batch = self._batch, []
        pid = _BE32.unpack(attrs[NFT_GEN_PROC_PID])[0] if NFT_GEN_PROC_PID in attrs else 0
        if not touched or pid == os.getpid():
            return []
        name = attrs.get(NFT_GEN_PROC_NAME, b"").rstrip(b"\0").decode(errors="replace")
        return [Event(f"nft table inet {NFT_TABLE} changed ({len(touched)} object(s))", f"{name or 'pid'}[{pid}]")]


def _rt_message(mtype, buf, pos, end, scope):
    """A description of rtnetlink message *mtype* at *pos* if it is relevant, else None."""
    life = LIFE.get(mtype)
    if life is None:
        return None
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        name = attributes(buf, pos + 16, end).get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
        return f"device {name} {life}" if name in scope.devices else None
    if mtype in (RTM_NEWADDR, RTM_DELADDR):
        family, prefixlen, _, addr_scope, index = struct.unpack_from("=BBBBI", buf, pos)
        attrs = attributes(buf, pos + 8, end)
        addr = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS, b"")
        if addr_scope != 0 or (mtype == RTM_NEWADDR and addr in scope.aliases):
            return None
        return f"address {_ntop(family, addr)}/{prefixlen} on {_ifname(index)} {life}"
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
        family, dst_len, _, _, table = buf[pos:pos + 5]
        table = _u32(attributes(buf, pos + 12, end), RTA_TABLE, table)
        if table in scope.tables or (table == MAIN_TABLE and dst_len == 0):
            return f"IPv{4 if family == socket.AF_INET else 6} route {life} in table {table}"
        return None
    attrs = attributes(buf, pos + 12, end)
    if attrs.get(FRA_PROTOCOL) != bytes([RTPROT_VPNSPLIT]):
        return None
    return f"rule priority {_u32(attrs, FRA_PRIORITY, 0)} lookup {_u32(attrs, FRA_TABLE, buf[pos + 4])} {life}"


def _u32(attrs, key, default):
    return _U32.unpack(attrs[key])[0] if len(attrs.get(key, b"")) == 4 else default


def _ntop(family, packed):
    try:
        return socket.inet_ntop(family, packed)
    except (ValueError, OSError):
        return "?"


def _ifname(index):
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"device #{index}"


def own_port(ipr):
    """The netlink port of pyroute2 socket *ipr* (its fd's address), the sender every
    notification of its writes names; None until its first request bound it (0 is the kernel)."""
    with socket.socket(fileno=os.dup(ipr.fileno())) as s:
        return s.getsockname()[0] or None


def program(by):
    """*by* with the program's name when it is a netlink port that is also a live pid (iproute2
    and most programs bind their first socket to their pid)."""
    if by.startswith("netlink port "):
        try:
            with open(f"/proc/{int(by.split()[-1])}/comm") as f:
                return f"{by} ({f.read().strip()})"
        except (OSError, ValueError):
            pass
    return by
