"""The watcher's pid file: `vpnsplit watch` holds an flock on STATE_DIR/watch.pid while it
runs (so one watcher per state directory), and `vpnsplit status` asks whether anyone holds it.
The lock, not the pid written in the file, says whether a watcher is alive: a stale file
left by a killed watcher is held by nobody."""

import fcntl
import os
import stat

from vpnsplit.errors import InputError
from vpnsplit.state import StateError

PIDFILE = "watch.pid"


def watcher(statedir):
    """The pid of the watcher holding the pid file of *statedir*, or None when none runs."""
    try:
        fd = os.open(os.path.join(statedir.path, PIDFILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: a stale file
        except BlockingIOError:
            return int(os.read(fd, 32).strip() or 0) or None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def claim(statedir):
    """Hold the pid file of *statedir* for this process's lifetime; refuse if another watcher holds it."""
    path = os.path.join(statedir.path, PIDFILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StateError(f"pid file {path}: {e.strerror} (remove it if it is not a regular file)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"pid file {path}: not a regular file; remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise InputError(f"vpnsplit watch: another watcher (pid {other or '?'}) watches {statedir.path}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
