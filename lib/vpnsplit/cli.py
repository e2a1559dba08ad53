"""The `vpnsplit` command: re-apply or remove a tunnel by hand, and see what the kernel holds."""

import argparse
import ipaddress
import json
import logging
import sys

from vpnsplit import default_vpn, engine, runner, state, status
from vpnsplit.errors import InputError
from vpnsplit.kernel import Kernel

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
  vpnsplit explain 10.20.1.5 --dns   where a DNS query from a container goes (its tunnel's resolver?)
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
    which = de.add_mutually_exclusive_group()
    which.add_argument("name", nargs="?", metavar="NAME",
                       help="the tunnel to use as the host's default route (default: the section with default = true; lowest id wins)")
    which.add_argument("--off", action="store_true", help="give the host its own default route back")
    ex = sub.add_parser("explain", help="where does a packet from SRC go: rule, table, next hop, NAT, strict drop")
    ex.add_argument("src", metavar="SRC", help="source address (an alias, a tunnel address, a container's address...)")
    ex.add_argument("dst", nargs="?", metavar="DST", help="destination (default: an internet address, 192.0.2.1 / 2001:db8::1)")
    ex.add_argument("--dns", action="store_true",
                    help="where a DNS query from SRC goes: to which resolver, and (when redirected) that query's path")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_default(args, cfg):
    """Choose (or drop) the host-wide default VPN; recorded so the tunnel's hooks keep it current.
    Without NAME, the config's `default = true` chooses."""
    tunnel = None if args.off else default_vpn.named(cfg, args.name)
    with runner.session() as (kernel, statedir):
        changes = default_vpn.choose(kernel, statedir, tunnel, cfg.tunnels)
    what = "off: the host uses its own default route" if tunnel is None else f"all internet traffic goes through tunnel {tunnel.name}"
    log.info("default %s (%s)", what, f"{len(changes)} change(s)" if changes else "already in place")


def cmd_explain(args, cfg):
    from vpnsplit import explain  # here: it imports pyroute2, which no other command needs to

    for value, what in ((args.src, "SRC"), (args.dst, "DST")):
        try:
            value is None or ipaddress.ip_address(value)
        except ValueError:
            raise InputError(f"vpnsplit explain: {what} {value!r} is not an IP address") from None
    kernel = Kernel()
    try:
        report = explain.explain(kernel, cfg.tunnels, args.src, args.dst)
        if args.dns and report["dns"].get("routed"):  # the redirected query's own path: from SRC to the resolver
            report = {**explain.explain(kernel, cfg.tunnels, args.src, report["dns"]["to"]), "dns": report["dns"]}
    finally:
        kernel.close()
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.dns:
        print(f"{args.src}: dns: {report['dns']['text']}" + ("\n" + explain.describe(report) if report["dns"].get("routed") else ""))
    else:
        print(explain.describe(report))
    return 0


def cmd_up(args, cfg):
    """One tunnel, or with --all every tunnel: those whose device exists go up, the others
    down (with strict: fail closed), so `vpnsplit up --all` at boot covers the time before
    the first connect."""
    tunnels = list(cfg.tunnels.values()) if args.all else [cfg.tunnel(args.name, "vpnsplit up")]
    # every tunnel with a recorded lease: probably a re-apply with everything in place
    with runner.session(changes_expected=lambda statedir: any(statedir.record(t.name).lease is None for t in tunnels)) as (kernel, statedir):
        # at boot (--all), say which section chose when several could
        chosen = default_vpn.chosen(statedir, cfg.tunnels, announce=args.all)
        targets = []
        for tunnel in tunnels:
            absent = args.all and kernel.nl.link_index(tunnel.device) is None
            lease = None if absent else kernel.current_lease(tunnel, statedir.record(tunnel.name).lease, servers=tunnel is chosen)
            targets.append((tunnel, lease))
        default = next(((t, lease) for t, lease in targets if t is chosen), None)
        changes = engine.converge(kernel, statedir, targets, default)
    what = "tunnel " + args.name if args.name else f"{len(tunnels)} tunnels"
    log.info("%s up: %s", what, f"{len(changes)} change(s)" if changes else "already in place")


def cmd_down(args, cfg):
    tunnels = list(cfg.tunnels.values()) if args.all else [cfg.tunnel(args.name, "vpnsplit down")]
    with runner.session() as (kernel, statedir):
        chosen = default_vpn.chosen(statedir, cfg.tunnels)
        changes = engine.converge(kernel, statedir, [(t, None) for t in tunnels], (chosen, None) if chosen in tunnels else None)
    what = "tunnel " + args.name if args.name else f"{len(tunnels)} tunnels"
    log.info("%s down: %s", what, f"{len(changes)} change(s)" if changes else "nothing to remove")


def _reports(args, cfg):
    """(per-tunnel reports, the default VPN's report or None); the latter only when every
    tunnel is asked for, or the one the default VPN goes through."""
    names = [cfg.tunnel(args.name, f"vpnsplit {args.command}").name] if args.name else list(cfg.tunnels)
    statedir = state.StateDir(state.dir_from())
    kernel = Kernel()
    try:
        default = status.default_status(kernel, statedir, cfg.tunnels)
        if default and args.name and default["tunnel"] != args.name:
            default = None
        return [status.status(kernel, statedir, cfg.tunnels[n]) for n in names], default
    finally:
        kernel.close()


def cmd_status(args, cfg):
    reports, default = _reports(args, cfg)
    if args.json:
        json.dump({"tunnels": reports, "default": default}, sys.stdout, indent=2)
        print()
    else:
        for r in reports:
            print(status.describe(r))
        if default:
            print(status.describe_default(default))
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


def main(argv=None):
    args = _parser().parse_args(argv)
    runner.setup_logging("vpnsplit", quiet=args.quiet)
    command = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "check": cmd_check, "explain": cmd_explain, "default": cmd_default}[args.command]
    return runner.guarded(lambda: command(args, runner.load_config(args.config)))
