"""Every program a test session spawns must be one tests/programs.py's scan knows, so the
install-hygiene guard (tests/unit/test_apt_packages.py) checks the packages of all of them."""

import os
import sys
import sysconfig

from tests import programs

_spawned = {}


def _from_our_code():
    """True when the tests or the bench spawn it, not a library (pyroute2 0.7's import runs
    `uname -p` through the platform module, which does without it): the first frame outside
    the standard library decides."""
    frame = sys._getframe(2)
    while frame and (frame.f_code.co_filename.startswith((_STDLIB, "<")) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return bool(frame) and frame.f_code.co_filename.startswith(_OURS)


_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
_OURS = tuple(str(programs.REPO / top) + os.sep for top in programs.SOURCES)


def _record(event, args):
    if event == "subprocess.Popen" and _from_our_code():
        argv = [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else a for a in args[1]] \
            if isinstance(args[1], (list, tuple)) else [os.fsdecode(args[1])]
        for prog in programs.heads(argv):
            _spawned.setdefault(prog, " ".join(map(str, argv))[:160])


sys.addaudithook(_record)


def _real(prog):
    path = programs.resolve(prog)
    return os.path.realpath(path) if path else prog


def pytest_sessionfinish(session):
    known = {_real(p) for p in programs.scan()}
    unknown = {p: argv for p, argv in _spawned.items() if _real(p) not in known and not programs.is_ours(p)}
    if unknown:
        lines = [f"  {p} (in: {argv})" for p, argv in sorted(unknown.items())]
        sys.stderr.write("install hygiene: the tests spawned programs tests/programs.py's scan does not see\n"
                         "(name them where the scan reads them, or in NAMED_ELSEWHERE):\n" + "\n".join(lines) + "\n")
        session.exitstatus = 1
