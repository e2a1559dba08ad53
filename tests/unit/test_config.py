import ipaddress
from pathlib import Path

import pytest

from vpnsplit import config
from vpnsplit.errors import InputError

EXAMPLE = Path(__file__).resolve().parents[2] / "configs/vpnsplit.toml"


def test_example_config_loads_verbatim():
    cfg = config.load(str(EXAMPLE), check_owner=False)
    t = cfg.tunnels["provider"]
    assert (t.device, t.table, t.priority, t.alias, t.strict) == ("tun0", 100, 1000, ipaddress.ip_address("10.192.8.1"), True)
    assert cfg.tunnel_for_device("tun0", "test") is t
    assert t.alias_dev == "tun0"


def test_defaults():
    t = config.parse({"tunnel": {"x": {"device": "wg0", "table": 300, "priority": 3000}}}).tunnels["x"]
    assert t.strict is True and t.alias is None and t.alias_device is None and list(t.priorities) == [3000, 3001, 3002, 3003]


def test_unknown_device_names_the_known_ones():
    cfg = config.parse({"tunnel": {"x": {"device": "wg0", "table": 300, "priority": 3000}}})
    with pytest.raises(InputError, match=r"device 'tun9' has no \[tunnel\.\*\] section .*x \(device wg0\)"):
        cfg.tunnel_for_device("tun9", "openvpn up")


@pytest.mark.parametrize(
    "section, named",
    [
        ({"table": 100, "priority": 1000}, "missing required key 'device'"),
        ({"device": "tun0", "table": 256 ** 4, "priority": 1000}, "out of range"),
        ({"device": "tun0", "table": True, "priority": 1000}, "must be an integer"),
        ({"device": "tun0", "table": 100, "priority": 0}, "priority = 0"),
        ({"device": "tun0", "table": 100, "priority": 32764}, "priority = 32764"),
        ({"device": "tun0", "table": 100, "priority": 1000, "strict": "yes"}, "strict = 'yes'"),
        ({"device": "tun0", "table": 100, "priority": 1000, "alias": "127.0.0.5"}, "loopback"),
        ({"device": "tun0", "table": 100, "priority": 1000, "alias6": "10.0.0.1"}, "not an IPv6"),
        ({"device": "tun/0", "table": 100, "priority": 1000}, "'tun/0'"),
        ({"device": "tun0", "table": 100, "priority": 1000, "alias_device": ""}, "''"),
    ],
)
def test_bad_sections(section, named):
    with pytest.raises(InputError) as e:
        config.parse({"tunnel": {"p": section}})
    assert named in str(e.value)


def test_config_must_not_be_writable_by_others(tmp_path):
    path = tmp_path / "vpnsplit.toml"
    path.write_text(EXAMPLE.read_text())
    path.chmod(0o666)
    with pytest.raises(InputError, match="not group/world-writable"):
        config.load(str(path), check_owner=True)


def test_example_config_commented_section_is_valid():
    """The keys the example shows in comments (IPv6 ones included) parse once uncommented."""
    import tomllib

    text = EXAMPLE.read_text()
    block = text[text.index("# [tunnel.containers]"):]
    t = config.parse(tomllib.loads("\n".join(line[2:] for line in block.splitlines()))).tunnels["containers"]
    assert {n.version for n in (*t.sources, *t.lan)} == {4, 6} and t.alias6 and t.gateway6


REPO = Path(__file__).resolve().parents[2]


def test_priority_leaves_the_default_vpns_mark_rules_free():
    """A tunnel's rules end at or below 31989: 31990-31992 are the default VPN's mark and DNS rules."""
    section = {"device": "tun0", "table": 100, "priority": 31986}
    assert config.parse({"tunnel": {"a": section}}).tunnels["a"].priorities[-1] == 31989
    with pytest.raises(InputError, match=r"priority = 31987 .* within 1-31989 \(31990-31992 are reserved"):
        config.parse({"tunnel": {"a": {**section, "priority": 31987}}})


def test_readme_states_the_limits_the_code_enforces():
    readme = (REPO / "README.md").read_text()
    assert f"P+3 ≤ {config.PRIORITY_LAST}" in readme
    # troubleshooting item 4: --tunnel does not rescue a bare `dev tun` that picked another number
    item4 = readme[readme.index("\n4. OpenVPN log says"):readme.index("\n5. ")]
    assert "`--tunnel NAME` does not rescue it" in item4 and "dev tun0" in item4


def test_a_symlinked_config_is_refused_saying_so(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text('[tunnel.a]\ndevice = "tun0"\ntable = 100\npriority = 1000\n')
    (tmp_path / "link.toml").symlink_to(real)
    with pytest.raises(InputError) as e:
        config.load(str(tmp_path / "link.toml"), check_owner=False)
    assert "is a symbolic link, which vpnsplit refuses" in str(e.value) and "Too many levels" not in str(e.value)
