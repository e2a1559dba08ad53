"""Issue 12: DNS follows the traffic, with real resolvers (dnsmasq) and a real OpenVPN 2.6.

Three dual-stack resolvers count their queries (tests/lab/resolvers.py): the tunnel's (192.0.2.53, behind
the VPN server, outside the tunnel's subnet), the home router's on the LAN (198.51.100.53,
on-link) and the ISP's (203.0.113.53). Each answers with an address of its own, so the answer
says who gave it, and each logs the source of every query (through the tunnel: the tunnel's
address of the query's family, SNAT-ed). Every check asks over IPv4 and IPv6: libc (getent), dig over
UDP and TCP to the LAN's and the ISP's resolver (and, from the container, to the host's address).

- a container (`sources`) asks whatever resolver it was given: the tunnel's answers, through the
  tunnel, 0 queries at the others; with the client stopped (strict) its lookups fail within
  1 s and no resolver sees a query. Resolvers pushed by OpenVPN (`dhcp-option DNS`, no `dns`
  key) and from the `dns` key alike.
- the default VPN, host rp_filter = 1: the host's libc lookups to the LAN's or the ISP's
  resolver are answered by the tunnel's through the tunnel, 0 at the LAN and the ISP, UDP and
  TCP; client stopped: they fail within 1 s, 0 queries anywhere; client back: answered again;
  `vpnsplit default --off`: rules, routes and nft ruleset byte for byte what they were.

Run one alone:  .venv/bin/python -m pytest tests/test_lab_dns.py -k default -v
"""

import json

import pytest

from tests.lab.fixtures import lab, pki  # noqa: F401  (pytest fixtures)
from tests.lab.netns import CONTAINER_GW, CONTAINER_NET, CONTAINER_NET6
from tests.lab.resolvers import (
    ISP_RESOLVER,
    ISP_RESOLVER6,
    LAN_RESOLVER,
    LAN_RESOLVER6,
    RESOLVERS,
    TUNNEL_RESOLVER,
    TUNNEL_RESOLVER6,
    ResolvConf,
    lookup,
    start_all,
)
from tests.test_lab_default import host_dump

pytestmark = pytest.mark.lab

ADDR, ADDR6 = "10.8.0.50", "fd00:8::50"  # pinned (ccd): the tunnel's addresses, the sources the tunnel's resolver must see
ANSWER = {name: spec[4] for name, spec in RESOLVERS.items()}
# every way to ask: libc, dig over UDP and TCP, to the LAN's and the ISP's resolver over both families
ASKS = [("getent", None, False), ("dig", LAN_RESOLVER, True), ("dig", ISP_RESOLVER, False),
        ("dig", LAN_RESOLVER6, False), ("dig", ISP_RESOLVER6, True)]
FAST = 1.0  # seconds: a lookup refused by the strict kill switch fails at once, not by timeout


@pytest.fixture
def dnslab(lab):  # noqa: F811
    conf = ResolvConf(lab)
    try:
        yield lab, start_all(lab), conf
    finally:
        conf.remove()


def counts(resolvers):
    return {name: r.count() for name, r in resolvers.items()}


def connect(net, pushed, **section):
    """The tunnel 'provider' over OpenVPN; its resolver pushed by the server or in the dns key."""
    if not pushed:
        section["dns"] = [TUNNEL_RESOLVER, TUNNEL_RESOLVER6]
    net.write_vpnsplit_config(provider=dict(device="tun0", table=100, priority=1000, **section))
    push = [f"dhcp-option DNS {TUNNEL_RESOLVER}", f"dhcp-option DNS6 {TUNNEL_RESOLVER6}"] if pushed else []
    net.openvpn_server("subnet", address=ADDR, ipv6=True, address6=ADDR6, push=push)
    client = net.openvpn_client("client.conf")
    report = json.loads(net.vpnsplit("status", "provider", "--json").stdout)["tunnels"][0]
    assert (report["dns"], report["dns_from"]) == ([TUNNEL_RESOLVER, TUNNEL_RESOLVER6], "vpn" if pushed else "config"), report
    return client


def answered_through_the_tunnel(net, resolvers, role, asks):
    """Every (tool, server, tcp) in *asks* from *role* gets the tunnel resolver's answer; the LAN's and
    the ISP's resolvers see nothing, the tunnel's only the tunnel address."""
    lan, isp = resolvers["lan"].count(), resolvers["isp"].count()
    for tool, server, tcp in asks:
        answer, _ = lookup(net, role, tool, server, tcp)
        assert answer == ANSWER["tunnel"], f"{tool} @{server} tcp={tcp} from {role}: {answer}\n{net.diagnostics()}"
    assert (resolvers["lan"].count() - lan, resolvers["isp"].count() - isp) == (0, 0), "queries leaked to the LAN/ISP resolvers"
    assert {src for _, src in resolvers["tunnel"].queries()} == {ADDR, ADDR6}, resolvers["tunnel"].queries()


def refused_at_once(net, resolvers, role, asks):
    """Every lookup in *asks* fails within FAST seconds and no resolver sees a query."""
    before = counts(resolvers)
    for tool, server, tcp in asks:
        answer, took = lookup(net, role, tool, server, tcp)
        assert answer is None and took < FAST, f"{tool} @{server} tcp={tcp} from {role}: {answer} after {took:.2f}s"
    assert counts(resolvers) == before, f"queries left with the tunnel down: {before} -> {counts(resolvers)}"


@pytest.mark.parametrize("pushed", [True, False], ids=["pushed", "dns-key"])
def test_container_dns_goes_through_its_tunnel(dnslab, pushed):
    net, resolvers, conf = dnslab
    net.add_container()
    client = connect(net, pushed, sources=[CONTAINER_NET, CONTAINER_NET6])
    conf.point("ctr", LAN_RESOLVER)
    asks = [*ASKS, ("dig", CONTAINER_GW, False)]
    answered_through_the_tunnel(net, resolvers, "ctr", asks)
    client.stop()
    refused_at_once(net, resolvers, "ctr", asks)


def test_default_vpn_sends_the_hosts_dns_through_the_tunnel(dnslab):
    net, resolvers, conf = dnslab
    net.sysctl("host", "net.ipv4.conf.all.rp_filter", "1")  # the reply's reverse-path check must pass
    client = connect(net, pushed=True)
    conf.point("host", LAN_RESOLVER)
    # control: without the default VPN the host asks its LAN resolver, which answers
    assert lookup(net, "host")[0] == ANSWER["lan"] and resolvers["lan"].count() == 1
    before = host_dump(net, "tun0")

    net.vpnsplit("default", "provider")
    asks = [*ASKS, ("dig", ISP_RESOLVER, True)]
    answered_through_the_tunnel(net, resolvers, "host", asks)
    conf.point("host", ISP_RESOLVER)
    answered_through_the_tunnel(net, resolvers, "host", asks[:1])

    client.stop()
    refused_at_once(net, resolvers, "host", asks)

    client.start()
    answered_through_the_tunnel(net, resolvers, "host", asks)
    assert net.vpnsplit("check", check=False).returncode == 0, net.vpnsplit("status", check=False).stdout

    net.vpnsplit("default", "--off")
    after = host_dump(net, "tun0")
    assert after == before, "\n".join(f"--- {k} before\n{before[k]}--- after\n{after[k]}" for k in before if before[k] != after[k])
    lan = resolvers["lan"].count()
    conf.point("host", LAN_RESOLVER)
    assert lookup(net, "host")[0] == ANSWER["lan"] and resolvers["lan"].count() == lan + 1
