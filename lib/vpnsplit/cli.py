"""The `vpnsplit` command: re-apply or remove a tunnel by hand, and see what the kernel holds."""

import argparse
import json
import logging
import sys

from vpnsplit import __version__, default_vpn, engine, runner, state, status
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
  vpnsplit down oldname         remove a tunnel whose section you deleted (its record says what)
  vpnsplit up --all             every tunnel at once (at boot: fail closed before the first connect)
  vpnsplit status --json        what should be in the kernel, and what is
  vpnsplit check                exit 3 if the kernel drifted from the recorded state
  vpnsplit explain 10.192.8.1   where a packet from the alias goes: rule, table, next hop, NAT
  vpnsplit explain 10.20.1.5 --dns   where a DNS query from a container goes (its tunnel's resolver?)
  vpnsplit explain --pid 4242   where the packets of process 4242 go (a program of a per-app tunnel?)
  vpnsplit default provider     all internet traffic through tunnel provider (a kill switch with strict)
  vpnsplit default              the same for the tunnel whose section says default = true (lowest id wins)
  vpnsplit default --off        the host's own default route back, exactly as it was
  vpnsplit run provider -- firefox   firefox and its children through tunnel provider (app_slot)
  vpnsplit unit-dropin provider transmission-daemon.service   that service through provider on every start
  vpnsplit watch                stay in the foreground and put back what other programs remove

exit codes: 0 done or in sync; 1 the kernel refused a step (rolled back) or the lock timed out;
2 bad input (arguments, environment, config; nothing changed); 3 check found drift (orphans included:
what vpnsplit applied earlier and the config no longer wants).
environment: VPNSPLIT_CONFIG (config path), VPNSPLIT_STATE_DIR (default /run/vpnsplit),
VPNSPLIT_LOCK_TIMEOUT (seconds, default 30), VPNSPLIT_DEBUG=1 (tracebacks).
"""


def _parser():
    p = argparse.ArgumentParser(
        prog="vpnsplit", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"vpnsplit {__version__}")
    _common(p, None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, text):
        s = sub.add_parser(name, help=text, description=text)
        _common(s, argparse.SUPPRESS)  # before or after the command: `vpnsplit status --config X` too
        return s

    up = command("up", "apply a tunnel's routes, rules, alias and NAT (idempotent)")
    down = command("down", "remove what up applied (the strict fail-closed routes stay)")
    for s in (up, down):
        which = s.add_mutually_exclusive_group(required=True)
        which.add_argument("name", nargs="?", metavar="NAME", help="tunnel name: the NAME of [tunnel.NAME]")
        which.add_argument("--all", action="store_true", help="every configured tunnel, in one transaction")
    for cmd, text in (("status", "show, per tunnel, what should be in the kernel and what is"), ("check", "exit 3 when the kernel differs from the recorded state")):
        s = command(cmd, text)
        s.add_argument("name", nargs="?", metavar="NAME", help="one tunnel (default: all)")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    de = command("default", "send all of the host's internet traffic through one tunnel (or --off)")
    de.add_argument("name", nargs="?", metavar="NAME",
                    help="the tunnel to use as the host's default route (default: the section with default = true; "
                         "lowest id wins); with --off: only if NAME is the default VPN")
    de.add_argument("--off", action="store_true", help="give the host its own default route back")
    from vpnsplit import watch

    watch.add_arguments(command("watch", watch.SUMMARY))
    ex = command("explain", "where does a packet from SRC go: rule, table, next hop, NAT, strict drop")
    ex.add_argument("src", nargs="?", metavar="SRC", help="source address (an alias, a tunnel address, a container's address...); "
                                                        "with --pid or --unit: DST")
    ex.add_argument("dst", nargs="?", metavar="DST", help="destination (default: an internet address, 192.0.2.1 / 2001:db8::1)")
    ex.add_argument("--pid", metavar="PID", help="where packets of process PID (a program of a per-app tunnel?) go")
    ex.add_argument("--unit", metavar="UNIT", help="the same for the processes of systemd unit UNIT")
    ex.add_argument("--dns", action="store_true",
                    help="where a DNS query from SRC goes: to which resolver, and (when redirected) that query's path")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    from vpnsplit import appcli

    appcli.add_commands(command)
    return p


def _common(parser, default):
    """The options every command takes; *default* SUPPRESS keeps a subcommand's from
    overwriting what was given before the command."""
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="config file (default: $VPNSPLIT_CONFIG, else /etc/vpnsplit/vpnsplit.toml)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default or False, help="log only errors")


def _tunnels(n):
    return f"{n} tunnel" if n == 1 else f"{n} tunnels"


def cmd_default(args, cfg):
    """Choose (or drop) the host-wide default VPN; recorded so the tunnel's hooks keep it current.
    Without NAME, the config's `default = true` chooses."""
    if args.off and args.name:
        cfg.tunnel(args.name)  # an unknown NAME is bad input
    tunnel = None if args.off else default_vpn.named(cfg, args.name)
    with runner.session() as (kernel, statedir):
        current = default_vpn.chosen(statedir, cfg.tunnels)
        if args.off and args.name and (current is None or current.name != args.name):
            # `systemctl stop vpnsplit-default@NAME` after another tunnel became the default
            log.info("default --off %s: the default VPN is %s, not %s: nothing changed",
                     args.name, current.name if current else "off", args.name)
            return
        changes = default_vpn.choose(kernel, statedir, tunnel, cfg.tunnels)
    what = "off: the host uses its own default route" if tunnel is None else f"all internet traffic goes through tunnel {tunnel.name}"
    log.info("default %s (%s)", what, f"{len(changes)} change(s)" if changes else "already in place")


def cmd_explain(args, cfg):
    from vpnsplit import explain  # here: it imports pyroute2, which no other command needs to

    if args.pid or args.unit:
        return _explain_program(args, cfg)
    if args.src is None:
        raise InputError("explain: give SRC, or --pid PID / --unit UNIT")
    explain.addresses(args.src, args.dst)  # before the kernel is asked anything
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


def _explain_program(args, cfg):
    from vpnsplit import appexplain

    kernel = Kernel()
    try:
        report, text = appexplain.main(args, cfg, kernel)
    finally:
        kernel.close()
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


def cmd_up(args, cfg):
    """One tunnel, or with --all every tunnel: those whose device exists go up, the others
    down (with strict: fail closed), so `vpnsplit up --all` at boot covers the time before
    the first connect, and `vpnsplit up NAME` after the VPN client died is the fix status names."""
    if args.name and args.name not in cfg.tunnels and args.name in state.StateDir(state.dir_from()).names():
        cfg.tunnel(args.name, more=f"(its section is gone; 'vpnsplit down {args.name}' removes what vpnsplit applied for it)")
    tunnels = list(cfg.tunnels.values()) if args.all else [cfg.tunnel(args.name)]
    # every tunnel with a recorded lease: probably a re-apply with everything in place
    with runner.session(changes_expected=lambda statedir: any(statedir.record(t.name).lease is None for t in tunnels)) as (kernel, statedir):
        # at boot (--all), say which section chose when several could
        chosen = default_vpn.chosen(statedir, cfg.tunnels, announce=args.all)
        targets = []
        absent = [t for t in tunnels if kernel.nl.link_index(t.device) is None]
        for tunnel in tunnels:
            lease = None if tunnel in absent else kernel.current_lease(tunnel, statedir.record(tunnel.name), servers=tunnel is chosen)
            targets.append((tunnel, lease))
        default = next(((t, lease) for t, lease in targets if t is chosen), None)
        # --all: also the tunnels gone from the config, torn down from their records
        gone = engine.removable(kernel, statedir, cfg.tunnels) if args.all else []
        changes = engine.converge(kernel, statedir, targets, default, list(cfg.tunnels.values()), gone=gone)
    what = "tunnel " + args.name if args.name else _tunnels(len(tunnels)) + (f" ({len(gone)} gone from the config: removed)" if gone else "")
    log.info("%s up: %s", what, f"{len(changes)} change(s)" if changes else "already in place")
    if args.name and absent:
        log.warning("tunnel %s is not connected (no device %s): its down state is applied%s; the VPN client's "
                    "next connect brings it up", args.name, absent[0].device, " (strict: fail closed)" if absent[0].strict else "")


def cmd_down(args, cfg):
    """One tunnel, or with --all every one (and those gone from the config whose record is left).
    NAME may be a tunnel gone from the config: its record alone says what to remove."""
    statedir = state.StateDir(state.dir_from())
    if args.name and args.name not in cfg.tunnels and args.name not in statedir.names():
        cfg.tunnel(args.name, more=f"and no record of it in {statedir.path}")  # bad input: names the known ones
    tunnels = list(cfg.tunnels.values()) if args.all else [t for t in [cfg.tunnels.get(args.name)] if t]
    with runner.session() as (kernel, statedir):
        chosen = default_vpn.chosen(statedir, cfg.tunnels)
        gone = engine.removable(kernel, statedir, cfg.tunnels) if args.all else [args.name] if not tunnels else []
        changes = engine.converge(kernel, statedir, [(t, None) for t in tunnels], (chosen, None) if chosen in tunnels else None,
                                  list(cfg.tunnels.values()), gone=gone)
    what = "tunnel " + args.name if args.name else _tunnels(len(tunnels)) + (f" ({len(gone)} gone from the config)" if gone else "")
    what += " (gone from the config: removed what its record says vpnsplit applied)" if args.name and gone else ""
    log.info("%s down: %s", what, f"{len(changes)} change(s)" if changes else "nothing to remove")


def _reports(args, cfg):
    """(per-tunnel reports, the default VPN's report or None); the latter only when every
    tunnel is asked for, or the one the default VPN goes through."""
    statedir = state.StateDir(state.dir_from())
    gone = engine.gone(statedir, cfg.tunnels)
    if args.name and args.name not in gone:
        cfg.tunnel(args.name)
    names = [args.name] if args.name else list(cfg.tunnels) + gone
    kernel = Kernel()
    try:
        default = status.default_status(kernel, statedir, cfg.tunnels)
        if default and args.name and default["tunnel"] != args.name:
            default = None
        return [status.gone_status(kernel, statedir, n) if n in gone else status.status(kernel, statedir, cfg.tunnels[n])
                for n in names], default
    finally:
        kernel.close()


def cmd_status(args, cfg):
    from vpnsplit import pidfile

    reports, default = _reports(args, cfg)
    watcher = pidfile.watcher(state.StateDir(state.dir_from()))
    if args.json:
        doc = {"tunnels": reports, "default": default, "watcher": {"running": bool(watcher), "pid": watcher}}
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        for r in reports:
            print(status.describe_gone(r) if r["state"] == "gone" else status.describe(r))
        if default:
            print(status.describe_default(default))
        print(f"watcher: running (pid {watcher})" if watcher else "watcher: not running (see vpnsplit watch --help)")
    return 0


def cmd_check(args, cfg):
    reports, default = _reports(args, cfg)
    in_sync = all(r["in_sync"] for r in reports) and (default is None or default["in_sync"])
    if args.json:
        json.dump({"in_sync": in_sync, "tunnels": {r["tunnel"]: r["problems"] for r in reports},
                   # what vpnsplit applied earlier and no longer wants, per tunnel; the tunnels whose section is gone
                   "orphans": {r["tunnel"]: r["orphans"] for r in reports if r["orphans"]},
                   "gone": [r["tunnel"] for r in reports if r["state"] == "gone"],
                   "default": default and default["problems"]}, sys.stdout, indent=2)
        print()
    for r in reports:
        for p in r["problems"]:
            log.warning("tunnel %s: %s", r["tunnel"], p)
    for p in default["problems"] if default else ():
        log.warning("default VPN: %s", p)
    return 0 if in_sync else EXIT_DRIFT


def cmd_watch(args, cfg):
    from vpnsplit import watch

    return watch.main(args, cfg)


def main(argv=None):
    from vpnsplit import appcli

    args = _parser().parse_args(argv)
    runner.setup_logging(f"vpnsplit {args.command}", quiet=args.quiet)
    command = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "check": cmd_check, "explain": cmd_explain, "default": cmd_default,
               "watch": cmd_watch, **appcli.COMMANDS}[args.command]
    return runner.guarded(lambda: command(args, runner.load_config(args.config)))
