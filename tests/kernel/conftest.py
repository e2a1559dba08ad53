import os
import shutil

import pytest

from tests.kernel.nslab import NetnsLab


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "kernel tests need root (they create network namespaces)"
    elif not shutil.which("ip") or not shutil.which("nft"):
        reason = "kernel tests need iproute2 and nftables"
    for item in items:
        item.add_marker(pytest.mark.kernel)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def ns(tmp_path):
    lab = NetnsLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
