"""Per-device forwarding, read and written through /proc/sys (no sysctl(8), no shell), and
the steps that switch it for a tunnel's forwarded sources.

Forwarding decides on the device a packet arrives on, so forwarded sources need it on the
device they arrive on and on the tunnel (for the replies). vpnsplit switches it on only
there, only where it was off, and records which devices it switched, so that down switches
exactly those back.

The per-device switch is net.ipv4.conf.DEV.forwarding for IPv4 and, for IPv6,
net.ipv6.conf.DEV.force_forwarding (Linux 6.17+): net.ipv6.conf.DEV.forwarding is no
switch at all (only all.forwarding forwards) and would stop DEV accepting router
advertisements; force_forwarding leaves that alone. Writing net.ipv6.conf.all.forwarding
= 0 (even when it is 0 already) resets force_forwarding on every device. Older kernels
have only the host-wide all.forwarding, which vpnsplit reads and leaves to the admin.
"""

import logging
import os

from vpnsplit.transaction import Step

log = logging.getLogger("vpnsplit")
PROC = "/proc/sys/net"
# the per-device switches vpnsplit turns on, and what a step calls them: forwarding for forwarded sources, by
# IP version, and "mark": IPv4 src_valid_mark on the default VPN's tunnel, so that the reverse-path check of
# its redirected DNS replies uses their mark (dnsnat.py), and on a per-app tunnel for its programs' replies (appsnat.py);
# "localnet": IPv4 route_localnet on a per-app tunnel, so that a program's DNS to a stub on 127.0.0.0/8, redirected to
# the tunnel's resolver (dns.DnsApp), may leave by it with its loopback source until SNAT (appsnat.py)
SWITCH = {4: "forwarding", 6: "force_forwarding", "mark": "src_valid_mark", "localnet": "route_localnet"}
SWITCH_NAME = {4: "IPv4 forwarding", 6: "IPv6 forwarding (force_forwarding)",
               "mark": "src_valid_mark (the reverse-path check of marked replies: the default VPN's DNS, per-app programs')",
               "localnet": "route_localnet (per-app programs' DNS to a stub on 127.0.0.0/8, redirected into the tunnel)"}


def _path(version, device, key):
    return os.path.join(PROC, "ipv6" if version == 6 else "ipv4", "conf", device, key)


def _flag(version, device, key):
    """True/False for net.ipvVERSION.conf.DEVICE.KEY; None if it does not exist."""
    try:
        with open(_path(version, device, key)) as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return None


def switch(device, version):
    """The per-device forwarding switch of *device* for IP *version*; None if the device
    (or, for IPv6 before Linux 6.17, the switch) does not exist."""
    return _flag(version, device, SWITCH[version])


def set_switch(device, version, on):
    """Set *device*'s switch for IP *version* to *on*. Idempotent: returns True only if it
    changed; a device that vanished (or a kernel without the switch) is not an error."""
    if switch(device, version) in (None, on):
        return False
    with open(_path(version, device, SWITCH[version]), "w") as f:
        f.write("1" if on else "0")
    return True


def per_device6():
    """True if this kernel has IPv6's per-device switch (force_forwarding, Linux 6.17+)."""
    return switch("all", 6) is not None


def all_forwarding6():
    """net.ipv6.conf.all.forwarding: the host-wide IPv6 switch (the admin's)."""
    return host_wide(6)


def host_wide(version):
    """net.ipvVERSION.conf.all.forwarding: the admin's host-wide switch (ip_forward for IPv4)."""
    return _flag(version, "all", "forwarding")


def forwarding(device, version):
    """Whether packets arriving on *device* are forwarded: for IPv4 its forwarding, for
    IPv6 all.forwarding or its force_forwarding; None if the device does not exist."""
    if version == 4:
        return switch(device, 4)
    if _flag(6, device, "forwarding") is None:
        return None
    return bool(all_forwarding6() or switch(device, 6))


def rp_filter(device):
    """The effective reverse-path filter on *device*: the kernel uses max(all, device).

    0 off, 1 strict, 2 loose; None if the device does not exist."""
    values = []
    for dev in ("all", device):
        try:
            with open(_path(4, dev, "rp_filter")) as f:
                values.append(int(f.read()))
        except (FileNotFoundError, ValueError):
            return None
    return max(values)


def _needed(kernel, tunnel, lease, version, is_default):
    """The devices that must forward IP *version* for *tunnel*'s sources with *lease* (none
    while down): where they arrive and the tunnel. IPv6: none if all.forwarding already
    forwards everywhere, or if the kernel has no per-device switch (then it warns).
    "mark": the tunnel itself while up and the default VPN (its DNS replies carry DNS_MARK) or per-app
    (the replies to its programs carry their mark)."""
    if version == "mark":
        return {tunnel.device} if (is_default or tunnel.app_slot is not None) and lease is not None else set()
    if version == "localnet":
        return {tunnel.device} if tunnel.app_slot is not None and lease is not None and lease.local4 else set()
    local = lease and (lease.local4 if version == 4 else lease.local6)
    if local is None or not any(n.version == version for n in tunnel.sources):
        return set()
    if version == 6:
        if all_forwarding6():
            return set()
        if not per_device6():
            log.warning("tunnel %s: IPv6 sources are not forwarded: set net.ipv6.conf.all.forwarding = 1 "
                        "(this kernel has no per-device net.ipv6.conf.DEV.force_forwarding, Linux 6.17+)", tunnel.name)
            return set()
    return {tunnel.device, *kernel.source_devices(tunnel, version)}


def switch_steps(kernel, switched_before, tunnel, lease, is_default=False, claimed=dict):
    """(steps switching forwarding back off, steps switching it on, {version: devices switched on after them}).

    Forwarding goes on where it is needed and off, and is recorded as vpnsplit's; where it
    is on already it is the admin's and stays (unless another tunnel's record claims it:
    *claimed*() gives {version: devices}; then this one claims it too). A device in *switched_before* (the
    record) found off (writing net.ipv6.conf.all.forwarding = 0 resets force_forwarding) is
    switched on again. Devices switched before but no longer needed (all of them on down)
    are switched back off, except while the host-wide switch (net.ipv4.conf.all.forwarding,
    net.ipv6.conf.all.forwarding) is on — writing ip_forward=1 rewrites every device's value,
    so "switched on after us" cannot be told per device — or while another tunnel claims the
    device. The caller records before switching on and after switching off, so a run killed
    in between leaves a record that claims too much, never too little: the next run finds a
    claimed device off and switches it on, or finds it off already."""
    offs, ons, switched = [], [], {v: set() for v in SWITCH}
    if not tunnel.sources and not is_default and tunnel.app_slot is None and not any(switched_before.values()):
        return offs, ons, switched  # the common case (no source subnets): not even /proc is read
    claimed = claimed()
    for version in SWITCH:
        was, need = set(switched_before.get(version, ())), _needed(kernel, tunnel, lease, version, is_default)
        others = claimed.get(version, set())
        switched[version] = (was | others) & need
        what = SWITCH_NAME[version]
        for dev in sorted(need):
            # the tunnel's bridge may be created by this very run (bridge.py), with the switch of the defaults
            if switch(dev, version) is False or dev == tunnel.bridge and switch(dev, version) is None:
                ons.append(Step(f"enable {what} on {dev}", lambda d=dev, v=version: set_switch(d, v, True),
                                lambda d=dev, v=version: set_switch(d, v, False)))
                switched[version].add(dev)
        if version in (4, 6) and host_wide(version):
            continue
        for dev in sorted(was - need - others):
            offs.append(Step(f"switch {what} on {dev} back off", lambda d=dev, v=version: set_switch(d, v, False),
                             lambda d=dev, v=version: set_switch(d, v, True)))
    return offs, ons, switched
