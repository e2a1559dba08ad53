"""A "who am I" listener and a client bound to a chosen source address (stdlib only).

The lab runs this file as a script inside a namespace (`ip netns exec NS python probe.py`):

    serve PORT ADDR...    answer every TCP connection and UDP datagram to ADDR:PORT with
                          the source address the packet arrived from, and log
                          "tcp|udp ADDRESS" per peer on stdout
    ask PROTO SRC DST PORT [TIMEOUT]
                          bind to SRC, send to DST:PORT, print the answer; on failure print
                          "error ERRNO_NAME" and exit 1

So a test learns what the far end *saw*, which is the point: the answer proves that a
packet made it there and with which source address, whatever the routing tables claim.
"""

import errno
import ipaddress
import socket
import sys
import threading

TIMEOUT = 3.0


def _plain(address):
    """The peer address without a zone suffix, in canonical form."""
    return str(ipaddress.ip_address(address.split("%")[0]))


def _log(proto, peer):
    print(f"{proto} {peer}", flush=True)


def _bound(kind, address, port):
    """A socket bound to *address*: UDP answers must leave from the address that was asked
    (a wildcard socket would answer from whatever address routing picks)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    return sock


def _serve_tcp(address, port):
    srv = _bound(socket.SOCK_STREAM, address, port)
    srv.listen(16)
    while True:
        conn, addr = srv.accept()
        with conn:
            peer = _plain(addr[0])
            _log("tcp", peer)
            conn.sendall(peer.encode() + b"\n")


def _serve_udp(address, port):
    srv = _bound(socket.SOCK_DGRAM, address, port)
    while True:
        _, addr = srv.recvfrom(2048)
        peer = _plain(addr[0])
        _log("udp", peer)
        srv.sendto(peer.encode() + b"\n", addr)


def serve(port, addresses):
    for address in addresses:
        for target in (_serve_udp, _serve_tcp):
            threading.Thread(target=target, args=(address, port), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def ask(proto, src, dst, port, timeout=TIMEOUT):
    """Return the far end's answer (the address it saw). Raises OSError on failure."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        s.bind((src, 0))
        s.connect((dst, port))
        if proto == "tcp":
            return s.makefile().readline().strip()
        s.send(b"who am i")
        return s.recv(2048).decode().strip()


def main(argv):
    if argv[:1] == ["serve"]:
        serve(int(argv[1]), argv[2:])
    elif argv[:1] == ["ask"]:
        proto, src, dst, port = argv[1:5]
        timeout = float(argv[5]) if len(argv) > 5 else TIMEOUT
        try:
            print(ask(proto, src, dst, int(port), timeout))
        except socket.timeout:
            print("error ETIMEDOUT")
            return 1
        except OSError as e:
            print(f"error {errno.errorcode.get(e.errno, e.errno)}")
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
