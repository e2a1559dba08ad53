"""Issue 6 part 3: which tunnel `default = true` chooses, and the WireGuard endpoints read for it."""

import ipaddress

import pytest

from vpnsplit import config, plan, wgpeers


def choose(**sections):
    tunnels = config.parse({"tunnel": sections}).tunnels
    return [t.name for t in config.default_candidates(tunnels)]


def test_no_section_says_default_chooses_none():
    assert choose(a={"device": "tun0", "id": 1}, b={"device": "wg0", "id": 2}) == []


def test_one_section_says_default():
    assert choose(a={"device": "tun0", "id": 1}, b={"device": "wg0", "id": 2, "default": True}) == ["b"]


def test_several_default_the_lowest_id_wins_whatever_the_file_order():
    assert choose(c={"device": "tun2", "id": 9, "default": True}, a={"device": "tun0", "id": 3, "default": True},
                  b={"device": "tun1", "id": 5, "default": True})[0] == "a"


def test_an_explicit_priority_does_not_outrank_a_lower_id():
    # id 2 with an explicit priority 20000 still counts as id 2 (priority 10008), before id 3 (10012)
    assert choose(a={"device": "tun0", "id": 3, "default": True},
                  b={"device": "tun1", "id": 2, "priority": 20000, "default": True})[0] == "b"


def test_sections_without_id_count_by_priority():
    # priority 1000 is below every id-derived priority (10004+)
    assert choose(a={"device": "tun0", "id": 1, "default": True},
                  b={"device": "tun1", "table": 100, "priority": 1000, "default": True},
                  c={"device": "tun2", "table": 101, "priority": 900, "default": True}) == ["c", "b", "a"]


def test_equal_rank_falls_back_to_the_name():
    # m has no id and priority 10004: what z's id 1 derives (z's own rules sit at 20000)
    assert choose(z={"device": "tun0", "id": 1, "priority": 20000, "default": True},
                  m={"device": "tun1", "table": 300, "priority": 10004, "default": True}) == ["m", "z"]


def test_default_servers_are_read_back_from_the_rules_in_place():
    tunnel = config.parse({"tunnel": {"v": {"device": "tun0", "id": 1}}}).tunnels["v"]
    servers = [ipaddress.ip_address("203.0.113.2"), ipaddress.ip_address("2001:db8::2")]
    other = config.parse({"tunnel": {"w": {"device": "wg0", "id": 2}}}).tunnels["w"]
    state = plan.plan_default(tunnel, None, [ipaddress.ip_address("198.51.100.10")], servers)
    assert plan.default_servers(state, tunnel) == set(servers)
    assert plan.default_servers(state, other) == set()  # another tunnel's servers are not this one's


UAPI = """private_key=aa
listen_port=41414
public_key=bb
endpoint=203.0.113.2:51820
persistent_keepalive_interval=25
allowed_ip=0.0.0.0/0
public_key=cc
endpoint=[2001:db8::2]:51820
public_key=dd
endpoint=203.0.113.2:51821
public_key=ee
errno=0

"""


def test_uapi_answer_gives_every_peer_endpoint_once():
    assert wgpeers.parse_uapi(UAPI) == (ipaddress.ip_address("203.0.113.2"), ipaddress.ip_address("2001:db8::2"))


def test_uapi_peer_without_endpoint_gives_none():
    assert wgpeers.parse_uapi("private_key=aa\npublic_key=bb\nerrno=0\n\n") == ()


@pytest.mark.parametrize("text, named", [
    ("endpoint=203.0.113.2:51820\nerrno=2\n\n", "errno=2"),
    ("endpoint=203.0.113.2:51820\n", "incomplete"),
    ("endpoint=wg.example.net:51820\nerrno=0\n\n", "wg.example.net"),
])
def test_uapi_bad_answers_are_one_clear_error(text, named):
    with pytest.raises(wgpeers.WireGuardError, match=named):
        wgpeers.parse_uapi(text)
