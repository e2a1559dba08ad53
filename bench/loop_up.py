"""Re-apply every configured tunnel in ONE process: one lock, one Kernel() (one netlink
socket, one libnftables context), engine.up per tunnel with the lease `vpnsplit up` would use.

This stands in for `vpnsplit up --all` where that command does not exist (yet): same
engine, but still one nft transaction and one rule dump per tunnel.
Run as: VPNSPLIT_CONFIG=... VPNSPLIT_STATE_DIR=... .venv/bin/python3 -I bench/loop_up.py
"""

import sys

from vpnsplit import engine, runner


def main():
    runner.setup_logging("loop_up", quiet=True)

    def body():
        cfg = runner.load_config()
        with runner.session() as (kernel, statedir):
            for tunnel in cfg.tunnels.values():
                engine.up(kernel, statedir, tunnel, kernel.current_lease(tunnel, statedir.record(tunnel.name).lease))

    return runner.guarded(body)


if __name__ == "__main__":
    sys.exit(main())
