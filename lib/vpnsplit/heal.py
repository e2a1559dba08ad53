"""The watcher's policy: what it converges to, how often it may heal, and how it tells a fight."""

import logging
import time

from vpnsplit import default_vpn, engine, events

log = logging.getLogger("vpnsplit")

# engine steps that write vpnsplit's own state files, not the kernel: no heal by themselves
BOOKKEEPING = ("record state", "remove state")


def targets(kernel, statedir, tunnels):
    """(targets, default, waiting, gone) for engine.converge: the state `vpnsplit check` compares against.

    A tunnel with a recorded lease goes up with the lease its device carries, as `vpnsplit up
    NAME` does (the recorded one, or the device's new address keeping the recorded servers);
    one without goes down (with strict: its fail-closed skeleton stays). A recorded tunnel
    whose device is absent or carries no address is left as it is and named in *waiting*:
    its VPN client is reconnecting or died, and its hooks, or the device coming back, decide
    (with strict its table's unreachable default keeps it closed meanwhile). So is one whose
    record is damaged: healing the others must not wait for it. The default VPN follows its
    tunnel, as in `vpnsplit up --all`; and *gone* names the tunnels gone from the config, torn down from
    their records as `up --all` does.
    """
    chosen = default_vpn.chosen(statedir, tunnels)
    out, waiting = [], []
    for tunnel in tunnels.values():
        record = statedir.record(tunnel.name)
        recorded = record.lease
        if record.damage:
            waiting.append(f"{tunnel.name} ({record.damage})")
        elif recorded is None:
            out.append((tunnel, None))
        elif kernel.nl.link_index(tunnel.device) is None or not any(
                kernel.nl.device_addresses(tunnel.device, skip={tunnel.alias, tunnel.alias6})):
            waiting.append(f"{tunnel.name} (recorded up, but device {tunnel.device} is absent or has no address: "
                           f"waiting for the VPN client)")
        else:
            out.append((tunnel, kernel.current_lease(tunnel, record, servers=tunnel is chosen)))
    return out, next(((t, lease) for t, lease in out if t is chosen), None), waiting, engine.removable(kernel, statedir, tunnels)


class Budget:
    """A token bucket for converges: *burst* at once, then one per *period* seconds."""

    def __init__(self, burst, period):
        self.burst, self.period = burst, period
        self.tokens, self.at = float(burst), time.monotonic()

    def _refill(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.period)
        self.at = now
        return now

    def next_at(self):
        """When the next converge may run (0: now)."""
        now = self._refill()
        return 0.0 if self.tokens >= 1 else now + (1 - self.tokens) * self.period

    def spend(self):
        self._refill()
        self.tokens = max(0.0, self.tokens - 1)


class Backoff:
    """Seconds to wait before retrying a failed converge: 1, 2, 4 ... up to a minute."""

    FIRST, LAST = 1.0, 60.0

    def __init__(self):
        self.reset()

    def reset(self):
        self.delay = self.FIRST

    def next(self):
        delay, self.delay = self.delay, min(self.delay * 2, self.LAST)
        return delay


class Fights:
    """An object put back TIMES times within WINDOW periods is being fought over: another
    program keeps undoing it. Such heals get one log line per period between them."""

    TIMES, WINDOW = 3, 3  # a steady fight's heals are one period apart: three fall within three periods

    def __init__(self, period):
        self.period = period
        self.healed, self.logged = {}, None

    def heal(self, names, now, cause):
        """Note a heal of the objects *names*. None: no fight; "": a fight already told this
        period; else the line telling it."""
        window = self.WINDOW * self.period
        self.healed = {n: ts for n, ts in self.healed.items() if now - ts[-1] < window}
        for name in names:
            self.healed[name] = [t for t in self.healed.get(name, []) if now - t < window] + [now]
        fought = [n for n in names if len(self.healed[n]) >= self.TIMES]
        if not fought:
            return None
        if self.logged is not None and now - self.logged < self.period:
            return ""
        self.logged = now
        times = max(len(self.healed[n]) for n in fought)
        more = f" (and {len(fought) - 1} more object(s))" if len(fought) > 1 else ""
        return (f"fight: another program keeps undoing {_what(fought[0])}{more}: put back {times} times in the last "
                f"{window:g} s, last after {cause}; healing at most once per {self.period:g} s")


def _what(step):
    """The object a heal step names ("add rule from ... priority 1001" -> "rule from ... priority 1001")."""
    verb, _, rest = step.partition(" ")
    return rest if verb in ("add", "delete", "replace") else step


def cause(pending):
    """One line naming what woke the watcher: the first event, its program, how many others."""
    first = pending[0]
    text = first.what + (f" by {events.program(first.by)}" if first.by else "")
    others = len({e.what for e in pending}) - 1
    return text + (f" and {others} other change(s)" if others > 0 else "")
