"""The C library, for the calls Python's standard library lacks (bpf(2), inotify): loaded on first use,
as most runs make none of them."""

import ctypes
import functools
import os


@functools.cache
def _libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long  # bpf(2) returns file descriptors and ids, not pointers, but a long
    return lib


def call(name, *args):
    """libc's *name*(*args*); a negative return raises OSError with errno and its text."""
    rc = getattr(_libc(), name)(*args)
    if rc < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return rc
