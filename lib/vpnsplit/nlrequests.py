"""How vpnsplit's rules, routes and addresses become pyroute2 requests, and which of the
kernel's answers mean "already so" (the idempotency of netlink.Netlink's changes).

pyroute2 is imported inside the functions: only runs that change something load it.
"""

import contextlib
import errno
import socket

from vpnsplit.plan import RTPROT_VPNSPLIT

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
IFA_F_NODAD = 0x02  # an IPv6 alias must be usable at once, not after duplicate detection


def no_device(device):
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError(errno.ENODEV, f"device {device} does not exist")


@contextlib.contextmanager
def named(device):
    """Name the device in an ENODEV: it vanished since this run looked its index up."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as e:
        if e.code == errno.ENODEV and device:
            raise no_device(device) from None
        raise


def tolerate(call, cmd, codes, **spec):
    """call(cmd, **spec): True if it changed the kernel, False if the kernel answered one of
    the error *codes* that mean it already was that way."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        call(cmd, **spec)
    except NetlinkError as e:
        if e.code in codes:
            return False
        raise
    return True


def rule_spec(rule):
    """Every selector of *rule*, so that a delete never hits a foreign rule."""
    addr, _, length = rule.src.partition("/")
    spec = dict(family=AF[rule.family], table=rule.table, priority=rule.priority, protocol=RTPROT_VPNSPLIT)
    if int(length):
        spec.update(src=addr, src_len=int(length))
    if rule.suppress >= 0:
        spec["suppress_prefixlen"] = rule.suppress
    if rule.fwmask:
        spec.update(fwmark=rule.fwmark, fwmask=rule.fwmask)
    if rule.dst:
        dst, _, dst_len = rule.dst.partition("/")
        spec.update(dst=dst, dst_len=int(dst_len))
    if rule.iif:
        spec["iifname"] = rule.iif
    if rule.ipproto:
        spec["ip_proto"] = rule.ipproto
    if rule.dport:
        spec["dport_range"] = f"{rule.dport}:{rule.dport}"
    return spec


def route_spec(route, oif):
    """*route* through device index *oif* (None: no device, the strict unreachable)."""
    spec = dict(family=AF[route.family], dst=route.dst, table=route.table, proto=RTPROT_VPNSPLIT, type=route.type, priority=route.metric)
    if oif is not None:
        spec["oif"] = oif
    if route.gateway:
        spec["gateway"] = route.gateway
    return spec


def addr_spec(address, index):
    """The alias *address* on device *index*: a host address (/32, /128), IPv6 without DAD."""
    spec = dict(index=index, family=AF[address.family], address=address.address, prefixlen=32 if address.family == 4 else 128)
    if address.family == 6:
        spec["flags"] = IFA_F_NODAD
    return spec
