"""The hook entry points: `up`/`down` for OpenVPN, `wg-up`/`wg-down` for wg-quick.

hooks/vpnsplit-hook (a tiny sh script, because OpenVPN gives hooks no PATH) execs
`python -I -m vpnsplit.hooks /path/of/HOOK ARGS...` (or a bare HOOK name). `up` exits non-zero on failure so the VPN
client stops (OpenVPN runs no down after a failed up, so up has already rolled back);
`down` always exits 0, because a failing wg-quick PreDown would leave the interface up.
"""

import logging
import os
import sys
from typing import NamedTuple

from vpnsplit import addresses, config, dns, engine, openvpn, owned, runner
from vpnsplit.errors import InputError
from vpnsplit.lease import Lease

log = logging.getLogger("vpnsplit")
HOOKS = ("up", "down", "wg-up", "wg-down")


class Call(NamedTuple):
    """A hook call that passed validation."""

    tunnel: config.Tunnel
    tunnels: dict  # every configured tunnel, by name
    lease: Lease | None  # what OpenVPN's up passed; None for down and wg-quick (read off the device)
    prepared: tuple  # runner.prepare()'s (state directory, lock timeout)
    dns: tuple = ()  # wg-up: the resolvers of wg-quick's `DNS =` line


class NoSection(InputError):
    """The hook's device (or its --tunnel NAME) has no section in the config: a down hook then tears
    down what a record of a tunnel gone from the config says vpnsplit applied on that device."""

    def __init__(self, message, device, name, tunnels):
        super().__init__(message)
        self.device, self.name, self.tunnels = device, name, tunnels


def validate(hook, argv, environ=os.environ):
    """Everything *hook* checks before its first kernel call: its arguments (and OpenVPN's
    environment), the config, which tunnel, the state directory and the lock timeout.
    Returns a Call; InputError names what is wrong, and nothing has been changed."""
    resolvers = ()
    if hook in ("up", "down"):
        where = "openvpn"  # the log prefix already names the hook
        parsed = openvpn.parse(argv, environ, want_lease=hook == "up")
        device, lease, opts = parsed.device, parsed.lease, {"tunnel": parsed.tunnel, "config": parsed.config}
    elif hook in ("wg-up", "wg-down"):
        where, lease = "wg-quick", None
        opts, rest = openvpn.split_words(argv, where, ("tunnel", "config", "wg-config"))
        if len(rest) != 1:
            raise InputError(f"{where}: expected exactly one interface name (wg-quick's %i), got {len(rest)} arguments")
        device = addresses.ifname(rest[0], f"{where} interface")
        if hook == "wg-up":  # the resolvers of wg-quick's `DNS =` line, when vpnsplit can find its config file
            resolvers = dns.from_wg_config(dns.wg_config_path(device, opts.get("wg-config")), required="wg-config" in opts)
    else:
        raise InputError(f"no hook {hook!r} (known: {', '.join(HOOKS)})")
    cfg = config.load(config.path_from(opts.get("config"), environ))
    name = opts.get("tunnel")
    try:
        tunnel = _tunnel(cfg, device, name, where)
    except InputError as e:
        if name in cfg.tunnels or name is None and any(t.device == device for t in cfg.tunnels.values()):
            raise
        raise NoSection(str(e), device, name, cfg.tunnels) from None
    return Call(tunnel, cfg.tunnels, lease, runner.prepare(environ), resolvers)


def _tunnel(cfg, device, name, where):
    if name is None:
        return cfg.tunnel_for_device(device, where)
    tunnel = cfg.tunnel(name, where)
    if tunnel.device != device:
        raise InputError(f"{where}: --tunnel {name} is configured for device {tunnel.device!r}, not {device!r}")
    return tunnel


def _down_root_hint(path):
    """The fix for a down without privileges, naming *path*: the hook file that ran."""
    import sysconfig  # only on this error path: it costs ~0.5 ms on every hook run

    plugin = f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}/openvpn/plugins/openvpn-plugin-down-root.so"
    return (
        f"down runs without CAP_NET_ADMIN (uid {os.geteuid()}: OpenVPN 'user'/'group' dropped privileges); "
        f"nothing removed. Fix: replace 'down {path}' with "
        f"'plugin {plugin} {path}'. The next up cleans up meanwhile"
    )


def openvpn_up(args):
    call = validate("up", args)
    # the lease already recorded: probably a re-run with everything in place
    expected = lambda statedir: statedir.record(call.tunnel.name).lease != call.lease  # noqa: E731
    with runner.session(call.prepared, changes_expected=expected) as (kernel, statedir):
        changes = engine.up(kernel, statedir, call.tunnel, call.lease, call.tunnels)
    _report("up", call.tunnel, changes, call.lease)


def wg_up(args):
    call = validate("wg-up", args)
    with runner.session(call.prepared) as (kernel, statedir):
        # the peers' endpoints are the VPN servers a default VPN must keep out of the tunnel
        lease = kernel.device_lease(call.tunnel, servers=True, record=statedir.record(call.tunnel.name))._replace(dns=call.dns)
        changes = engine.up(kernel, statedir, call.tunnel, lease, call.tunnels)
    _report("up", call.tunnel, changes, lease)


def down(hook, args, path=None):
    """OpenVPN's down or wg-quick's PreDown: remove what up applied. *path*: the hook file that ran."""
    if not runner.has_net_admin():  # before the config: it may be unreadable to nobody too
        log.error("%s", _down_root_hint(path or f"/usr/lib/vpnsplit/{hook}"))
        return
    for problem in openvpn.six_problems(args) if hook == "down" else ():
        log.warning("%s", problem)  # logged, never blocking the teardown: down needs only the device
    try:
        call = validate(hook, args)
    except NoSection as e:
        return _down_gone(e)
    with runner.session(call.prepared) as (kernel, statedir):
        changes = engine.down(kernel, statedir, call.tunnel, call.tunnels)
    _report("down", call.tunnel, changes)


def _down_gone(e):
    """A down for a device whose section is gone from the config: tear its tunnel down from its record
    (--tunnel NAME's, else the gone tunnel's whose record names the device), as `vpnsplit down NAME` does."""
    with runner.session() as (kernel, statedir):
        gone = engine.gone(statedir, e.tunnels)
        names = [e.name] if e.name in gone else [] if e.name else [n for n in gone if owned.device(statedir.record(n)) == e.device]
        if not names:
            raise InputError(f"{e}; no record of a tunnel on {e.device} either: nothing to remove")
        changes = engine.teardown(kernel, statedir, names, list(e.tunnels.values()))
    log.info("tunnel %s on %s: its section is gone from the config; removed what its record says vpnsplit applied: %s",
             ", ".join(names), e.device, f"{len(changes)} change(s)" if changes else "nothing was left")


def _report(what, tunnel, changes, lease=None):
    addrs = " ".join(str(a) for a in lease.locals) if lease else ""
    summary = f"{len(changes)} change(s)" if changes else "already in place"
    log.info("tunnel %s %s on %s%s (table %s): %s", tunnel.name, what, tunnel.device, f" {addrs}" if addrs else "", tunnel.table, summary)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else ""
    hook = os.path.basename(path)
    runner.setup_logging(f"vpnsplit {hook}".strip())
    if hook not in HOOKS:
        log.error("usage: python -m vpnsplit.hooks {%s} ARGS... (normally run through hooks/%s)", ",".join(HOOKS), hook or "up")
        return 2
    body = {"up": openvpn_up, "wg-up": wg_up}.get(hook, lambda args: down(hook, args, path if "/" in path else None))
    return runner.guarded(lambda: body(argv[1:]), never_fail=hook.endswith("down"))


if __name__ == "__main__":
    sys.exit(main())
