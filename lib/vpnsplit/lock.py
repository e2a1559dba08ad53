"""The one lock every vpnsplit run takes before touching the kernel: a file held with filelock."""

import logging
import os
import stat
import time

from vpnsplit.errors import LockTimeout, StateError, shown

LOCK_WAIT_REPORTED = 1.0  # a wait at least this long (seconds) gets a log line


def drop_planted(path):
    """Remove a lock path that is not a regular file (a planted symlink, FIFO...).

    Older filelock (Debian bookworm's 3.9) opens the lock with O_CREAT|O_TRUNC and follows
    a symlink, so as root it would truncate the link's target; newer ones refuse it with
    ELOOP and every run would fail. unlink never follows: the link goes, the target stays.
    """
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            return
        os.unlink(path)
    except OSError:
        pass  # absent (fine), or a directory: acquire() then names the problem


class Lock:
    """The lock file, held with filelock; *acquired*() runs once it is held."""

    def __init__(self, path, timeout, acquired=lambda: None):
        import filelock  # here: status and check take no lock

        self.path, self.timeout, self.acquired = path, timeout, acquired
        self._lock = filelock.FileLock(path, timeout=timeout)
        self._timeout_exc = filelock.Timeout

    def __enter__(self):
        start = time.monotonic()
        drop_planted(self.path)
        try:
            self._lock.acquire()
        except self._timeout_exc:
            raise LockTimeout(
                f"lock {shown(self.path)}: another vpnsplit run held it for more than {self.timeout:g}s; nothing was changed "
                f"(set VPNSPLIT_LOCK_TIMEOUT to wait longer)"
            ) from None
        except OSError as e:
            raise StateError(f"lock {shown(self.path)}: {e.strerror}") from None
        waited = time.monotonic() - start
        if waited >= LOCK_WAIT_REPORTED:
            logging.getLogger("vpnsplit").info("waited %.1fs for the lock %s (another vpnsplit run held it)", waited, shown(self.path))
        self.acquired()
        return self

    def __exit__(self, *exc):
        self._lock.release()
