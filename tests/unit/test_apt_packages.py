"""Install hygiene: every program the tests, the lab, the demo and the bench spawn is installed
by `make dev` (the Makefile's APT_PACKAGES, installed without Recommends) on a bare Debian."""

import pytest

from tests import programs

pytestmark = pytest.mark.skipif(programs.resolve("dpkg-query") is None, reason="needs dpkg (Debian)")


def test_the_scan_sees_the_programs_the_suites_are_known_to_spawn():
    # if this fails the scan broke, and the guard below would pass on nothing
    assert {"ip", "nft", "ping", "openvpn", "wg-quick", "wireguard-go", "tcpdump", "iperf3", "openssl",
            "sysctl", "unshare", "mount", "make"} <= set(programs.scan())


@pytest.mark.parametrize("prog", sorted(programs.scan()))
def test_each_spawned_program_comes_from_a_package_make_dev_installs(prog):
    where = programs.scan()[prog]
    path = programs.resolve(prog)
    assert path, f"{prog} (spawned in {where}) is not installed: which package provides it? add it to APT_PACKAGES"
    owner = programs.owner(path)
    assert owner, f"{path} (spawned in {where}) belongs to no Debian package (dpkg -S)"
    why = programs.provided_by_install(programs.apt_packages())
    assert owner in why, f"{path} (spawned in {where}) comes from {owner}, which APT_PACKAGES do not install"


def test_every_apt_get_install_skips_recommends():
    """wireguard-tools recommends a kernel image: with Recommends, make dev installed one."""
    files = [programs.REPO / "Makefile", *sorted((programs.REPO / ".ci").iterdir())]
    installs = [f"{f.name}: {line.strip()}" for f in files for line in f.read_text().splitlines()
                if "apt-get install" in line and not line.lstrip().startswith("#") and "`apt-get" not in line]
    assert installs and all("--no-install-recommends" in line for line in installs), installs
