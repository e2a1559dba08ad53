"""New TCP connections per second, bounded in time and count (iperf3 cannot measure this).

    python3 bench/connrate.py server ADDR PORT SECONDS    accept and close, for at most SECONDS
    python3 bench/connrate.py client SRC DST PORT SECONDS MAX
        connect from SRC (bound, port chosen by the kernel), close with RST (SO_LINGER 0:
        no TIME_WAIT, so ports recycle), for SECONDS or MAX connections; prints JSON.

Each connection is a full handshake plus RST through the namespaces, so every one of them
takes the route lookup (ip rules), a conntrack entry and the SNAT map lookup.
"""

import json
import socket
import struct
import sys
import time

LINGER_RST = struct.pack("ii", 1, 0)


def server(addr, port, seconds):
    deadline = time.monotonic() + seconds
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(4096)
    s.settimeout(1.0)
    n = 0
    while time.monotonic() < deadline:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        c.close()
        n += 1
    return {"accepted": n}


def client(src, dst, port, seconds, limit):
    n = failed = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while n < limit:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.settimeout(2.0)
        try:
            s.bind((src, 0))
            s.connect((dst, port))
            n += 1
        except OSError:
            failed += 1
            if failed > 100:
                raise
        finally:
            s.close()
        if not n % 64 and time.perf_counter() > deadline:
            break
    dt = time.perf_counter() - t0
    return {"connections": n, "failed": failed, "seconds": dt, "per_second": n / dt}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "server":
        result = server(args[0], int(args[1]), float(args[2]))
    else:
        result = client(args[0], args[1], int(args[2]), float(args[3]), int(args[4]))
    print(json.dumps(result))
