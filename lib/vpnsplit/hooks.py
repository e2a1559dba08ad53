"""The hook entry points: `up`/`down` for OpenVPN, `wg-up`/`wg-down` for wg-quick.

hooks/vpnsplit-hook (a tiny sh script, because OpenVPN gives hooks no PATH) execs
`python -I -m vpnsplit.hooks HOOK ARGS...`. `up` exits non-zero on failure so the VPN
client stops (OpenVPN runs no down after a failed up, so up has already rolled back);
`down` always exits 0, because a failing wg-quick PreDown would leave the interface up.
"""

import logging
import os
import sys

from vpnsplit import addresses, engine, openvpn, runner
from vpnsplit.errors import InputError

log = logging.getLogger("vpnsplit")
HOOKS = ("up", "down", "wg-up", "wg-down")


def _tunnel(cfg, device, name, where):
    if name is None:
        return cfg.tunnel_for_device(device, where)
    tunnel = cfg.tunnel(name, where)
    if tunnel.device != device:
        raise InputError(f"{where}: --tunnel {name} is configured for device {tunnel.device!r}, not {device!r}")
    return tunnel


def _down_root_hint():
    import sysconfig  # only on this error path: it costs ~0.5 ms on every hook run

    plugin = f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}/openvpn/plugins/openvpn-plugin-down-root.so"
    return (
        f"down runs without CAP_NET_ADMIN (uid {os.geteuid()}: OpenVPN 'user'/'group' dropped privileges); "
        f"nothing removed. Fix: replace 'down /usr/lib/vpnsplit/down' with "
        f"'plugin {plugin} /usr/lib/vpnsplit/down'. The next up cleans up meanwhile"
    )


def openvpn_up(args):
    call = openvpn.parse(args, os.environ)
    cfg = runner.load_config(call.config)
    tunnel = _tunnel(cfg, call.device, call.tunnel, "openvpn up")
    # the lease already recorded: probably a re-run with everything in place
    with runner.session(changes_expected=lambda statedir: statedir.record(tunnel.name).lease != call.lease) as (kernel, statedir):
        changes = engine.up(kernel, statedir, tunnel, call.lease, cfg.tunnels)
    _report("up", tunnel, changes, call.lease)


def openvpn_down(args):
    if not runner.has_net_admin():  # before the config: it may be unreadable to nobody too
        log.error("%s", _down_root_hint())
        return
    call = openvpn.parse(args, os.environ, want_lease=False)
    cfg = runner.load_config(call.config)
    _down(_tunnel(cfg, call.device, call.tunnel, "openvpn down"), cfg.tunnels)


def wg_up(args):
    opts, iface = _wg_args(args, "wg-up")
    cfg = runner.load_config(opts.get("config"))
    tunnel = _tunnel(cfg, iface, opts.get("tunnel"), "wg-up")
    with runner.session() as (kernel, statedir):
        # the peers' endpoints are the VPN servers a default VPN must keep out of the tunnel
        lease = kernel.device_lease(tunnel, servers=True)
        changes = engine.up(kernel, statedir, tunnel, lease, cfg.tunnels)
    _report("up", tunnel, changes, lease)


def wg_down(args):
    if not runner.has_net_admin():
        log.error("%s", _down_root_hint())
        return
    opts, iface = _wg_args(args, "wg-down")
    cfg = runner.load_config(opts.get("config"))
    _down(_tunnel(cfg, iface, opts.get("tunnel"), "wg-down"), cfg.tunnels)


def _wg_args(args, where):
    opts, rest = openvpn.split_words(args, where)
    if len(rest) != 1:
        raise InputError(f"{where}: expected exactly one interface name (wg-quick's %i), got {len(rest)} arguments")
    return opts, addresses.ifname(rest[0], f"{where} interface")


def _down(tunnel, tunnels):
    with runner.session() as (kernel, statedir):
        changes = engine.down(kernel, statedir, tunnel, tunnels)
    _report("down", tunnel, changes)


def _report(what, tunnel, changes, lease=None):
    addrs = " ".join(str(a) for a in lease.locals) if lease else ""
    summary = f"{len(changes)} change(s)" if changes else "already in place"
    log.info("tunnel %s %s on %s%s (table %s): %s", tunnel.name, what, tunnel.device, f" {addrs}" if addrs else "", tunnel.table, summary)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    hook = argv[0] if argv else ""
    runner.setup_logging(f"vpnsplit {hook}".strip())
    if hook not in HOOKS:
        log.error("usage: python -m vpnsplit.hooks {%s} ARGS... (normally run through hooks/%s)", ",".join(HOOKS), hook or "up")
        return 2
    body = {"up": openvpn_up, "down": openvpn_down, "wg-up": wg_up, "wg-down": wg_down}[hook]
    return runner.guarded(lambda: body(argv[1:]), never_fail=hook.endswith("down"))


if __name__ == "__main__":
    sys.exit(main())
