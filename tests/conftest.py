"""Every program a test session spawns must be one tests/programs.py's scan knows, so the
install-hygiene guard (tests/unit/test_apt_packages.py) checks the packages of all of them."""

import os
import sys

from tests import programs

_spawned = {}


def _record(event, args):
    if event == "subprocess.Popen":
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
