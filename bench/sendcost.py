"""CPU time per datagram sent: what each packet's path through the host costs its sender.

    python3 bench/sendcost.py SRC DST PORT COUNT

Sends COUNT 64-byte UDP datagrams from SRC (bound) to DST:PORT on one connected socket and
prints the process's CPU time (user+system) per datagram in ns. The sender pays for its packet's
whole way out (route lookup, netfilter hooks, the device), so a rule added on that way shows
up here per packet, where a connection's or a stream's figure would hide it in their noise.
"""

import resource
import socket
import sys


def main(src, dst, port, count):
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.connect((dst, int(port)))
    payload = b"x" * 64
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(int(count)):
        s.send(payload)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{cpu / int(count) * 1e9:.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
