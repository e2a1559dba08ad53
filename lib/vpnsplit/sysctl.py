"""Per-device IPv4 forwarding, read and written through /proc/sys (no sysctl(8), no shell).

Forwarding from source subnets needs it on the device they arrive on and on the tunnel
(for the replies). vpnsplit switches it on only there, and only where it was off, and
records which devices it switched so that down switches exactly those back.

IPv6 forwarding is only read: it is net.ipv6.conf.all.forwarding, host-wide (it also stops
the host accepting router advertisements unless accept_ra = 2), so it is the admin's to set.
"""

import os

ROOT = "/proc/sys/net/ipv4/conf"
ROOT6 = "/proc/sys/net/ipv6/conf"


def _path(device, key, root=ROOT):
    return os.path.join(root, device, key)


def forwarding(device, root=ROOT):
    """True/False for *device*'s IPv4 (root=ROOT6: IPv6) forwarding; None if the device does not exist."""
    try:
        with open(_path(device, "forwarding", root)) as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return None


def set_forwarding(device, on):
    """Switch IPv4 forwarding on *device*. Returns True if it changed; a vanished device is not an error."""
    if forwarding(device) in (None, on):
        return False
    with open(_path(device, "forwarding"), "w") as f:
        f.write("1" if on else "0")
    return True


def rp_filter(device):
    """The effective reverse-path filter on *device*: the kernel uses max(all, device).

    0 off, 1 strict, 2 loose; None if the device does not exist."""
    values = []
    for dev in ("all", device):
        try:
            with open(_path(dev, "rp_filter")) as f:
                values.append(int(f.read()))
        except (FileNotFoundError, ValueError):
            return None
    return max(values)
