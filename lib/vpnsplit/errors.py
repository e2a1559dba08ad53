"""The three ways a run can end badly, each with its exit code, and how a value is shown in their one line.

Exit codes are part of the hook contract: OpenVPN and wg-quick only see the number,
and a person running `vpnsplit up NAME` by hand needs to know whether the kernel moved.
"""


class VpnsplitError(Exception):
    """Base class: a message meant for one line on stderr."""

    exit_code = 1


class InputError(VpnsplitError):
    """Bad arguments, environment or config. Raised before any kernel change."""

    exit_code = 2


class KernelError(VpnsplitError):
    """The kernel refused a step. What this run changed has been rolled back."""

    exit_code = 1


class StateError(VpnsplitError):
    """The state directory cannot be used (read-only, full)."""


class LockTimeout(VpnsplitError):
    """Another vpnsplit run held the lock too long. Nothing was changed."""

    exit_code = 1


def shown(text):
    """*text* as it may appear inside a one-line message: repr() when it holds a newline or
    other unprintable character (a path, a TOML key or a state file's content can), so an
    error stays one line."""
    return text if isinstance(text, str) and text.isprintable() else repr(text)
