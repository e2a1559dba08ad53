"""Fast read-only netlink dumps, for kernels that hold many rules and routes vpnsplit does not own,
and for runs that only read.

pyroute2 decodes every message of a dump into an object, ~100-150 us each: 1.6 s for a
namespace with 10,000 foreign rules, ~0.1 s per table for one with 100 tunnels' routes,
though vpnsplit wants only its own handful. These two dumps read the same messages on a
plain netlink socket and decode only what is asked for:

* rules: the kernel cannot filter a rule dump (it refuses selectors), so every rule
  crosses the socket; only those carrying FRA_PROTOCOL == proto are decoded (found with
  one bytes search per message): ~10 ms for 10,000 rules.
* routes of one table: with NETLINK_GET_STRICT_CHK the kernel filters by RTA_TABLE
  itself (Linux >= 4.20), so only that table's routes cross; the filter is applied here
  too, for kernels without strict checking.
* addresses: every address, a few fields each. With these three a run that finds
  everything in place (a no-op re-run, `up --all` re-applied) reads the kernel without
  importing pyroute2 at all (~0.15 s of CPU, most of a hook run).

Read-only: every change goes through pyroute2.
"""

import errno
import os
import socket
import struct

NETLINK_ROUTE, SOL_NETLINK, NETLINK_GET_STRICT_CHK = 0, 270, 12
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_GETROUTE, RTM_NEWRULE, RTM_GETRULE = 20, 22, 24, 26, 32, 34
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_FWMARK, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 1, 2, 6, 10, 14, 15, 16, 21
FRA_IIFNAME, FRA_IP_PROTO, FRA_DPORT_RANGE = 3, 22, 24
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 2, 3, 4, 5, 6, 15
# rtm_flags of a route get: report the table the lookup used (else the kernel says main)
RTM_F_LOOKUP_TABLE = 0x1000
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLA_TYPE_MASK = 0x3FFF

_HDR = struct.Struct("=IHHII")  # struct nlmsghdr
_FRH = struct.Struct("=BBBBBBBBI")  # struct fib_rule_hdr
_RTM = struct.Struct("=BBBBBBBBI")  # struct rtmsg: family dst_len src_len tos table protocol scope type flags
_IFA = struct.Struct("=BBBBI")  # struct ifaddrmsg: family prefixlen flags scope index
_NLA = struct.Struct("=HH")  # struct nlattr
_U32 = struct.Struct("=I")
_PORTS = struct.Struct("=HH")  # struct fib_rule_port_range


def rules(family, proto):
    """Every rule of *family* (socket.AF_INET/AF_INET6) whose protocol is *proto*, as
    (priority, table, src or None, src_len, dst or None, dst_len, suppress_prefixlen or None,
    fwmark or None, fwmask or None, iifname or None, ip_proto or None, "START:END" dport range or None)
    in dump order.

    priority is 0 when the kernel leaves FRA_PRIORITY out (it does for priority 0), and
    table None when it leaves out FRA_TABLE, as pyroute2's get_attr would give; a rule
    without fwmark has neither FRA_FWMARK nor FRA_FWMASK.
    """
    needle = _NLA.pack(5, FRA_PROTOCOL) + bytes([proto])
    out = []
    for buf, off, end in _dump(RTM_GETRULE, _FRH.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        if buf.find(needle, off + _HDR.size + _FRH.size, end) == -1:
            continue
        attrs = attributes(buf, off + _HDR.size + _FRH.size, end)
        if attrs.get(FRA_PROTOCOL) != bytes([proto]):
            continue  # the needle was inside another attribute's payload
        fam, dst_len, src_len = buf[off + 16], buf[off + 17], buf[off + 18]
        suppress = _u32(attrs, FRA_SUPPRESS_PREFIXLEN)
        suppress = None if suppress == 0xFFFFFFFF else suppress
        iif, proto_, ports = attrs.get(FRA_IIFNAME), attrs.get(FRA_IP_PROTO), attrs.get(FRA_DPORT_RANGE)
        out.append((_u32(attrs, FRA_PRIORITY) or 0, _u32(attrs, FRA_TABLE), _addr(fam, attrs, FRA_SRC), src_len, _addr(fam, attrs, FRA_DST), dst_len, suppress,
                    _u32(attrs, FRA_FWMARK), _u32(attrs, FRA_FWMASK), iif.rstrip(b"\0").decode() if iif else None,
                    proto_[0] if proto_ else None, "%d:%d" % _PORTS.unpack_from(ports) if ports else None))
    return out


def routes(family, table):
    """Every route of *family* in *table*, as (dst or None, dst_len, protocol, type, oif or
    None, gateway or None, priority or None) in dump order (None: attribute absent)."""
    out = []
    body = _RTM.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) + _NLA.pack(8, RTA_TABLE) + _U32.pack(table)
    try:
        for buf, off, end in _dump(RTM_GETROUTE, body, strict=True):
            fam, dst_len, _, _, _, proto, _, rtype = _RTM.unpack_from(buf, off + _HDR.size)[:8]
            attrs = attributes(buf, off + _HDR.size + _RTM.size, end)
            if _u32(attrs, RTA_TABLE) != table:
                continue
            out.append((_addr(fam, attrs, RTA_DST), dst_len, proto, rtype, _u32(attrs, RTA_OIF), _addr(fam, attrs, RTA_GATEWAY), _u32(attrs, RTA_PRIORITY)))
    except FileNotFoundError:  # a filtered IPv4 dump of a table that does not exist (yet)
        return []
    return out


def route_table(family, dst, src, iif=None):
    """The table the kernel's lookup of *dst* from *src* (as if arriving on device index *iif*)
    takes: `ip route get DST from SRC [iif DEV]`'s table. None if the lookup fails (unreachable,
    or a source the reverse-path check refuses)."""
    size = 4 if family == socket.AF_INET else 16
    body = _RTM.pack(family, 8 * size, 8 * size, 0, 0, 0, 0, 0, RTM_F_LOOKUP_TABLE)
    for attr, addr in ((RTA_DST, dst), (RTA_SRC, src)):
        body += _NLA.pack(4 + size, attr) + socket.inet_pton(family, addr)
    if iif is not None:
        body += _NLA.pack(8, RTA_IIF) + _U32.pack(iif)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as s:
        s.bind((0, 0))
        s.sendall(_HDR.pack(_HDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, 1, 0) + body)
        buf = s.recv(1 << 16)
    mtype = _HDR.unpack_from(buf)[1]
    if mtype != RTM_NEWROUTE:
        return None  # NLMSG_ERROR: the lookup failed
    attrs = attributes(buf, _HDR.size + _RTM.size, _HDR.unpack_from(buf)[0])
    return _u32(attrs, RTA_TABLE) or _RTM.unpack_from(buf, _HDR.size)[4]


def addresses():
    """Every address of every device, as (index, family, prefixlen, scope, IFA_LOCAL or None,
    IFA_ADDRESS or None) in dump order."""
    out = []
    for buf, off, end in _dump(RTM_GETADDR, _IFA.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        fam, prefixlen, _, scope, index = _IFA.unpack_from(buf, off + _HDR.size)
        attrs = attributes(buf, off + _HDR.size + _IFA.size, end)
        out.append((index, fam, prefixlen, scope, _addr(fam, attrs, IFA_LOCAL), _addr(fam, attrs, IFA_ADDRESS)))
    return out


def _dump(msgtype, body, strict=False):
    """Yield (buffer, offset, end) of every message of one dump; raise OSError on an error reply."""
    request = _HDR.pack(_HDR.size + len(body), msgtype, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as s:
        if strict:
            try:
                s.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass  # an old kernel: it sends every table, the caller filters
        s.bind((0, 0))
        s.sendall(request)
        while True:
            buf, _, flags, _ = s.recvmsg(1 << 16)
            if flags & socket.MSG_TRUNC:
                raise OSError(errno.EMSGSIZE, "netlink dump: message truncated")
            off = 0
            while off + _HDR.size <= len(buf):
                length, mtype = _HDR.unpack_from(buf, off)[:2]
                if length < _HDR.size or off + length > len(buf):
                    raise OSError(errno.EBADMSG, "netlink dump: malformed message")
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, off + _HDR.size)[0]
                    if code:
                        raise OSError(code, f"netlink dump: {os.strerror(code)}")
                elif mtype in (RTM_NEWRULE, RTM_NEWROUTE, RTM_NEWADDR):
                    yield buf, off, off + length
                off += (length + 3) & ~3


def attributes(buf, pos, end):
    """The netlink attributes between *pos* and *end* of *buf*: {type: payload bytes}."""
    attrs = {}
    while pos + _NLA.size <= end:
        alen, atype = _NLA.unpack_from(buf, pos)
        if alen < _NLA.size:
            break
        attrs[atype & NLA_TYPE_MASK] = buf[pos + _NLA.size : pos + alen]
        pos += (alen + 3) & ~3
    return attrs


def _u32(attrs, key):
    return _U32.unpack(attrs[key])[0] if key in attrs else None


def _addr(family, attrs, key):
    return socket.inet_ntop(family, attrs[key]) if key in attrs else None
