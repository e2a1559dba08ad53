"""wg-quick with wireguard-go inside the lab's namespaces.

There is no kernel WireGuard here, so wg-quick starts wireguard-go, which keeps its
control socket in /var/run/wireguard/IFNAME.sock: a path shared by every namespace.
Interface names therefore carry the process id (wg-quick takes the name from the config
file's stem), and the client config is the example configs/wireguard/wg0.conf with only
the install prefix, the keys and the endpoint filled in.
"""

import os
import re

from .netns import SERVER, run

PORT = 51820
SERVER_ADDR, SERVER_ADDR6 = "10.9.0.1", "fd09::1"
ENV = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}


def keypair():
    private = run(["wg", "genkey"]).stdout.strip()
    public = run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return private, public


def interface_names(tag):
    """(client, server) interface names unique on this machine, at most 15 characters."""
    return f"wgc{os.getpid()}{tag}"[:15], f"wgs{os.getpid()}{tag}"[:15]


def _set(text, key, value):
    """Replace the value of every `key = ...` line (a whole-line match, so PublicKey != PrivateKey)."""
    return re.sub(rf"(?m)^(\s*{key}\s*=\s*).*$", lambda m: m.group(1) + value, text)


def client_config(example_path, hooks_dir, private_key, server_public_key, endpoint=f"{SERVER}:{PORT}"):
    with open(example_path) as f:
        text = f.read().replace("/usr/lib/vpnsplit", hooks_dir)
    text = _set(text, "PrivateKey", private_key)
    text = _set(text, "PublicKey", server_public_key)
    return _set(text, "Endpoint", endpoint)


def server_config(private_key, client_public_key, client_addresses):
    return (
        "[Interface]\n"
        f"PrivateKey = {private_key}\nListenPort = {PORT}\nAddress = {SERVER_ADDR}/24, {SERVER_ADDR6}/64\n\n"
        "[Peer]\n"
        f"PublicKey = {client_public_key}\nAllowedIPs = {', '.join(client_addresses)}\n"
    )


def addresses_in(config_text):
    """The `Address =` entries of a wg-quick config, as /32 or /128 AllowedIPs for the server."""
    found = re.findall(r"(?m)^\s*Address\s*=\s*(.+)$", config_text)
    out = []
    for line in found:
        for item in line.split(","):
            addr = item.strip().split("/")[0]
            out.append(f"{addr}/128" if ":" in addr else f"{addr}/32")
    return out


class WgQuick:
    """One wg-quick interface (config file path, namespace) that can go up and down."""

    def __init__(self, net, role, config_path, env=None):
        self.net, self.role, self.config_path = net, role, config_path
        self.ifname = os.path.splitext(os.path.basename(config_path))[0]
        self.env = {**os.environ, **ENV, **(env or {})}
        self.last = None

    def up(self, check=True):
        self.last = self.net.run(self.role, ["wg-quick", "up", self.config_path], env=self.env, check=check)
        return self.last

    def down(self, check=True):
        self.last = self.net.run(self.role, ["wg-quick", "down", self.config_path], env=self.env, check=check)
        return self.last

    @property
    def is_up(self):
        return self.net.run(self.role, ["ip", "link", "show", self.ifname], check=False).returncode == 0

    def remove_socket(self):
        """wireguard-go removes its socket on a clean exit; after a SIGKILL we do it."""
        try:
            os.unlink(f"/var/run/wireguard/{self.ifname}.sock")
        except FileNotFoundError:
            pass
