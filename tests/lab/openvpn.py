"""OpenVPN 2.6 server and client processes inside the lab's namespaces.

The client always runs one of the example configs from configs/openvpn/ unchanged except
for the install prefix (/usr/lib/vpnsplit -> this checkout's hooks/): the lab only adds
options on the command line (`--cd` into the certificate directory, `--setenv` for
vpnsplit's config and state directory, and whatever a scenario varies, like --persist-tun).
"""

import ipaddress
import os
import re
import signal
import time

from .netns import SERVER, pid_alive

READY = "Initialization Sequence Completed"
FATAL = re.compile(r"Exiting due to fatal error")
CLIENT_CN = "vpnsplit-lab-client"
SERVER_POOL6 = "fd00:8::/64"  # server-ipv6: the server takes fd00:8::1

# Server modes: device, pool, and the `topology` line (tap has none).
MODES = {
    "subnet": ("tun0", "10.8.0.0", "topology subnet"),
    "net30": ("tun0", "10.8.1.0", "topology net30"),
    "p2p": ("tun0", "10.8.3.0", "topology p2p"),
    "tap": ("tap0", "10.8.2.0", ""),
}


def server_config(mode, ccd, ipv6=False, port=1194, push=()):
    """A minimal TLS server for *mode*; per-client addresses come from *ccd* if present; *push*:
    more options to push (e.g. "dhcp-option DNS 192.0.2.53")."""
    dev, pool, topology = MODES[mode]
    lines = [
        f"dev {dev}", "proto udp", f"local {SERVER}", f"port {port}", topology,
        f"server {pool} 255.255.255.0",
        "ca ca.crt", "cert server.crt", "key server.key", "dh none",
        f"client-config-dir {ccd}", "keepalive 2 10", "verb 3",
        # What a commercial provider pushes: the client configs must keep the host's
        # default route anyway (pull-filter ignore "redirect-gateway"), and the tests check it.
        'push "redirect-gateway def1"',
        *(f'push "{option}"' for option in push),
    ]
    if ipv6:
        lines.append(f"server-ipv6 {SERVER_POOL6}")
    return "\n".join(line for line in lines if line) + "\n"


def client_config(example_path, hooks_dir):
    """The example config text with only the install prefix pointed at *hooks_dir*."""
    with open(example_path) as f:
        return f.read().replace("/usr/lib/vpnsplit", hooks_dir)


class OpenVPN:
    """One daemonised openvpn in a namespace: log file, pid file, signals, readiness."""

    def __init__(self, net, role, name, config_path, cwd, options=()):
        self.net, self.role, self.name = net, role, name
        self.config_path, self.cwd, self.options = config_path, cwd, list(options)
        workdir = os.path.dirname(config_path)
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.pid_path = os.path.join(workdir, f"{name}.pid")
        self.pid = None

    def start(self, wait=True, timeout=20):
        """Start the daemon; by default wait for its first completed initialisation."""
        argv = ["openvpn", "--cd", self.cwd, "--config", self.config_path, "--daemon", self.name,
                "--log", self.log_path, "--writepid", self.pid_path, *self.options]
        self.net.run(self.role, argv, check=False)
        self.pid = self._read_pid()
        if wait:
            self.wait_ready(1, timeout)
        return self

    def _read_pid(self, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.pid_path) as f:
                    return int(f.read())
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no pid file\n{self.log()}")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return "(no log)"

    def ready_count(self):
        return self.log().count(READY)

    def wait_ready(self, count=1, timeout=20):
        """Wait until the log shows *count* completed initialisations (reconnects add one each)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_count() >= count:
                return
            if not pid_alive(self.pid) or FATAL.search(self.log()):
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not ready (wanted {count} x '{READY}')\n--- {self.log_path}\n{self.log()}")

    def send(self, sig):
        os.kill(self.pid, sig)

    def reconnect(self, sig=signal.SIGUSR1, timeout=30):
        """Send *sig* (SIGUSR1 or SIGHUP) and wait for the next completed initialisation."""
        count = self.ready_count()
        self.send(sig)
        self.wait_ready(count + 1, timeout)

    def stop(self, timeout=10):
        """SIGTERM and wait for the process to exit (its down hook has run by then)."""
        if self.pid is None or not pid_alive(self.pid):
            return
        self.send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: still running {timeout}s after SIGTERM\n{self.log()}")
            time.sleep(0.05)

    @property
    def running(self):
        return self.pid is not None and pid_alive(self.pid)


def write_ccd(ccd_dir, mode, address, address6=None):
    """Make the server give the lab client *address* (and *address6*, inside SERVER_POOL6) next
    time it connects. With ifconfig-push alone the IPv6 address still comes from the pool, and
    OpenVPN warns that this "does not work" (it is not tied to the client)."""
    peer = {"subnet": "255.255.255.0", "tap": "255.255.255.0"}.get(mode)
    if peer is None:  # net30/p2p: the pushed remote end is the address just below
        a, b, c, d = address.split(".")
        peer = f"{a}.{b}.{c}.{int(d) - 1}"
    lines = [f"ifconfig-push {address} {peer}"]
    if address6:
        lines.append(f"ifconfig-ipv6-push {address6}/64 {ipaddress.ip_network(SERVER_POOL6)[1]}")
    os.makedirs(ccd_dir, exist_ok=True)
    with open(os.path.join(ccd_dir, CLIENT_CN), "w") as f:
        f.write("".join(line + "\n" for line in lines))
