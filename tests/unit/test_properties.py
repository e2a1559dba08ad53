"""Property-based tests (hypothesis) over the parsers and the planner (issue 4).

Parsers: whatever text OpenVPN, wg-quick, a config file or a state file hands them, they
either return a value that satisfies their contract or raise InputError, never anything
else (which would reach the user as an "internal error"). Planner: for any valid tunnel
and lease, vpnsplit plans only its own objects (rules at P/P+1 into table T from the
tunnel address or alias, routes only in T), strict fail-closed objects survive from up to
down, and diff() is exact.
"""

import ipaddress
import os
import tempfile

from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from vpnsplit import addresses, config, openvpn, plan, state
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease

settings.register_profile("vpnsplit", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vpnsplit")

# -- strategies: text that looks like what the parsers see, and plain garbage -------------------

PLAUSIBLE = [
    "tun0", "tap0", "wg0", "1500", "0", "init", "restart", "10.8.0.2", "10.8.0.1", "255.255.255.0", "255.255.255.252",
    "fd00:8::1000", "64", "--tunnel", "--config", "--tunnel=p", "p", "", "tun", "tap", "fe80::1%eth0", "::ffff:1.2.3.4",
    "0.0.0.0", "127.0.0.1", "224.0.0.1", "10.8.0.255", "tun0;id", "a" * 16,
]
token = st.one_of(st.sampled_from(PLAUSIBLE), st.text(max_size=20), st.from_regex(r"[0-9.:a-f%/]{0,20}", fullmatch=True))
ENV_KEYS = ["dev", "dev_type", "ifconfig_local", "ifconfig_remote", "ifconfig_netmask", "ifconfig_ipv6_local",
            "ifconfig_ipv6_netbits", "ifconfig_ipv6_remote", "route_vpn_gateway", "script_context", "script_type"]
env_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)  # os.environ holds no lone surrogates... mostly
environment = st.dictionaries(st.sampled_from(ENV_KEYS), st.one_of(st.sampled_from(PLAUSIBLE), st.text(max_size=20)), max_size=8)

toml_scalar = st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.floats(allow_nan=True), st.text(max_size=20),
                        st.sampled_from(PLAUSIBLE), st.none())
toml_value = st.recursive(toml_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
SECTION_KEYS = ["device", "table", "priority", "alias", "alias6", "alias_device", "strict", "gateway", "gateway6", "bogus"]
section = st.dictionaries(st.sampled_from(SECTION_KEYS), toml_value, max_size=9)
good_section = st.fixed_dictionaries({"device": st.just("tun0"), "table": st.just(100), "priority": st.just(1000)})
config_doc = st.one_of(
    toml_value,
    st.dictionaries(st.sampled_from(["tunnel", "global"]), toml_value, max_size=2),
    st.fixed_dictionaries({"tunnel": st.dictionaries(st.one_of(st.sampled_from(["p", "q", "a b", "-x"]), st.text(max_size=5)),
                                                     st.one_of(section, good_section, toml_value), max_size=3)}),
)

NO_CHANGE = plan.Diff(plan.State(), plan.State())


# -- the parsers raise InputError and nothing else ---------------------------------------------

@given(argv=st.lists(token, max_size=9), env=environment, want_lease=st.booleans())
def test_openvpn_parse_raises_only_input_error(argv, env, want_lease):
    try:
        call = openvpn.parse(argv, env, want_lease=want_lease)
    except InputError as e:
        assert len(str(e).splitlines()) == 1
        return
    addresses.ifname(call.device, "device")  # whatever it accepts is a valid name
    if want_lease:
        assert call.lease.locals, "a lease always carries an address"
        for local in call.lease.locals:
            assert addresses.host_address(str(local.ip), "re-check") == local.ip
            assert local.ip not in (local.network.network_address,) or local.network.num_addresses <= 2


@given(argv=st.lists(token, max_size=9), env=environment)
def test_openvpn_parse_with_six_args_always_names_or_accepts(argv, env):
    """OpenVPN's six arguments at the end, with anything in them."""
    six = argv[:5] + ["init"]
    try:
        openvpn.parse(six, env)
    except InputError:
        pass


@given(value=st.one_of(st.text(max_size=40), st.sampled_from(PLAUSIBLE), st.integers(), st.none()), version=st.sampled_from([None, 4, 6]))
def test_host_address_raises_only_input_error(value, version):
    try:
        addr = addresses.host_address(value, "x", version)
    except InputError:
        return
    assert getattr(addr, "scope_id", None) is None and not (addr.is_loopback or addr.is_multicast or addr.is_unspecified)
    assert version in (None, addr.version)


@given(value=st.one_of(st.text(max_size=20), st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", fullmatch=True)))
def test_netmask_prefix_accepts_only_dotted_netmasks(value):
    try:
        prefix = addresses.netmask_prefix(value, "x")
    except InputError:
        return
    assert 1 <= prefix <= 32 and str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask) == value


@given(prefix=st.integers(1, 32))
def test_every_netmask_round_trips(prefix):
    assert addresses.netmask_prefix(str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask), "x") == prefix


@given(value=st.one_of(st.text(max_size=20), st.integers(), st.none()))
def test_ifname_raises_only_input_error(value):
    try:
        name = addresses.ifname(value, "x")
    except InputError:
        return
    assert 1 <= len(name) <= 15 and name.isascii() and not set(name) & set(" /;:$`'\"\n\t\\*%")


@given(doc=config_doc)
def test_config_parse_raises_only_input_error(doc):
    try:
        cfg = config.parse(doc)
    except InputError as e:
        assert len(str(e).splitlines()) == 1, str(e)
        return
    _check_config_invariants(cfg)


def _check_config_invariants(cfg):
    seen = {}
    for t in cfg.tunnels.values():
        assert t.table not in config.RESERVED_TABLES and 0 < t.table < 2**32
        assert all(1 <= p <= 32765 for p in t.priorities)
        claims = [("device", t.device), ("table", t.table)] + [("prio", p) for p in t.priorities]
        claims += [("alias", a) for a in (t.alias, t.alias6) if a]
        for claim in claims:
            assert seen.setdefault(claim, t.name) == t.name, claim


@given(data=st.one_of(toml_value, st.dictionaries(st.sampled_from(["device", "dev_type", "local4", "gateway4", "local6", "gateway6"]),
                                                  st.one_of(toml_scalar, st.sampled_from(["10.8.0.2/24", "fd00::1/64", "tun0", "tap"])))))
def test_lease_from_json_raises_only_input_error(data):
    try:
        lease = Lease.from_json(data, "state file")
    except InputError:
        return
    assert lease.dev_type in ("tun", "tap") and isinstance(lease.device, str)


@settings(max_examples=150)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.sampled_from([b"", b"{", b"[]", b"null", b'{"lease": 5}', b'{"lease": {"device": "tun0"}}',
                                      b'{"lease": {"device": "tun0", "dev_type": "tun", "local4": "10.8.0.999/24"}}'])))
def test_a_damaged_state_file_gives_input_error_or_a_lease(raw):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "p.json"), "wb") as f:
            f.write(raw)
        statedir = state.StateDir(d)
        record = statedir.record("p")
        if record.damage:
            assert "state file" in record.damage and len(record.damage.splitlines()) == 1
            assert record.lease is None
            return
        assert record.lease is None or isinstance(record.lease, Lease)


# -- valid tunnels and leases ----------------------------------------------------------------------

@st.composite
def interfaces(draw, version):
    """A host address with its prefix, never the network or broadcast address."""
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(8 if version == 4 else 48, bits))
    base = ipaddress.ip_network("10.0.0.0/8" if version == 4 else "fd00::/8")
    net = ipaddress.ip_network((int(base.network_address) | draw(st.integers(0, 2 ** (bits - 8) - 1)) >> (bits - prefix) << (bits - prefix), prefix))
    lo, hi = (1, net.num_addresses - 2) if net.num_addresses > 2 else (0, net.num_addresses - 1)
    return ipaddress.ip_interface(f"{net.network_address + draw(st.integers(lo, hi))}/{prefix}")


@st.composite
def tunnels(draw):
    section = {
        "device": "tun0",
        "table": draw(st.one_of(st.integers(1, 252), st.integers(256, 2**32 - 1))),
        "priority": draw(st.integers(config.PRIORITY_MIN, config.PRIORITY_MAX)),
        "strict": draw(st.booleans()),
    }
    if draw(st.booleans()):
        section["alias"] = str(ipaddress.IPv4Address("10.192.0.0") + draw(st.integers(1, 65534)))
    if draw(st.booleans()):
        section["alias6"] = str(ipaddress.IPv6Address("fd10::") + draw(st.integers(1, 2**32)))
    if draw(st.booleans()):
        section["alias_device"] = draw(st.sampled_from(["lo", "tun0", "dummy0"]))
    try:
        return config.parse({"tunnel": {"p": section}}).tunnels["p"]
    except InputError:  # a priority the config refuses for reasons of its own (e.g. OpenWrt's pbr window)
        reject()


@st.composite
def leases(draw):
    dev_type = draw(st.sampled_from(["tun", "tap"]))
    local4 = draw(st.one_of(st.none(), interfaces(4)))
    local6 = draw(st.none() if local4 is None and False else st.one_of(st.none(), interfaces(6)))
    if local4 is None and local6 is None:
        local4 = draw(interfaces(4))
    gw = {}
    if dev_type == "tap":
        for key, local in (("gateway4", local4), ("gateway6", local6)):
            if local is not None:
                candidates = [a for a in (local.network.network_address + 1, local.network.broadcast_address - 1) if a != local.ip and a in local.network]
                assume(candidates)
                gw[key] = draw(st.sampled_from(candidates))
    return Lease(device="tun0", dev_type=dev_type, local4=local4, local6=local6, **gw)


def _up(tunnel, lease):
    for local in lease.locals:
        assume(local.ip not in (tunnel.alias, tunnel.alias6))
    return plan.plan_up(tunnel, lease)


@given(tunnel=tunnels(), lease=leases())
def test_up_plans_only_rules_at_p_and_p1_into_t_from_the_tunnel_address_or_alias(tunnel, lease):
    up = _up(tunnel, lease)
    locals_ = {f"{a.ip}/{a.max_prefixlen}" for a in lease.locals}
    aliases = {f"{a}/{a.max_prefixlen}" for a in (tunnel.alias, tunnel.alias6) if a}
    for rule in up.rules:
        assert rule.table == tunnel.table
        assert (rule.priority, rule.src in locals_, rule.src in aliases) in ((tunnel.priority, True, False), (tunnel.priority + 1, False, True))
    assert locals_ <= {r.src for r in up.rules}  # every tunnel address is steered into T
    for route in up.routes:
        assert route.table == tunnel.table
        assert route.type == "unreachable" or route.device == tunnel.device
    for entry in up.nft:
        if isinstance(entry, plan.Snat):
            assert entry.device == tunnel.device
            source = getattr(entry, "source", None) or getattr(entry, "alias", None)  # renamed when source subnets came
            assert f"{source}/{ipaddress.ip_address(source).max_prefixlen}" in aliases
            assert entry.to in {str(a.ip) for a in lease.locals}
    for address in up.addresses:
        assert address.device == tunnel.alias_dev and ipaddress.ip_address(address.address) in (tunnel.alias, tunnel.alias6)


@given(tunnel=tunnels(), lease=leases())
def test_strict_fail_closed_objects_survive_from_up_to_down(tunnel, lease):
    up, down = _up(tunnel, lease), plan.plan_down(tunnel)
    if tunnel.strict:
        assert {r.family for r in down.routes if r.type == "unreachable"} == {4, 6}
        assert {r.src for r in down.rules} == {f"{a}/{a.max_prefixlen}" for a in (tunnel.alias, tunnel.alias6) if a}
        # what up has of the down skeleton: all of it for the families the lease carries
        families = {a.version for a in lease.locals}
        assert {r for r in down.routes} <= up.routes
        assert {r for r in down.rules if r.family in families} <= up.rules
    else:
        assert not down.routes and not down.rules
    assert plan.plan_down(tunnel) == down  # deterministic


@given(tunnel=tunnels(), lease=leases())
def test_diff_of_a_plan_with_itself_is_empty(tunnel, lease):
    up = _up(tunnel, lease)
    assert plan.diff(up, up) == plan.diff(plan.plan_down(tunnel), plan.plan_down(tunnel)) == NO_CHANGE
    assert _up(tunnel, lease) == up


@given(tunnel=tunnels(), first=leases(), second=leases())
def test_diff_turns_one_state_into_the_other_exactly(tunnel, first, second):
    a, b = _up(tunnel, first), _up(tunnel, second)
    d = plan.diff(b, a)  # from a to b
    for field in ("rules", "routes", "addresses", "nft"):
        have, add, remove = getattr(a, field), getattr(d.add, field), getattr(d.remove, field)
        assert (have - remove) | add == getattr(b, field)
        assert not add & have and remove <= have


@given(lease=leases())
def test_lease_json_round_trip(lease):
    assert Lease.from_json(lease.to_json(), "x") == lease


@given(local=interfaces(4), net30=st.booleans())
def test_openvpn_args_round_trip(local, net30):
    """What OpenVPN passes for a subnet or net30 tunnel parses back to that address."""
    assume(local.network.prefixlen < 32 or net30)
    if net30:
        peer = str(local.ip + 1 if local.ip + 1 != local.ip else local.ip - 1)
        env = {"dev": "tun0", "ifconfig_local": str(local.ip), "ifconfig_remote": peer}
        argv = ["tun0", "1500", "0", str(local.ip), peer, "init"]
    else:
        env = {"dev": "tun0", "ifconfig_local": str(local.ip), "ifconfig_netmask": str(local.netmask)}
        argv = ["tun0", "1500", "0", str(local.ip), str(local.netmask), "init"]
    try:
        call = openvpn.parse(argv, env)
    except InputError as e:
        assert "peer" in str(e) or "ifconfig_remote" in str(e)  # a random peer may be a special address
        return
    assert call.lease.local4.ip == local.ip
    assert call.lease.local4.network.prefixlen == (32 if net30 else local.network.prefixlen)
