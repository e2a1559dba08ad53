"""The vpnsplit lab: real OpenVPN / wg-quick tunnels in throwaway network namespaces.

Used by tests/test_lab_*.py (pytest fixtures in tests/lab/fixtures.py) and by
`python -m tests.lab.demo` (`make demo`). See tests/lab/netns.py for the topology.
"""

from .lab import CONFIGS, HOOKS, PROBE_PORT, REPO, VPNSPLIT, IspCounter, Lab, toml
from .netns import HOST_ADDR, ISP_LAN, LAN_NEIGHBOUR, SERVER, TARGET, CommandFailed, Network
from .pki import make_pki

__all__ = [
    "CONFIGS", "HOOKS", "PROBE_PORT", "REPO", "VPNSPLIT", "IspCounter", "Lab", "toml",
    "HOST_ADDR", "ISP_LAN", "LAN_NEIGHBOUR", "SERVER", "TARGET", "CommandFailed", "Network", "make_pki",
]
