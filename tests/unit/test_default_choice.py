"""Issue 6 part 3: which tunnel `default = true` chooses, and the WireGuard endpoints read for it."""

import ipaddress

import pytest

from vpnsplit import config, default_vpn, plan, wgpeers


def choose(**sections):
    tunnels = config.parse({"tunnel": sections}).tunnels
    return [t.name for t in default_vpn.candidates(tunnels)]


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
    state = default_vpn.plan_rules(tunnel, None, [ipaddress.ip_address("198.51.100.10")], servers)
    assert default_vpn.servers_in_place(state, tunnel) == set(servers)
    assert default_vpn.servers_in_place(state, other) == set()  # another tunnel's servers are not this one's


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


class NotWireGuard:
    """A netlink stand-in: the device is of no kind (a tun device, say)."""

    def link_kind(self, device):
        return None


def serve_once(path, answer):
    """A one-shot UAPI server on *path* that checks the request and sends *answer*."""
    import socket
    import threading

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn, srv:
            request = b""
            while not request.endswith(b"\n\n"):
                request += conn.recv(64)
            conn.sendall(answer.encode() if request == b"get=1\n\n" else b"errno=22\n\n")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_endpoints_over_a_uapi_socket(tmp_path, monkeypatch):
    monkeypatch.setattr(wgpeers, "SOCKET_DIR", str(tmp_path))
    thread = serve_once(tmp_path / "wgx.sock", UAPI)
    assert wgpeers.endpoints(NotWireGuard(), "wgx") == (ipaddress.ip_address("203.0.113.2"), ipaddress.ip_address("2001:db8::2"))
    thread.join()


def test_no_socket_and_no_wireguard_device_is_not_wireguard(tmp_path, monkeypatch):
    from vpnsplit.lease import Lease

    monkeypatch.setattr(wgpeers, "SOCKET_DIR", str(tmp_path))
    lease = Lease(device="tun0", local4=ipaddress.ip_interface("10.8.0.2/24"), servers=(ipaddress.ip_address("203.0.113.2"),))
    assert wgpeers.endpoints(NotWireGuard(), "tun0") is None
    assert wgpeers.with_endpoints(NotWireGuard(), lease) is lease  # OpenVPN's trusted_ip stays


def test_a_stale_socket_counts_as_none(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(wgpeers, "SOCKET_DIR", str(tmp_path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(tmp_path / "wgx.sock"))  # bound, never listening: what a killed wireguard-go leaves
        assert wgpeers.endpoints(NotWireGuard(), "wgx") is None


def test_an_error_answer_keeps_the_lease_and_warns(tmp_path, monkeypatch, caplog):
    from vpnsplit.lease import Lease

    monkeypatch.setattr(wgpeers, "SOCKET_DIR", str(tmp_path))
    thread = serve_once(tmp_path / "wgx.sock", "errno=1\n\n")
    lease = Lease(device="wgx", local4=ipaddress.ip_interface("10.9.0.2/24"))
    assert wgpeers.with_endpoints(NotWireGuard(), lease) is lease
    assert "cannot read the WireGuard endpoints (answer ended with errno=1)" in caplog.text
    thread.join()


class _Kernel:
    """What default_vpn.desired asks of the kernel: the uplink's addresses, main's routes."""

    class nl:
        @staticmethod
        def uplink_addresses():
            return [ipaddress.ip_address("198.51.100.10")]

        @staticmethod
        def main_routes(family):
            return [(ipaddress.ip_network("198.51.100.0/24"), 2, 1, 2, None)] if family == 2 else []


def test_a_client_naming_no_server_keeps_the_exceptions_in_place():
    """wg-up with a wedged wireguard-go reads no endpoint: the server exception already in
    place must stay, or the client's own packets would loop into its tunnel."""
    from vpnsplit.lease import Lease

    tunnel = config.parse({"tunnel": {"vpn": {"device": "wg0", "id": 3}}}).tunnels["vpn"]
    lease = Lease(device="wg0", local4=ipaddress.ip_interface("10.9.0.2/24"), servers=(ipaddress.ip_address("203.0.113.7"),))
    current = default_vpn.desired(_Kernel, (tunnel, lease), plan.State())
    exceptions = {r.dst for r in current.rules if r.priority == plan.DEFAULT_PRIORITY + 2}
    assert exceptions == {"203.0.113.7/32"}
    unread = default_vpn.desired(_Kernel, (tunnel, lease._replace(servers=())), current)
    assert {r.dst for r in unread.rules if r.priority == plan.DEFAULT_PRIORITY + 2} == exceptions
    # a client that does name its server replaces the old exception
    moved = default_vpn.desired(_Kernel, (tunnel, lease._replace(servers=(ipaddress.ip_address("203.0.113.9"),))), current)
    assert {r.dst for r in moved.rules if r.priority == plan.DEFAULT_PRIORITY + 2} == {"203.0.113.9/32"}
