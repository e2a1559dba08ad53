"""The Lab: the network plus the VPN servers/clients, probes and captures scenarios use.

    with Lab(pki_dir) as lab:
        lab.write_vpnsplit_config(ovpn=dict(device="tun0", table=100, priority=1000, alias="10.192.8.1"))
        lab.openvpn_server("subnet"); lab.openvpn_client("client.conf")
        assert lab.whoami("10.192.8.1") == "10.8.0.2"   # what the far end saw

Everything lives in namespaces and a temporary directory that exit removes, also when a
test fails. Set VPNSPLIT_LAB_KEEP=1 to keep the directory (logs, configs) for a post-mortem.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import openvpn, wireguard
from .netns import ISP_LINK, TARGET, Network, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = os.path.join(REPO, "hooks")
CONFIGS = os.path.join(REPO, "configs")
VPNSPLIT = os.path.join(REPO, ".venv", "bin", "vpnsplit")
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
PROBE_PORT = 7000
# The Debian package's paths; with them the hooks use its config and state directory.
INSTALLED = {"hooks": "/usr/lib/vpnsplit", "vpnsplit": "/usr/sbin/vpnsplit"}


def toml(tunnels):
    """Render {name: {key: value}} as vpnsplit's `[tunnel.NAME]` TOML (str, int, bool values)."""
    out = []
    for name, keys in tunnels.items():
        out.append(f"[tunnel.{name}]")
        for key, value in keys.items():
            rendered = str(value).lower() if isinstance(value, bool) else value if isinstance(value, int) else json.dumps(value)
            out.append(f"{key} = {rendered}")
        out.append("")
    return "\n".join(out)


class Lab(Network):
    def __init__(self, pki_dir, installed=False):
        """*installed*: drive the installed package (INSTALLED, /etc/vpnsplit/vpnsplit.toml,
        /run/vpnsplit) instead of the checkout's hooks with the lab's own config and state."""
        super().__init__()
        self.pki_dir = pki_dir
        self.installed = installed
        self.hooks, self.vpnsplit_cmd = (INSTALLED["hooks"], INSTALLED["vpnsplit"]) if installed else (HOOKS, VPNSPLIT)
        self.dir = None
        self.servers, self.clients, self.wgs, self.listeners = [], [], [], []

    # -- lifecycle ------------------------------------------------------------------------
    def build(self):
        self.dir = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        # 0755 so an OpenVPN hook running as nobody (privilege drop) can still read its
        # config: what it cannot do is then vpnsplit's own business to explain.
        os.chmod(self.dir, 0o755)
        self.state_dir = os.path.join(self.dir, "state")
        self.vpnsplit_config = os.path.join(self.dir, "vpnsplit.toml")
        super().build()

    def teardown(self):
        """Stop clients first (their down hooks run), then everything else. Never raises."""
        for client in self.clients:
            _quietly(client.stop)
        for wg in self.wgs:
            if wg.is_up:
                _quietly(lambda: wg.down(check=False))
        for proc in self.listeners:
            proc.kill()
            proc.wait()
        super().teardown()
        for wg in self.wgs:
            wg.remove_socket()
        if self.dir and not os.environ.get("VPNSPLIT_LAB_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text, mode=0o644):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    # -- vpnsplit -------------------------------------------------------------------------
    @property
    def hook_env(self):
        """What wg-quick passes through to its hooks (OpenVPN gets the same via --setenv)."""
        if self.installed:
            return {}
        return {"VPNSPLIT_CONFIG": self.vpnsplit_config, "VPNSPLIT_STATE_DIR": self.state_dir}

    def write_vpnsplit_config(self, **tunnels):
        """The lab's vpnsplit.toml, one keyword per `[tunnel.NAME]` section."""
        return self.write("vpnsplit.toml", toml(tunnels))

    def vpnsplit(self, *args, check=True):
        """Run the vpnsplit CLI inside the host namespace with the lab's config and state."""
        env = [f"{k}={v}" for k, v in self.hook_env.items()]
        return run(self.argv("host", ["env", *env, self.vpnsplit_cmd, *args]),
                   check=check)

    # -- OpenVPN --------------------------------------------------------------------------
    def openvpn_server(self, mode="subnet", address=None, ipv6=False, address6=None, push=(), **start):
        """Start a server in `vpn`; *address* (and *address6*, with *ipv6*) pins the addresses
        the client gets (ccd); *push*: options it pushes besides redirect-gateway."""
        ccd = self.path("ccd")
        os.makedirs(ccd, exist_ok=True)
        if address:
            self.openvpn_server_address(mode, address, address6)
        conf = self.write(f"server-{mode}.conf", openvpn.server_config(mode, ccd, ipv6, push=push))
        server = openvpn.OpenVPN(self, "vpn", f"server-{mode}", conf, self.pki_dir)
        self.servers.append(server)
        return server.start(**start)

    def openvpn_server_address(self, mode, address, address6=None):
        """Pin the address(es) the server gives the lab client from its next connect on."""
        openvpn.write_ccd(self.path("ccd"), mode, address, address6)

    def openvpn_client(self, example="client.conf", options=(), replace=None, **start):
        """Start configs/openvpn/EXAMPLE in `host`, wired to the lab's vpnsplit config; *replace*:
        {line as the example has it: what a scenario puts instead} (a line that must be there)."""
        text = openvpn.client_config(os.path.join(CONFIGS, "openvpn", example), self.hooks)
        for old, new in (replace or {}).items():
            assert f"\n{old}\n" in text, f"{example} has no line {old!r}"
            text = text.replace(f"\n{old}\n", f"\n{new}\n")
        conf = self.write(f"client-{len(self.clients)}.conf", text)
        setenv = [w for k, v in self.hook_env.items() for w in ("--setenv", k, v)]
        client = openvpn.OpenVPN(self, "host", f"client-{len(self.clients)}", conf, self.pki_dir,
                                 [*setenv, *options])
        self.clients.append(client)
        return client.start(**start)

    # -- WireGuard ------------------------------------------------------------------------
    def wireguard_pair(self, example="wg0.conf", tag="0", endpoint_host=None):
        """A wg-quick server in `vpn` and a client in `host` from configs/wireguard/EXAMPLE
        (*endpoint_host*: the client's Endpoint names the server so, e.g. by a host name).

        Returns (client, server) WgQuick objects; the server is up, the client is not.
        """
        client_name, server_name = wireguard.interface_names(tag)
        c_priv, c_pub = wireguard.keypair()
        s_priv, s_pub = wireguard.keypair()
        endpoint = {"endpoint": f"{endpoint_host}:{wireguard.PORT}"} if endpoint_host else {}
        text = wireguard.client_config(os.path.join(CONFIGS, "wireguard", example), self.hooks, c_priv, s_pub, **endpoint)
        client = wireguard.WgQuick(self, "host", self.write(f"{client_name}.conf", text, 0o600), self.hook_env)
        server_text = wireguard.server_config(s_priv, c_pub, wireguard.addresses_in(text))
        server = wireguard.WgQuick(self, "vpn", self.write(f"{server_name}.conf", server_text, 0o600))
        self.wgs += [client, server]
        server.up()
        return client, server

    # -- probes ---------------------------------------------------------------------------
    def listen(self, role="vpn", addresses=(TARGET,), port=PROBE_PORT):
        """Start the who-am-I listener in *role* on *addresses*; its log stays in the lab directory."""
        log = open(self.path(f"listener-{role}-{port}.log"), "w+")
        proc = self.popen(role, [sys.executable, PROBE, "serve", str(port), *addresses],
                          stdout=log, stderr=subprocess.STDOUT)
        self.listeners.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            log.seek(0)
            if "ready" in log.read():
                return proc
            time.sleep(0.02)
        raise RuntimeError(f"listener in {role} did not start")

    def whoami(self, src, dst=TARGET, proto="tcp", port=PROBE_PORT, role="host", timeout=3.0):
        """Connect from *src* to the listener at *dst*: the address it saw, or 'error ERRNO'."""
        argv = [sys.executable, PROBE, "ask", proto, src, dst, str(port), str(timeout)]
        return self.run(role, argv, check=False).stdout.strip()

    # -- observing ------------------------------------------------------------------------
    def rules(self, role="host", family="-4"):
        return self.ip(role, family, "rule", "show")

    def routes(self, table, role="host", family="-4"):
        return self.ip(role, family, "route", "show", "table", str(table), check=False)

    def nft_ruleset(self, role="host"):
        return self.run(role, ["nft", "list", "ruleset"]).stdout

    def default_route(self, role="host", like="0.0.0.0"):
        """The default routes of *like*'s family, without IPv6's "metric 1024 pref medium"."""
        out = self.ip(role, "-6" if ":" in like else "-4", "route", "show", "default")
        return "\n".join(line.split(" metric ")[0] for line in out.strip().splitlines())

    def address_of(self, device, role="host", family="-4"):
        """The first global address of *family* on *device* (the tunnel's dynamic address), or None."""
        out = self.run(role, ["ip", "-j", family, "addr", "show", "dev", device, "scope", "global"], check=False).stdout
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                return a["local"]
        return None

    def isp_counter(self, sources, port=PROBE_PORT):
        return IspCounter(self, sources, port)

    def diagnostics(self):
        """The host's routing state and the VPN logs: what a failing test prints."""
        parts = [
            ("ip rule", self.rules()), ("ip -6 rule", self.rules(family="-6")),
            ("ip route show table all (host)", self.ip("host", "route", "show", "table", "all", check=False)),
            ("ip addr (host)", self.ip("host", "-br", "addr", check=False)),
            ("nft list ruleset (host)", self.run("host", ["nft", "list", "ruleset"], check=False).stdout),
        ]
        parts += [(f"log {p.name}", p.log()[-3000:]) for p in [*self.clients, *self.servers]]
        parts += [(f"wg-quick {w.ifname}", (w.last.stdout + w.last.stderr)[-2000:]) for w in self.wgs if w.last]
        return "\n".join(f"--- {title}\n{text.rstrip()}" for title, text in parts)


class IspCounter:
    """nft counters on the isp router's link to the host: packets to the probe port, per source.

    This is what left the host on the plain (untunnelled) path: a counter that stays at zero
    means no packet of that source reached the provider's router at all.
    """

    TABLE = "labcapture"

    def __init__(self, lab, sources, port=PROBE_PORT):
        self.lab, self.sources = lab, list(sources)
        rules = "".join(
            f'    iifname "{ISP_LINK}" {"ip6" if ":" in src else "ip"} saddr {src} meta l4proto {{ tcp, udp }} th dport {port} counter comment "{src}"\n'
            for src in self.sources)
        rules += f'    iifname "{ISP_LINK}" meta l4proto {{ tcp, udp }} th dport {port} counter comment "any"\n'
        spec = (f"table inet {self.TABLE} {{\n  chain seen {{\n    type filter hook prerouting priority -300; policy accept;\n"
                f"{rules}  }}\n}}\n")
        lab.run("isp", ["nft", "-f", "-"], input=spec)

    def counts(self):
        """{source or 'any': packets}."""
        out = self.lab.run("isp", ["nft", "-j", "list", "table", "inet", self.TABLE]).stdout
        counts = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule:
                packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
                counts[rule["comment"]] = packets
        return counts

    def __getitem__(self, source):
        return self.counts()[source]

    def remove(self):
        self.lab.run("isp", ["nft", "delete", "table", "inet", self.TABLE])


def _quietly(fn):
    try:
        fn()
    except Exception as e:  # teardown must go on; the test itself reports what broke
        print(f"lab teardown: {e}", file=sys.stderr)
