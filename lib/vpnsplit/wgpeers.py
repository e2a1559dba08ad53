"""The VPN servers of a WireGuard interface: its peers' endpoints, read at up.

A host-wide default VPN must keep the tunnel's own packets to its server out of the
tunnel, and wg-quick tells its hooks only the interface name. Two ways to ask:

- the cross-platform userspace API (wireguard-go, boringtun): a UNIX stream socket
  SOCKET_DIR/IFNAME.sock; "get=1\\n\\n" answers with key=value lines, an "endpoint=IP:PORT"
  ("[IPv6]:PORT") per peer whose endpoint is known, then "errno=N" and an empty line;
- the kernel module's generic netlink family "wireguard" (pyroute2's WireGuard), only for
  a device of kind "wireguard".

The UAPI socket comes first. Only it is tested (the lab has no WireGuard kernel module:
wg-quick runs wireguard-go); the netlink path follows pyroute2's documented API.

The socket path is a plain filesystem path, NOT per network namespace: a wireguard-go in
another namespace with the same interface name would answer. The endpoints are taken at
up (the wg-up hook, `vpnsplit up NAME`, `vpnsplit default NAME`); after roaming or a
re-resolved Endpoint, run `vpnsplit up NAME` again to move the server exception.
"""

import ipaddress
import logging
import os
import socket
import stat

log = logging.getLogger("vpnsplit")

SOCKET_DIR = "/var/run/wireguard"
TIMEOUT = 5.0  # a wedged wireguard-go must not hold the lock (and the VPN client) forever
MAX_ANSWER = 1 << 20  # a get answer is ~200 bytes a peer


class WireGuardError(Exception):
    """The interface's endpoints could not be read."""


def with_endpoints(nl, lease):
    """*lease* with its servers replaced by the WireGuard endpoints of its device; unchanged
    if the device is no WireGuard interface (OpenVPN's trusted_ip stays) or cannot answer."""
    try:
        found = endpoints(nl, lease.device)
    except WireGuardError as e:
        log.warning("device %s: cannot read the WireGuard endpoints (%s): no server exception for the default VPN", lease.device, e)
        return lease
    return lease if found is None else lease._replace(servers=found)


def endpoints(nl, device):
    """The peers' endpoint addresses of WireGuard interface *device*, or None if it is none."""
    path = os.path.join(SOCKET_DIR, f"{device}.sock")
    try:
        is_socket = stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        is_socket = False
    if is_socket:
        try:
            return parse_uapi(_ask(path))
        except ConnectionRefusedError:
            pass  # left by a wireguard-go that died; wg(8) then asks the kernel too
    if nl.link_kind(device) == "wireguard":
        return _genl(device)
    return None


def _ask(path):
    """The answer to a get; ConnectionRefusedError when nothing listens on *path*."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
            s.sendall(b"get=1\n\n")
            answer = b""
            while not answer.endswith(b"\n\n") and len(answer) < MAX_ANSWER:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionRefusedError:
            raise
        except OSError as e:  # a timeout included: a wedged wireguard-go
            raise WireGuardError(f"{path}: {e.strerror or e}") from None
    return answer.decode(errors="replace")


def parse_uapi(text):
    """The endpoint addresses in a UAPI get answer, in order, without duplicates."""
    out, status = [], None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "endpoint":
            host = value.rpartition(":")[0].strip("[]").split("%")[0]
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                raise WireGuardError(f"endpoint {value!r} is not ADDRESS:PORT") from None
            if address not in out:
                out.append(address)
        elif key == "errno":
            status = value
    if status != "0":
        raise WireGuardError(f"answer ended with errno={status}" if status else "incomplete answer")
    return tuple(out)


def _genl(device):
    """Untested here (no kernel module in the lab): pyroute2's WireGuard.info()."""
    from pyroute2 import WireGuard
    from pyroute2.netlink.exceptions import NetlinkError

    out = []
    try:
        with WireGuard() as wg:
            for msg in wg.info(device):
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
                    address = endpoint and ipaddress.ip_address(endpoint["addr"])
                    if address and not address.is_unspecified and address not in out:
                        out.append(address)
    except (NetlinkError, OSError) as e:
        raise WireGuardError(f"generic netlink: {e}") from None
    return tuple(out)
