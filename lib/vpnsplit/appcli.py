"""The per-app commands of `vpnsplit`: run a program through a tunnel, attach a unit's cgroup, write a unit's drop-in."""

import argparse
import logging
import os
import shutil

from vpnsplit import cgroups, state
from vpnsplit.errors import InputError

log = logging.getLogger("vpnsplit")


def add_commands(command):
    """The subcommands, made with cli's *command*(name, help)."""
    run = command("run", "run a program (and its children) through a tunnel: every socket it opens, bound or not")
    run.add_argument("name", metavar="NAME", help="the tunnel (its section needs app_slot)")
    run.add_argument("--user", metavar="USER", help="run as USER (default: the user who ran sudo, else root)")
    run.add_argument("--in-scope", action="store_true", help=argparse.SUPPRESS)  # inside systemd-run's scope
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the program and its arguments")
    at = command("attach", "send this process's cgroup through a tunnel (a unit's ExecStartPre=, see unit-dropin)")
    at.add_argument("name", metavar="NAME", help="the tunnel (its section needs app_slot)")
    dr = command("unit-dropin", "write the drop-in that sends a systemd service through a tunnel on every start")
    dr.add_argument("name", metavar="NAME", help="the tunnel (its section needs app_slot)")
    dr.add_argument("unit", metavar="UNIT", help="the service, e.g. transmission-daemon.service")
    dr.add_argument("--dir", default="/etc/systemd/system", help="where unit drop-ins live (default: %(default)s)")


def cmd_run(args, cfg):
    """Converge the tunnel first (_converge_app), so the program's traffic never finds no rule;
    then start the program in the tunnel's cgroup."""
    tunnel = _app_tunnel(args, cfg)
    command = list(args.cmd)
    while command[:1] and command[0].startswith("--user"):  # after NAME, where REMAINDER took it
        option = command.pop(0)
        args.user = option.partition("=")[2] if "=" in option else (command.pop(0) if command else "")
    command = command[1:] if command[:1] == ["--"] else command
    if not command:
        raise InputError("no command given: vpnsplit run NAME -- CMD [ARGS...]")
    user = cgroups.user_of(args.user)
    if not args.in_scope:
        _converge_app(tunnel, cfg)
        if cgroups.systemd_booted():
            argv = cgroups.scope_argv(tunnel, cfg.path, user, command)
            os.execvp(argv[0], argv)
    cgroups.start(tunnel, user, command, in_scope=args.in_scope)


def _app_tunnel(args, cfg):
    tunnel = cfg.tunnel(args.name)
    if tunnel.app_slot is None:
        raise InputError(f"tunnel {tunnel.name} has no app_slot: set app_slot = 1..15 in [tunnel.{tunnel.name}]")
    return tunnel


def _converge_app(tunnel, cfg):
    """The tunnel's current state, before a program joins it: as `up NAME` while a connection is
    recorded, else as `down NAME` (strict: fail closed). Never brings up a tunnel that is down."""
    from vpnsplit import cli

    connected = state.StateDir(state.dir_from()).record(tunnel.name).lease is not None
    (cli.cmd_up if connected else cli.cmd_down)(argparse.Namespace(all=False, name=tunnel.name), cfg)


def cmd_attach(args, cfg):
    tunnel = _app_tunnel(args, cfg)
    _converge_app(tunnel, cfg)
    log.info("cgroup %s goes through tunnel %s", cgroups.attach_own(tunnel), tunnel.name)


def cmd_unit_dropin(args, cfg):
    tunnel = _app_tunnel(args, cfg)
    if "/" in args.unit or not args.unit.endswith(".service"):
        raise InputError(f"{args.unit!r} is not a service name (a scope has no ExecStartPre=: list it in units)")
    path = os.path.join(args.dir, f"{args.unit}.d", f"vpnsplit-{tunnel.name}.conf")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(cgroups.dropin(tunnel, args.unit, shutil.which("vpnsplit") or "/usr/sbin/vpnsplit"))
    log.info("wrote %s: run systemctl daemon-reload; every start of %s now joins tunnel %s", path, args.unit, tunnel.name)


COMMANDS = {"run": cmd_run, "attach": cmd_attach, "unit-dropin": cmd_unit_dropin}
