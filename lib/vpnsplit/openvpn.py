"""Parse what OpenVPN hands an up/down script: positional arguments plus environment.

OpenVPN appends `dev tun_mtu 0 local remote|netmask init|restart` after any words written
in the config (`up "/usr/lib/vpnsplit/up --tunnel provider"`), so its six are always the
last six. The down-root plugin passes only the plugin's own words; then everything comes
from the environment snapshot taken at up time. IPv6 only ever comes in the environment.
"""

import ipaddress
from typing import NamedTuple

from vpnsplit import addresses, dns
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease

CONTEXTS = ("init", "restart")


class HookCall(NamedTuple):
    """One invocation: our own options, plus what the VPN client told us."""

    device: str
    tunnel: str | None = None  # --tunnel NAME
    config: str | None = None  # --config PATH
    lease: Lease | None = None  # None for down: it needs only the device


def split_words(words, where, names=("tunnel", "config")):
    """Split our own `--tunnel NAME` / `--config PATH` words (any of *names*) off; return (options, rest)."""
    opts, rest = {}, []
    flags = tuple(f"--{n}" for n in names)
    i = 0
    while i < len(words):
        word = words[i]
        if word in flags:
            if i + 1 >= len(words):
                raise InputError(f"{where}: {word} needs a value")
            opts[word[2:]] = words[i + 1]
            i += 2
        elif word.startswith(tuple(f"{f}=" for f in flags)):
            key, _, value = word[2:].partition("=")
            opts[key] = value
            i += 1
        else:
            rest.append(word)
            i += 1
    return opts, rest


def six_problems(argv):
    """What is wrong with OpenVPN's six positional arguments in *argv* (none when it has no
    six): one message per bad argument, naming it. An empty local or remote is valid: OpenVPN
    passes them empty for a tunnel without IPv4."""
    if not (len(argv) >= 6 and argv[-1] in CONTEXTS):
        return []
    problems = []
    for name, value, top, low in (("tun_mtu", argv[-5], 65535, 1), ("link_mtu", argv[-4], 65535, 0)):
        if not (value.isascii() and value.isdigit() and low <= int(value) <= top):
            problems.append(f"openvpn: argument {name} {value!r} is not an integer {low}-{top}")
    for name, value in (("local", argv[-3]), ("remote", argv[-2])):
        try:
            if value:
                ipaddress.IPv4Address(value)
        except ValueError:
            problems.append(f"openvpn: argument {name} {value!r} is not an IPv4 address (nor empty)")
    return problems


def parse(argv, env, want_lease=True):
    """Turn an OpenVPN up/down call into a HookCall. Raises InputError naming the bad value;
    for up (*want_lease*) also any bad positional argument (see six_problems)."""
    where = "openvpn"
    head, six = (argv[:-6], argv[-6:]) if len(argv) >= 6 and argv[-1] in CONTEXTS else (argv, None)
    opts, extra = split_words(head, where)
    if six is None and len(extra) >= 6:
        # Six or more words that OpenVPN would have sent, but the last is no context:
        # name that word rather than the first one, which is fine (the device).
        raise InputError(f"{where}: last argument {argv[-1]!r} is not init or restart (OpenVPN passes dev tun_mtu 0 local remote init|restart)")
    if extra:
        raise InputError(f"{where}: unexpected argument {extra[0]!r} (only --tunnel NAME and --config PATH may precede OpenVPN's six)")
    if six is not None:
        dev, _mtu, _zero, local, remote, context = six
        if env.get("dev") and env["dev"] != dev:
            raise InputError(f"{where}: argument dev {dev!r} disagrees with $dev {env['dev']!r}")
    else:  # down-root plugin, or a script run by hand: the environment is all we have
        dev = env.get("dev")
        if not dev:
            raise InputError(f"{where}: no device: expected OpenVPN's six arguments or $dev")
        local = env.get("ifconfig_local", "")
        remote = env.get("ifconfig_remote") or env.get("ifconfig_netmask", "")
        context = env.get("script_context", "init")
        if context not in CONTEXTS:
            raise InputError(f"{where}: $script_context {context!r} is not init or restart")
    dev = addresses.ifname(dev, f"{where} dev")
    lease = _lease(dev, local, remote, env) if want_lease else None
    if want_lease and six_problems(argv):  # after _lease: its messages say more about a bad local
        raise InputError(six_problems(argv)[0])
    return HookCall(device=dev, tunnel=opts.get("tunnel"), config=opts.get("config"), lease=lease)


def _lease(dev, local, remote, env):
    dev_type = env.get("dev_type") or ("tap" if dev.startswith("tap") else "tun")
    if dev_type not in ("tun", "tap"):
        raise InputError(f"openvpn: $dev_type {dev_type!r} is not tun or tap")
    env_local = env.get("ifconfig_local")
    if env_local is not None and local and env_local != local:
        raise InputError(f"openvpn: argument local address {local!r} disagrees with $ifconfig_local {env_local!r}")
    local = local or env_local or ""

    local4 = gateway4 = None
    if local:
        addr = addresses.host_address(local, "openvpn ifconfig_local", 4)
        netmask = env.get("ifconfig_netmask")
        peer = env.get("ifconfig_remote")
        if netmask is None and peer is None and remote:
            # No environment (a call by hand): a dotted netmask starts with 255.
            netmask, peer = (remote, None) if remote.startswith("255.") else (None, remote)
        if netmask is not None:  # topology subnet, and tap
            local4 = addresses.host_interface(addr, addresses.netmask_prefix(netmask, "openvpn ifconfig_netmask"), "openvpn ifconfig_local")
        else:  # p2p / net30: the address is a /32 with a peer
            if peer is not None:
                addresses.host_address(peer, "openvpn ifconfig_remote", 4)
            local4 = addresses.host_interface(addr, 32, "openvpn ifconfig_local")
        if dev_type == "tap" and env.get("route_vpn_gateway"):
            gateway4 = addresses.host_address(env["route_vpn_gateway"], "openvpn route_vpn_gateway", 4)

    local6 = gateway6 = None
    if env.get("ifconfig_ipv6_local"):
        addr6 = addresses.host_address(env["ifconfig_ipv6_local"], "openvpn ifconfig_ipv6_local", 6)
        bits = addresses.prefix_length(env.get("ifconfig_ipv6_netbits", "128"), "openvpn ifconfig_ipv6_netbits", 6)
        local6 = addresses.host_interface(addr6, bits, "openvpn ifconfig_ipv6_local")
        if dev_type == "tap" and env.get("ifconfig_ipv6_remote"):
            gateway6 = addresses.host_address(env["ifconfig_ipv6_remote"], "openvpn ifconfig_ipv6_remote", 6)

    if local4 is None and local6 is None:
        raise InputError(f"openvpn: no tunnel address for {dev}: ifconfig_local and ifconfig_ipv6_local are both empty")
    servers = tuple(addresses.host_address(env[k], f"openvpn {k}") for k in ("trusted_ip", "trusted_ip6") if env.get(k))
    return Lease(device=dev, dev_type=dev_type, local4=local4, gateway4=gateway4, local6=local6, gateway6=gateway6, servers=servers,
                 dns=dns.from_openvpn(env))
