"""Steps that carry their undo, run in order, rolled back as a whole when one fails."""

import logging

from vpnsplit.errors import KernelError
from vpnsplit.nat import NftError
from vpnsplit.state import StateError

log = logging.getLogger("vpnsplit")


class Step:
    """One change and its undo. A plain class: a dataclass costs ~0.5 ms to define at every start."""

    __slots__ = ("name", "do", "undo")

    def __init__(self, name, do, undo):
        self.name = name
        self.do = do  # () -> bool: True if it changed something (so there is something to undo)
        self.undo = undo  # () -> None


def run(steps):
    """Run *steps* in order; on the first failure undo what ran, newest first, and raise
    KernelError naming the step. Returns the names of the steps that changed something.
    """
    if not steps:
        return []  # in place: nothing to do, and no need to load pyroute2 for its errors
    from pyroute2.netlink.exceptions import NetlinkError

    done = []
    for n, step in enumerate(steps, 1):
        try:
            changed = step.do()
        except (NetlinkError, NftError, StateError, OSError) as e:
            reason = e.args[1] if isinstance(e, NetlinkError) and len(e.args) > 1 else str(e)
            rolled = _rollback(done)
            raise KernelError(f"step {n}/{len(steps)} '{step.name}' failed: {reason}; {rolled}") from None
        if changed:
            log.info("%s", step.name)
            done.append(step)
    return [s.name for s in done]


def _rollback(done):
    if not done:
        return "nothing had been changed"
    failed = []
    for step in reversed(done):
        try:
            step.undo()
        except Exception as e:  # keep undoing the rest: a partial rollback beats none
            failed.append(f"{step.name} ({e})")
    if failed:
        return f"rolled back {len(done) - len(failed)} of {len(done)} steps; could not undo: " + "; ".join(failed)
    return f"rolled back the {len(done)} step(s) this run made"
