"""What "vpnsplit works" means in packets, shared by the lab tests and the demo.

Every check is one question to a who-am-I listener ("which source address did you see?")
or one nft counter on the isp link ("how many packets of this source went the plain
way?"), with the answer vpnsplit promises. Tests assert them all; the demo prints them.
"""

import dataclasses
import time

from .netns import (
    HOST_ADDR,
    HOST_ADDR6,
    ISP_LAN,
    ISP_LAN6,
    ISP_WAN,
    ISP_WAN6,
    LAN_NEIGHBOUR,
    LAN_NEIGHBOUR6,
    TARGET,
    TARGET6,
)

PROTOS = ("tcp", "udp")


@dataclasses.dataclass(frozen=True)
class Plain:
    """One family's addresses of the host's own, untunnelled world."""

    host: str  # the host's LAN address
    neighbour: str  # the LAN neighbour
    target: str  # the internet host behind the VPN server
    unbound: str  # what an unbound socket binds to
    gateway: str  # the isp router: the host's default route
    internet: str  # the isp router's public side: connections from it come from the internet

    @property
    def everything(self):
        """The whole address space of the family, as a source an IspCounter counts."""
        return f"{self.unbound}/0"


PLAIN = {4: Plain(HOST_ADDR, LAN_NEIGHBOUR, TARGET, "0.0.0.0", ISP_LAN, ISP_WAN),
         6: Plain(HOST_ADDR6, LAN_NEIGHBOUR6, TARGET6, "::", ISP_LAN6, ISP_WAN6)}


def plain(address):
    """The Plain addresses of *address*'s family."""
    return PLAIN[6 if ":" in address else 4]


@dataclasses.dataclass
class Check:
    what: str
    expected: str
    seen: str
    passed: bool | None = None  # when "seen == expected" is not the test

    @property
    def ok(self):
        return self.seen == self.expected if self.passed is None else self.passed

    def line(self):
        mark = "ok  " if self.ok else "FAIL"
        extra = "" if self.ok else f"   (expected {self.expected})"
        return f"[{mark}] {self.what}: {self.seen}{extra}"


def start_listeners(lab):
    """Listeners on the internet host behind the VPN server and on the LAN neighbour."""
    lab.listen("vpn", [p.target for p in PLAIN.values()])
    lab.listen("lan", [p.neighbour for p in PLAIN.values()])


def seen_from(lab, src, expected, dst=None, protos=PROTOS, label=None, role="host"):
    """One Check per protocol: connecting from *src* in *role* to *dst* (default: the internet
    host of *src*'s family), the far end should see *expected*."""
    dst = dst or plain(src).target
    where = "internet host" if dst == plain(src).target else "LAN neighbour"
    return [Check(f"{proto.upper()} from {label or src} -> {where} {dst} sees", expected,
                  lab.whoami(src, dst, proto, role=role)) for proto in protos]


def tunnel_checks(lab, alias, tunnel_addr, protos=PROTOS):
    """The split: alias and tunnel address go through the tunnel (NATed to the tunnel
    address), everything else keeps the host's own path, and the isp sees none of the former.
    """
    host = plain(alias).host
    counter = lab.isp_counter([alias, tunnel_addr, host])
    checks = [
        *seen_from(lab, alias, tunnel_addr, protos=protos, label=f"alias {alias}"),
        *seen_from(lab, tunnel_addr, tunnel_addr, protos=protos, label=f"tunnel address {tunnel_addr}"),
        *lan_checks(lab, protos, host),
    ]
    counts = counter.counts()
    counter.remove()
    checks += [
        Check(f"packets from {alias} on the isp link (plain path)", "0", str(counts[alias])),
        Check(f"packets from {tunnel_addr} on the isp link (plain path)", "0", str(counts[tunnel_addr])),
        # The control: the same counter does see what takes the plain path.
        Check(f"packets from LAN address {host} on the isp link counted", "yes",
              "yes" if counts[host] > 0 else "no"),
    ]
    return checks


def lan_checks(lab, protos=PROTOS, host=HOST_ADDR):
    """Traffic vpnsplit must not touch: the host's own address (*host* says the family), to the
    internet and the LAN."""
    p = plain(host)
    return [
        *seen_from(lab, p.host, p.host, protos=protos, label=f"LAN address {p.host}"),
        *seen_from(lab, p.unbound, p.host, protos=protos, label="an unbound socket"),
        *seen_from(lab, p.host, p.host, dst=p.neighbour, protos=protos, label=f"LAN address {p.host}"),
        Check("host default route", f"default via {p.gateway} dev eth0", lab.default_route(like=p.gateway)),
    ]


def fail_closed_checks(lab, alias, protos=PROTOS):
    """Tunnel down, strict: sending from the alias fails at once and nothing leaves via the isp."""
    host = plain(alias).host
    counter = lab.isp_counter([alias, host])
    checks = []
    for proto in protos:
        start = time.monotonic()
        seen = lab.whoami(alias, plain(alias).target, proto=proto)
        took = time.monotonic() - start
        # A probe interpreter starts in ~50 ms; a timeout would take probe.TIMEOUT (3 s).
        checks.append(Check(f"{proto.upper()} from alias {alias} with the tunnel down", "an error at once (< 1.5 s)",
                            f"{seen} after {took:.2f} s", passed=seen.startswith("error") and took < 1.5))
    checks += seen_from(lab, host, host, protos=protos[:1], label=f"LAN address {host}")
    counts = counter.counts()
    counter.remove()
    checks += [
        Check(f"packets from {alias} on the isp link", "0", str(counts[alias])),
        Check(f"packets from LAN address {host} on the isp link counted", "yes",
              "yes" if counts[host] > 0 else "no"),
    ]
    return checks


def failed(checks):
    return [c for c in checks if not c.ok]


def assert_ok(found, lab):
    """Fail the test with every check and the lab's state if any check failed."""
    assert not failed(found), explain(found, lab)


def explain(checks, lab):
    """An assertion message: every check, then the host's routing state and hook logs."""
    return "\n".join([*(c.line() for c in checks), "", lab.diagnostics()])
