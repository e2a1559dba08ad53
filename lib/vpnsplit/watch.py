"""`vpnsplit watch`: put back what other programs take away, in the foreground.

The watcher blocks on its two netlink sockets (events.py), an inotify descriptor on the cgroup tree
when tunnels configure `cgroups`/`units` (cgwatch.py: a new one is attached at once, outside any
converge) and a signal pipe; nothing runs
while nothing changes. A foreign event that may touch what vpnsplit owns marks a converge
as due: the sockets are drained, and once they stay quiet for QUIET seconds (at most
MAX_DELAY after the first event) every tunnel is converged in one engine run under the
hooks' lock, to what `vpnsplit check` compares against (heal.targets). Its own writes wake
nothing: their notifications name its own netlink port or pid.

Heals are rate-limited (heal.Budget: a burst, then one per period) and a program that keeps
undoing the same object is named once per period (heal.Fights). A refused or failed
converge is logged once and retried with backoff; lost events (ENOBUFS) mean a full
converge, as every converge is. SIGTERM/SIGINT end it at once, SIGHUP re-reads the config.
"""

import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import time

from vpnsplit import cgwatch, engine, events, heal, pidfile, runner, state
from vpnsplit.errors import InputError, LockTimeout, VpnsplitError, shown
from vpnsplit.kernel import Kernel

log = logging.getLogger("vpnsplit")

QUIET = 0.02  # seconds without a relevant event before converging (a sweep's events come back to back)
MAX_DELAY = 0.25  # ... but no longer than this after the first one
LOCK_SLICE = 0.2  # the lock is waited for in slices, so a signal ends the wait at once


class _Quiet(logging.Filter):
    """The engine logs each step it makes; the watcher sums a heal up in one line instead
    (Watcher.converge), and says a repeated warning once per DEDUPE seconds."""

    DEDUPE = 60.0

    def __init__(self):
        super().__init__()
        self.in_converge, self.said = False, {}

    def filter(self, record):
        if self.in_converge and record.levelno < logging.WARNING:
            return False
        text, now = record.getMessage(), time.monotonic()
        if now - self.said.get(text, -self.DEDUPE) < self.DEDUPE:
            return False
        if len(self.said) > 1000:  # a long-lived process: forget what no longer counts
            self.said = {t: at for t, at in self.said.items() if now - at < self.DEDUPE}
        self.said[text] = now
        return True


class Watcher:
    def __init__(self, config_path, cfg, statedir, budget, as_json=False):
        self.config_path, self.cfg, self.statedir = config_path, cfg, statedir
        self.budget, self.as_json = budget, as_json
        self.scope = events.Scope.of(cfg.tunnels)
        self.fights = heal.Fights(budget.period)
        self.pending, self.first = [events.Event("the watcher started")], time.monotonic()
        self.last = self.retry_at = 0.0
        self.backoff = heal.Backoff()
        self.stopped = self.reload = None
        self.stats = {"converges": 0, "heals": 0, "failures": 0, "events": 0, "attached": 0, "cpu_s": 0.0}
        self.cgw = None
        self.quiet = _Quiet()

    # -- the loop ------------------------------------------------------------------------------
    def run(self):
        for handler in log.handlers:
            handler.addFilter(self.quiet)
        wake_r, wake_w = socket.socketpair()
        for s in (wake_r, wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        listener = events.Listener()
        self.kernel = Kernel()
        self.own = set()  # the writer's netlink port, known once its first request bound it
        self.poller = select.poll()
        for fd in (wake_r.fileno(), *listener.fds):
            self.poller.register(fd, select.POLLIN)
        self._watch_cgroups()
        log.info("watching %d tunnel(s) in %s (heals: a burst of %d, then one per %g s)", len(self.cfg.tunnels),
                 shown(self.cfg.path), self.budget.burst, self.budget.period)
        try:
            while self.stopped is None:
                due = self._due()
                timeout = None if due is None else max(0, int((due - time.monotonic()) * 1000) + 1)
                for fd, _ in self.poller.poll(timeout):
                    if fd == wake_r.fileno():
                        _drain(wake_r)
                    elif self.cgw is not None and fd == self.cgw.fd:
                        self._attached(self.cgw.drain())
                    else:
                        self._note(listener.drain(fd, self.scope, self.own))
                if self.reload:
                    self._reload()
                if self.stopped is None and self.pending and time.monotonic() >= (self._due() or 0):
                    self.converge()
        finally:
            listener.close()
            if self.cgw is not None:
                self.cgw.close()
            self.kernel.close()
            signal.set_wakeup_fd(-1)
        log.info("stopped by %s after %d converge(s), %d heal(s), %d event(s)", self.stopped, self.stats["converges"],
                 self.stats["heals"], self.stats["events"])
        self._emit({"stopped": self.stopped, **self.stats})
        return 130 if self.stopped == "SIGINT" else 0

    def _signal(self, signum, _frame):
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stopped = signal.Signals(signum).name

    def _note(self, found):
        if not found:
            return
        now = time.monotonic()
        if not self.pending:
            self.first = now
        self.pending += found
        self.last, self.retry_at = now, 0.0  # a new event may be what a failed converge waited for
        self.stats["events"] += len(found)

    def _due(self):
        """When the pending converge may run (None: nothing pending)."""
        if not self.pending:
            return None
        settled = min(self.last + QUIET, self.first + MAX_DELAY)
        return max(settled, self.budget.next_at(), self.retry_at)

    def _reload(self):
        self.reload = False
        try:
            self.cfg = runner.load_config(self.config_path)
        except InputError as e:
            log.error("SIGHUP: %s; keeping the configuration read before", e)
            return
        self.scope = events.Scope.of(self.cfg.tunnels)
        self._watch_cgroups()
        log.info("SIGHUP: re-read %s (%d tunnel(s))", shown(self.cfg.path), len(self.cfg.tunnels))
        self._note([events.Event("SIGHUP: the configuration was re-read")])

    def _watch_cgroups(self):
        """(Re)start watching the cgroup tree for the configured cgroups and units."""
        if self.cgw is not None:
            self.poller.unregister(self.cgw.fd)
            self.cgw.close()
        self.cgw = cgwatch.CgroupWatch.of(self.cfg.tunnels)
        if self.cgw is not None:
            self.poller.register(self.cgw.fd, select.POLLIN)
            self._attached(self.cgw.start())

    def _attached(self, done):
        for tunnel, what, path, seconds, before in done:
            self.stats["attached"] += 1
            log.info("tunnel %s: %s (%s) appeared: its socket-mark program attached in %.1f ms", tunnel, what, path,
                     seconds * 1e3)
            if before:  # the window cgwatch.py describes
                log.warning("tunnel %s: %d process(es) entered %s before its program was attached: sockets they made "
                            "before stay outside the tunnel (restart them; vpnsplit unit-dropin has no such window)",
                            tunnel, before, path)
            self._emit({"attached": path, "tunnel": tunnel, "what": what, "at": time.time(), "ms": round(seconds * 1e3, 3),
                        "processes": before})

    # -- one converge --------------------------------------------------------------------------
    def converge(self):
        cause, count = heal.cause(self.pending), len(self.pending)
        self.pending = []
        self.budget.spend()
        self.stats["converges"] += 1
        wall, cpu = time.monotonic(), time.process_time()
        changes, error, waiting = [], None, []
        try:
            with self._locked():
                self.kernel.invalidate()
                self.quiet.in_converge = True
                try:
                    targets, default, waiting, gone = heal.targets(self.kernel, self.statedir, self.cfg.tunnels)
                    changes = engine.converge(self.kernel, self.statedir, targets, default, gone=gone)
                finally:
                    self.own.add(events.own_port(self.kernel.nl.connect()))
                    self.quiet.in_converge = False
        except _Stopped:
            return
        except Exception as e:  # refused, failed (rolled back) or a bug: logged, retried, never fatal
            error = str(e) if isinstance(e, VpnsplitError) else f"internal error: {type(e).__name__}: {e}"
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        self.stats["cpu_s"] += cpu
        self._report(cause, count, changes, error, waiting, wall)
        self._emit({"converge": self.stats["converges"], "at": time.time(), "cause": cause, "events": count,
                    "error": error, "changes": len(changes), "ms": round(wall * 1e3, 2), "cpu_ms": round(cpu * 1e3, 2)})

    def _report(self, cause, count, changes, error, waiting, wall):
        if error:
            self.stats["failures"] += 1
            delay = self.backoff.next()
            self.retry_at = time.monotonic() + delay
            self.pending.append(events.Event(f"retry after: {error}"))
            log.error("converge failed (after %s): %s; retrying in %g s", cause, error, delay)
            return
        self.backoff.reset()
        for what in waiting:
            log.info("tunnel %s", what)
        healed = [c for c in changes if c not in heal.BOOKKEEPING]
        if not healed:
            return
        self.stats["heals"] += 1
        fought = self.fights.heal(healed, time.monotonic(), cause)
        if fought is not None:  # a fight: its line once per period, not a line per heal
            if fought:
                log.warning("%s", fought)
            return
        more = f" (+{len(healed) - 3} more)" if len(healed) > 3 else ""
        log.info("healed %d object(s) in %.0f ms after %s%s: %s%s", len(healed), wall * 1000, cause,
                 f" ({count} events)" if count > 1 else "", "; ".join(healed[:3]), more)

    @contextlib.contextmanager
    def _locked(self):
        """The hooks' lock, waited for in slices so that SIGTERM ends the wait at once."""
        start = time.monotonic()
        with contextlib.ExitStack() as held:
            while True:
                try:
                    held.enter_context(self.statedir.lock(LOCK_SLICE))
                    break
                except LockTimeout:
                    if self.stopped is not None:
                        raise _Stopped() from None
                    if time.monotonic() - start > runner.lock_timeout():
                        raise
            yield

    def _emit(self, doc):
        if self.as_json:
            print(json.dumps(doc), flush=True)


class _Stopped(Exception):
    pass


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


SUMMARY = ("stay in the foreground, put back what other programs remove and attach per-app cgroups as they appear "
           "(SIGHUP: re-read the config)")


def add_arguments(p):
    p.add_argument("--burst", type=int, default=5, metavar="N", help="heals allowed back to back (default 5) ...")
    p.add_argument("--period", type=float, default=5.0, metavar="SECONDS",
                   help="... then at most one heal per SECONDS (default 5); a fight is logged once per period")
    p.add_argument("--json", action="store_true", help="a JSON line per converge (cause, changes, ms, cpu) and per new cgroup attached on stdout")


def main(args, cfg):
    """`vpnsplit watch`: the pid file, then the loop until a signal ends it."""
    if args.burst < 1 or not 0 < args.period <= 3600:
        raise InputError(f"vpnsplit watch: --burst {args.burst} --period {args.period:g}: "
                         f"the burst must be at least 1 and the period 0-3600 seconds")
    if not runner.has_net_admin():
        raise InputError("vpnsplit watch: needs CAP_NET_ADMIN (run it as root)")
    statedir = state.StateDir(state.dir_from())
    statedir.ensure()
    held = pidfile.claim(statedir)
    try:
        budget = heal.Budget(args.burst, args.period)
        return Watcher(args.config, cfg, statedir, budget, as_json=args.json).run()
    finally:
        os.close(held)
        sys.stdout.flush()
