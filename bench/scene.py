"""The scenes the benchmarks run in: configs, tunnel devices, OpenVPN's call, resets.

Addresses: tunnel addresses and aliases are 10.x inside our own namespaces only; the far
end of the packet-path tests is 203.0.113.1 (TEST-NET-3) and foreign rules use 198.18/15
sources (benchmarking range) -- nothing here ever leaves a namespace we created.
"""

from bench.core import HOOKS, PY, REPO, Netns

SHELL_UP = REPO / "bench/shell_up.sh"
LOOP_UP = REPO / "bench/loop_up.py"
VPNSPLIT = [PY, "-I", "-m", "vpnsplit"]
FLOOR = [PY, "-I", "-c", "import pyroute2, nftables, filelock"]
BARE = [PY, "-I", "-c", "pass"]


class Tun:
    """One configured tunnel: its [tunnel.NAME] section and the lease OpenVPN gives it."""

    def __init__(self, name, device, table, priority, alias, local, netmask="255.255.255.0"):
        self.name, self.device, self.table, self.priority, self.alias = name, device, table, priority, alias
        self.local, self.netmask = local, netmask
        self.prefix = sum(bin(int(o)).count("1") for o in netmask.split(".")) if netmask else 32

    def section(self):
        return (f'[tunnel.{self.name}]\ndevice = "{self.device}"\ntable = {self.table}\n'
                f'priority = {self.priority}\nalias = "{self.alias}"\n')

    def six(self):
        """OpenVPN's six positional arguments (topology subnet)."""
        return [self.device, "1500", "0", self.local, self.netmask, "init"]

    def ovpn_env(self, ns):
        """The environment OpenVPN gives an up script (no PATH), plus where our config is."""
        return {
            "dev": self.device, "dev_type": "tun", "tun_mtu": "1500", "script_type": "up", "script_context": "init",
            "ifconfig_local": self.local, "ifconfig_netmask": self.netmask, "verb": "3", "daemon": "0",
            "VPNSPLIT_CONFIG": str(ns.config), "VPNSPLIT_STATE_DIR": str(ns.state_dir),
        }

    def shell_env(self, ns):
        """The same call for bench/shell_up.sh: its per-tunnel settings come in the environment
        (where a shell user would hard-code them), its state goes to a directory of its own."""
        env = self.ovpn_env(ns)
        del env["VPNSPLIT_CONFIG"], env["VPNSPLIT_STATE_DIR"]
        env.update(NAME=self.name, TABLE=str(self.table), PRIO=str(self.priority), ALIAS=self.alias, STATE_DIR=str(ns.tmp / "shstate"))
        return env

    def hook_argv(self):
        return [HOOKS / "up", *self.six()]

    def shell_argv(self):
        return [SHELL_UP, *self.six()]


PROVIDER = Tun("provider", "tun0", 100, 1000, "10.192.8.1", "10.8.0.2")  # = configs/vpnsplit.toml


def many(n):
    """*n* tunnels t0..t{n-1}: device tunI, table 100+I, priority 1000+10*I, alias 10.192.I.1."""
    return [Tun(f"t{i}", f"tun{i}", 100 + i, 1000 + 10 * i, f"10.192.{i}.1", f"10.64.{i}.2") for i in range(n)]


def tunnel_ns(tag, tunnels, devices=None):
    """A namespace with *tunnels* configured and their tun devices up with their leases
    (as OpenVPN leaves them right before it runs the up script)."""
    ns = Netns(tag)
    ns.write_config("".join(t.section() + "\n" for t in tunnels))
    batch = []
    for t in tunnels if devices is None else devices:
        batch += [f"tuntap add {t.device} mode tun", f"link set {t.device} up", f"address add {t.local}/{t.prefix} dev {t.device}"]
    ns.call(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
    return ns


def reset_all(ns, tunnels):
    """Take away everything vpnsplit (or the shell script) added, for a cold first apply."""
    aliases = "\n".join(f"address del {t.alias}/32 dev {t.device}" for t in tunnels)
    ns.sh(
        "ip -4 rule flush proto 118; ip -6 rule flush proto 118\n"
        "ip -4 route flush table all proto 118; ip -6 route flush table all proto 118\n"
        f"printf '%s\\n' '{aliases}' | ip -force -batch - 2>/dev/null || :\n"
        "nft delete table inet vpnsplit 2>/dev/null || :\n"
        f"rm -rf '{ns.state_dir}' '{ns.tmp / 'shstate'}'\n"
    )


def foreign_rules(ns, count):
    """*count* rules another tool owns (proto static), below and above vpnsplit's priorities."""
    batch = []
    for i in range(count):
        src = f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        batch.append(f"rule add from {src}/32 lookup main priority {500 + i // 2 if i % 2 else 5000 + i} proto static")
    ns.call(["ip", "-batch", "-"], input="\n".join(batch) + "\n")


def up_all_in_one(ns, tunnels):
    """Apply *tunnels* in one vpnsplit process (bench/loop_up.py): used to build scenes."""
    ns.call([PY, "-I", LOOP_UP], env={"VPNSPLIT_CONFIG": str(ns.config), "VPNSPLIT_STATE_DIR": str(ns.state_dir)})
