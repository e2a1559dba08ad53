"""The `vpnsplit` command: re-apply or remove a tunnel by hand, and see what the kernel holds."""

import argparse
import json
import logging
import sys

from vpnsplit import config, engine, runner, state
from vpnsplit.errors import InputError

log = logging.getLogger("vpnsplit")

EXIT_DRIFT = 3

DESCRIPTION = """\
Split routing for OpenVPN and WireGuard: only traffic sourced from the tunnel's address
(or from a fixed alias, SNAT-ed to it) goes through the tunnel; the host keeps its own
default route. The VPN client runs the hooks (/usr/lib/vpnsplit/up, down, wg-up, wg-down);
this command is for people: re-apply after fixing a failure, remove, inspect.
"""

EPILOG = """\
examples:
  vpnsplit up provider          re-apply tunnel 'provider' from the recorded lease (or its device)
  vpnsplit down provider        remove it, keeping the strict fail-closed routes
  vpnsplit up --all             every tunnel at once (at boot: fail closed before the first connect)
  vpnsplit status --json        what should be in the kernel, and what is
  vpnsplit check                exit 3 if the kernel drifted from the recorded state
  vpnsplit explain 10.192.8.1   where a packet from the alias goes: rule, table, next hop, NAT
  vpnsplit default provider     all internet traffic through tunnel provider (a kill switch with strict)
  vpnsplit default              the same for the tunnel whose section says default = true (lowest id wins)
  vpnsplit default --off        the host's own default route back, exactly as it was

exit codes: 0 done or in sync; 1 the kernel refused a step (rolled back) or the lock timed out;
2 bad input (arguments, environment, config; nothing changed); 3 check found drift.
environment: VPNSPLIT_CONFIG (config path), VPNSPLIT_STATE_DIR (default /run/vpnsplit),
VPNSPLIT_LOCK_TIMEOUT (seconds, default 30), VPNSPLIT_DEBUG=1 (tracebacks).
"""


def _parser():
    p = argparse.ArgumentParser(
        prog="vpnsplit", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", metavar="PATH", help="config file (default: $VPNSPLIT_CONFIG, else /etc/vpnsplit/vpnsplit.toml)")
    p.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = sub.add_parser("up", help="apply a tunnel's routes, rules, alias and NAT (idempotent)")
    down = sub.add_parser("down", help="remove what up applied (the strict fail-closed routes stay)")
    for s in (up, down):
        which = s.add_mutually_exclusive_group(required=True)
        which.add_argument("name", nargs="?", metavar="NAME", help="tunnel name: the NAME of [tunnel.NAME]")
        which.add_argument("--all", action="store_true", help="every configured tunnel, in one transaction")
    for cmd, text in (("status", "show, per tunnel, what should be in the kernel and what is"), ("check", "exit 3 when the kernel differs from the recorded state")):
        s = sub.add_parser(cmd, help=text)
        s.add_argument("name", nargs="?", metavar="NAME", help="one tunnel (default: all)")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    de = sub.add_parser("default", help="send all of the host's internet traffic through one tunnel (or --off)")
    de.add_argument("name", nargs="?", metavar="NAME",
                    help="the tunnel to use as the host's default route (default: the section with default = true; "
                         "lowest id wins); with --off: only if NAME is the default VPN")
    de.add_argument("--off", action="store_true", help="give the host its own default route back")
    ex = sub.add_parser("explain", help="where does a packet from SRC go: rule, table, next hop, NAT, strict drop")
    ex.add_argument("src", metavar="SRC", help="source address (an alias, a tunnel address, a container's address...)")
    ex.add_argument("dst", nargs="?", metavar="DST", help="destination (default: an internet address, 192.0.2.1 / 2001:db8::1)")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_default(args, cfg):
    """Choose (or drop) the host-wide default VPN; recorded so the tunnel's hooks keep it current.
    Without NAME, the config's `default = true` chooses."""
    if args.off:
        tunnel = None
        if args.name:
            cfg.tunnel(args.name, "vpnsplit default --off")  # an unknown NAME is bad input
    elif args.name:
        tunnel = cfg.tunnel(args.name, "vpnsplit default")
    else:
        tunnel = _configured_default(cfg)
        if tunnel is None:
            raise InputError(f"vpnsplit default: no [tunnel.*] section in {config.shown(cfg.path)} says default = true; "
                             f"name the tunnel (vpnsplit default NAME) or add default = true to one")
    with runner.session() as (kernel, statedir):
        if tunnel is None:
            default, targets = engine.OFF, []
        elif kernel.nl.link_index(tunnel.device) is None:
            # not connected: the tunnel goes down with it, so that with strict its table's
            # unreachable default is there and 32003 is a kill switch, not a rule into nothing
            default = (tunnel, None)
            targets = [default]
        else:
            # the tunnel itself too, so its record holds the servers read now (check compares with it)
            default = (tunnel, _current_lease(kernel, statedir, tunnel, servers=True))
            targets = [default]
        # the choice first: a run killed after it leaves drift `check` reports and a re-run
        # mends; killed before, the old choice's next hook would quietly undo this command
        previous = statedir.default_choice()
        current = engine.default_tunnel(statedir, cfg.tunnels)
        if args.off and args.name and (current is None or current.name != args.name):
            # `systemctl stop vpnsplit-default@NAME` after another tunnel became the default
            log.info("default --off %s: the default VPN is %s, not %s: nothing changed",
                     args.name, current.name if current else "off", args.name)
            return
        statedir.choose_default("" if tunnel is None else tunnel.name)
        try:
            changes = engine.converge(kernel, statedir, targets, default)
        except BaseException:
            statedir.choose_default(previous)
            raise
    what = "off: the host uses its own default route" if tunnel is None else f"all internet traffic goes through tunnel {tunnel.name}"
    log.info("default %s (%s)", what, f"{len(changes)} change(s)" if changes else "already in place")


def cmd_explain(args, cfg):
    import ipaddress

    from vpnsplit import explain
    from vpnsplit.engine import Kernel

    for value, what in ((args.src, "SRC"), (args.dst, "DST")):
        try:
            value is None or ipaddress.ip_address(value)
        except ValueError:
            raise InputError(f"vpnsplit explain: {what} {value!r} is not an IP address") from None
    kernel = Kernel()
    try:
        report = explain.explain(kernel, cfg.tunnels, args.src, args.dst)
    finally:
        kernel.close()
    print(json.dumps(report, indent=2) if args.json else explain.describe(report))
    return 0


def cmd_up(args, cfg):
    """One tunnel, or with --all every tunnel: those whose device exists go up, the others
    down (with strict: fail closed), so `vpnsplit up --all` at boot covers the time before
    the first connect."""
    tunnels = list(cfg.tunnels.values()) if args.all else [cfg.tunnel(args.name, "vpnsplit up")]
    # every tunnel with a recorded lease: probably a re-apply with everything in place
    with runner.session(changes_expected=lambda statedir: any(statedir.load_quiet(t.name) is None for t in tunnels)) as (kernel, statedir):
        chosen = engine.default_tunnel(statedir, cfg.tunnels)
        targets = []
        for tunnel in tunnels:
            absent = args.all and kernel.nl.link_index(tunnel.device) is None
            targets.append((tunnel, None if absent else _current_lease(kernel, statedir, tunnel, servers=tunnel is chosen)))
        if args.all and statedir.default_choice() is None:
            _configured_default(cfg)  # at boot: say which section chose, when several could
        default = next(((t, lease) for t, lease in targets if t is chosen), None)
        changes = engine.converge(kernel, statedir, targets, default)
    what = "tunnel " + args.name if args.name else f"{len(tunnels)} tunnels"
    log.info("%s up: %s", what, f"{len(changes)} change(s)" if changes else "already in place")


def _configured_default(cfg):
    """The tunnel `default = true` chooses (None if no section says so); logs the choice when several say it."""
    candidates = config.default_candidates(cfg.tunnels)
    if len(candidates) > 1:
        log.info("default = true in %s: tunnel %s is the default VPN (lowest id, else lowest priority)",
                 ", ".join(t.name for t in candidates), candidates[0].name)
    return next(iter(candidates), None)


def _current_lease(kernel, statedir, tunnel, servers=False):
    """The recorded lease if the device still carries it, else what the device carries now.

    *servers*: also read a WireGuard device's peer endpoints now (they may have moved since
    wg-up). Only the default VPN needs them, and asking a kernel WireGuard device costs a
    pyroute2 import that a run finding everything in place otherwise never pays.
    """
    from vpnsplit import wgpeers

    if kernel.nl.link_index(tunnel.device) is None:
        raise InputError(f"vpnsplit up {tunnel.name}: device {tunnel.device!r} does not exist (is the VPN connected?)")
    recorded = statedir.load_quiet(tunnel.name)
    # the addresses alone first: the device's type (one more request) only matters for a new lease
    carried = [a.ip for a in kernel.nl.device_addresses(tunnel.device, skip={tunnel.alias, tunnel.alias6}) if a]
    if recorded and [a.ip for a in recorded.locals] == carried:
        lease = recorded
    else:
        lease = kernel.lease_from_device(tunnel)
        if recorded:
            log.warning("device %s carries %s, not the recorded %s: applying what the device carries", tunnel.device,
                        " ".join(map(str, lease.locals)), " ".join(map(str, recorded.locals)))
            # the device cannot show the VPN server (OpenVPN's trusted_ip): losing it would drop
            # the default VPN's server exception and loop the client's packets into its tunnel
            lease = lease._replace(servers=recorded.servers)
    return wgpeers.with_endpoints(kernel.nl, lease) if servers else lease


def cmd_down(args, cfg):
    tunnels = list(cfg.tunnels.values()) if args.all else [cfg.tunnel(args.name, "vpnsplit down")]
    with runner.session() as (kernel, statedir):
        chosen = engine.default_tunnel(statedir, cfg.tunnels)
        changes = engine.converge(kernel, statedir, [(t, None) for t in tunnels], (chosen, None) if chosen in tunnels else None)
    what = "tunnel " + args.name if args.name else f"{len(tunnels)} tunnels"
    log.info("%s down: %s", what, f"{len(changes)} change(s)" if changes else "nothing to remove")


def _reports(args, cfg):
    """(per-tunnel reports, the default VPN's report or None); the latter only when every
    tunnel is asked for, or the one the default VPN goes through."""
    names = [cfg.tunnel(args.name, f"vpnsplit {args.command}").name] if args.name else list(cfg.tunnels)
    from vpnsplit.engine import Kernel

    statedir = state.StateDir(state.dir_from())
    kernel = Kernel()
    try:
        default = engine.default_status(kernel, statedir, cfg.tunnels)
        if default and args.name and default["tunnel"] != args.name:
            default = None
        return [engine.status(kernel, statedir, cfg.tunnels[n]) for n in names], default
    finally:
        kernel.close()


def cmd_status(args, cfg):
    reports, default = _reports(args, cfg)
    if args.json:
        json.dump({"tunnels": reports, "default": default}, sys.stdout, indent=2)
        print()
    else:
        for r in reports:
            print(_describe(r))
        if default:
            print(_describe_default(default))
    return 0


def cmd_check(args, cfg):
    reports, default = _reports(args, cfg)
    in_sync = all(r["in_sync"] for r in reports) and (default is None or default["in_sync"])
    if args.json:
        json.dump({"in_sync": in_sync, "tunnels": {r["tunnel"]: r["problems"] for r in reports},
                   "default": default and default["problems"]}, sys.stdout, indent=2)
        print()
    for r in reports:
        for p in r["problems"]:
            log.warning("tunnel %s: %s", r["tunnel"], p)
    for p in default["problems"] if default else ():
        log.warning("default VPN: %s", p)
    return 0 if in_sync else EXIT_DRIFT


def _describe_default(r):
    head = f"default VPN: tunnel {r['tunnel']}" if r["tunnel"] else "default VPN: off"
    lines = [head] + [f"  {'ok     ' if o['present'] else 'MISSING'}  {o['object']}" for o in r["objects"]]
    lines += [f"  STALE    {s}" for s in r["stale"]]
    lines.append(f"  {'in sync' if r['in_sync'] else 'DRIFT: run vpnsplit default ' + (r['tunnel'] or '--off')}")
    return "\n".join(lines)


def _describe(r):
    lease = r["lease"]
    where = f"{r['state']} on {r['device']}" + ("" if r["device_present"] else " (device absent)")
    if lease:
        where += " " + " ".join(a for a in (lease["local4"], lease["local6"]) if a) + f" since {r['recorded_at']}"
    aliases = " ".join(a for a in (r["alias"], r["alias6"]) if a)
    head = f"{r['tunnel']}: {where}; table {r['table']}, priority {r['priority']}"
    head += f", alias {aliases} on {r['alias_device']}" if aliases else ""
    head += ", strict" if r["strict"] else ""
    lines = [head]
    lines += [f"  {'ok     ' if o['present'] else 'MISSING'}  {o['object']}" for o in r["objects"]]
    lines += [f"  STALE    {s}" for s in r["stale"]]
    rpf = {0: "off", 1: "strict", 2: "loose", None: "no device"}
    six = "(all.forwarding)" if r["forwarding6_all"] else "(force_forwarding)"
    for dev, v in r["rp_filter"].items():
        line = f"  rp_filter on {dev}: {rpf.get(v, v)}"
        if dev in r["forwarding"]:
            line += f", forwarding {'on' if r['forwarding'][dev] else 'off'}"
        if dev in r["forwarding6"]:
            line += f", IPv6 forwarding {'on ' + six if r['forwarding6'][dev] else 'off'}"
        lines.append(line)
    if r["forwarding6_per_device"] is False and not r["forwarding6_all"]:
        lines.append("  IPv6 forwarding (net.ipv6.conf.all.forwarding): off: IPv6 sources are not forwarded; set it to 1 "
                     "(this kernel has no per-device force_forwarding, Linux 6.17+)")
    lines += [f"  PROBLEM  {p}" for p in r["problems"] if not p.startswith(("missing:", "stale:"))]
    lines.append(f"  {'in sync' if r['in_sync'] else 'DRIFT: run vpnsplit up/down ' + r['tunnel']}")
    return "\n".join(lines)


def main(argv=None):
    args = _parser().parse_args(argv)
    runner.setup_logging("vpnsplit", quiet=args.quiet)
    command = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "check": cmd_check, "explain": cmd_explain, "default": cmd_default}[args.command]
    return runner.guarded(lambda: command(args, runner.load_config(args.config)))
