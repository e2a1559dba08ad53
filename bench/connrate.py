"""New TCP connections per second, bounded in time and count (iperf3 cannot measure this).

    python3 bench/connrate.py server ADDR PORT SECONDS    accept and close, for at most SECONDS
    python3 bench/connrate.py client SRC DST PORT SECONDS MAX
        connect from SRC (bound, port chosen by the kernel), close with RST (SO_LINGER 0:
        no TIME_WAIT, so ports recycle), for SECONDS or MAX connections; prints JSON with
        the rate and this process's CPU time (user+system) per connection.

Each connection is a full handshake plus RST through the namespaces, so every one of them
takes the route lookup (ip rules), a conntrack entry and the SNAT map lookup.
"""

import json
import resource
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
    r0 = resource.getrusage(resource.RUSAGE_SELF)
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
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime  # hardly moves with others' load
    return {"connections": n, "failed": failed, "seconds": dt, "per_second": n / dt, "cpu_us_per_connection": cpu / n * 1e6}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "server":
        result = server(args[0], int(args[1]), float(args[2]))
    else:
        result = client(args[0], args[1], int(args[2]), float(args[3]), int(args[4]))
    print(json.dumps(result))
