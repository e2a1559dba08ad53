"""pytest fixtures for the lab scenarios: `pki` (once per session) and `lab` (per test).

Import them into a test module (`from tests.lab.fixtures import lab, pki`). Tests using
them should carry `pytestmark = pytest.mark.lab`; without root or the VPN software they
skip with the reason instead of failing.
"""

import os
import shutil

import pytest

from .lab import VPNSPLIT, Lab
from .pki import make_pki

NEEDED = ("ip", "nft", "openvpn", "openssl", "wg", "wg-quick", "wireguard-go", "dnsmasq", "dig", "getent")


def missing_reason():
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (they create network namespaces)"
    missing = [tool for tool in NEEDED if not shutil.which(tool)]
    if missing:
        return f"lab tests need {', '.join(missing)} (make deps installs them: openvpn wireguard-tools wireguard-go nftables dnsmasq-base bind9-dnsutils)"
    if not os.path.exists("/dev/net/tun"):
        return "lab tests need /dev/net/tun"
    if not os.access(VPNSPLIT, os.X_OK):
        return f"no {VPNSPLIT}: run 'make dev' first"
    return None


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def lab(pki):
    with Lab(pki) as lab:
        yield lab
