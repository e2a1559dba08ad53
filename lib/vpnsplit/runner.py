"""What every entry point shares: logging to stderr, the lock, and turning errors into exit codes.

Hooks log one line per change and one line per error to stderr, which OpenVPN copies to
its log and systemd to the journal. No traceback ever reaches a user: an unexpected
exception is reported in one line (VPNSPLIT_DEBUG=1 shows the traceback).
"""

import contextlib
import logging
import os
import sys

from vpnsplit import config, state
from vpnsplit.errors import InputError, VpnsplitError
from vpnsplit.kernel import Kernel

log = logging.getLogger("vpnsplit")
CAP_NET_ADMIN = 12


def setup_logging(prefix, quiet=False):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def has_net_admin():
    """True when this process may change routing (CAP_NET_ADMIN in its effective set)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def lock_timeout(environ=os.environ):
    raw = environ.get("VPNSPLIT_LOCK_TIMEOUT")
    if raw is None:
        return state.DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
        if not 0 <= value <= 3600:
            raise ValueError
    except ValueError:
        raise InputError(f"$VPNSPLIT_LOCK_TIMEOUT {raw!r} is not a number of seconds (0-3600)") from None
    return value


def load_config(explicit=None):
    return config.load(config.path_from(explicit))


def prepare(environ=os.environ):
    """(the state directory, created and checked; the lock timeout) of a run that may change
    things, from *environ*. InputError if either is unusable: nothing has been changed."""
    statedir = state.StateDir(state.dir_from(environ))
    statedir.ensure()
    return statedir, lock_timeout(environ)


@contextlib.contextmanager
def session(prepared=None, changes_expected=lambda statedir: True):
    """The state directory, the lock and the kernel backends, for one run that may change things.

    *prepared* is what prepare() returned (by default it is called now). Writing needs
    pyroute2 (~0.15 s of CPU to import), reading does not. When *changes_expected*(statedir)
    says this run will probably write (say, its lease is not the recorded one), pyroute2 is
    loaded before queueing for the lock, so the lock is held only for the kernel work itself
    and concurrent runs drain quickly; a run that expects to find everything in place does
    without it, or loads it under the lock if wrong.
    """
    statedir, timeout = prepared or prepare()
    kernel = Kernel()
    try:
        if changes_expected(statedir):
            kernel.nl.connect()
        with statedir.lock(timeout):
            yield kernel, statedir
    finally:
        kernel.close()


def guarded(body, never_fail=False):
    """Run *body*() and map the outcome to an exit code; *never_fail* (down hooks) always gives 0."""
    try:
        code = body() or 0
    except VpnsplitError as e:
        log.error("%s", e)
        code = e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        code = 130
    except Exception as e:  # a bug: one line for the user, the traceback only on request
        if os.environ.get("VPNSPLIT_DEBUG"):
            raise
        log.error("internal error: %s: %s (run with VPNSPLIT_DEBUG=1 for a traceback)", type(e).__name__, e)
        code = 1
    if never_fail and code:
        log.error("exiting 0 anyway so the VPN client can finish its teardown")
        return 0
    return code
