"""Per-app tunnels without root: the socket-mark program's instructions, the mark layout, the plan's
rules and nft entries, the config keys, where cgroup2 is found."""

import copy
import ipaddress
import struct

import pytest

from tests.unit.test_plan import lease, tunnel
from vpnsplit import appexplain, apps, bpf, cgroups, config, dns, nftkinds, plan
from vpnsplit.errors import InputError

EVERY = {4: "0.0.0.0/0", 6: "::/0"}
appsnat = nftkinds.appsnat  # imported through nftkinds, which ties the kinds together


def test_the_program_stores_the_mark_in_bpf_sock_and_allows_the_socket():
    insns = [struct.unpack("<BBhi", bpf.program(0x83000000)[i:i + 8]) for i in range(0, 32, 8)]
    # r2 = 0x83000000 (32-bit mov, sign as the kernel reads imm); *(u32 *)(r1 + 16) = r2; r0 = 1; exit
    assert insns == [(0xB4, 0x02, 0, 0x83000000 - (1 << 32)), (0x63, 0x21, 16, 0), (0xB7, 0x00, 0, 1), (0x95, 0, 0, 0)]
    assert len(bpf.name_of(15)) < 16  # BPF_OBJ_NAME_LEN, with its NUL


def test_mark_layout_stays_clear_of_the_other_marks():
    assert [apps.mark(s) for s in (1, 15)] == [0x81000000, 0x8F000000]
    assert all(apps.mark(s) & 0x70FFFFFF == 0 for s in apps.SLOTS)  # REPLY, CLIENT, DNS marks and the low bits untouched
    assert [apps.slot_of(v) for v in (0x83000000, 0x83000000 | 0x10000000, 0x80000000, 0x03000000, 0)] == [3, 3, None, None, None]


def test_rules_and_entries_follow_strict_and_families():
    t = tunnel(app_slot=3, lan=["192.168.1.0/24"], sources=["10.20.1.0/24"])
    mark = dict(fwmark=0x83000000, fwmask=0x8F000000)
    app_rules = {r for r in plan.plan_down(t).rules if r.fwmask and not r.dport}
    assert app_rules == {plan.Rule(4, 1002, 254, EVERY[4], "192.168.1.0/24", **mark), plan.Rule(4, 1003, 100, EVERY[4], **mark),
                         plan.Rule(6, 1003, 100, EVERY[6], **mark)}
    # their DNS into the tunnel's table before the lan exception, whatever resolver it asks
    assert {r for r in plan.plan_down(t).rules if r.dport} == {
        plan.Rule(f, 1001, 100, EVERY[f], **mark, ipproto=p, dport=53) for f in (4, 6) for p in (6, 17)}
    assert {apps.AppConfine(0x83000000, "tun0"), apps.AppReach(4, 0x83000000, "192.168.1.0/24", "tun0")} <= plan.plan_down(t).nft
    loose = tunnel(app_slot=3, strict=False)
    assert not [r for r in plan.plan_down(loose).rules if r.fwmask] and not apps.confine(loose)
    assert {r for r in plan.plan_up(loose, lease()).rules if r.fwmask and not r.dport} == {plan.Rule(4, 1003, 100, EVERY[4], **mark)}
    assert not [r for r in plan.plan_down(tunnel()).rules if r.fwmask]


def test_dns_of_the_programs_goes_to_the_tunnels_resolver_or_is_refused():
    t = tunnel(app_slot=3, dns=["10.8.0.1", "fd00:8::1"])
    assert dns.plan_apps(t, lease()) == {dns.DnsApp(4, 0x83000000, "10.8.0.1"), dns.DnsApp(6, 0x83000000, "fd00:8::1")}
    assert dns.plan_apps(t, lease()) <= plan.plan_up(t, lease()).nft
    assert dns.DnsAppBlock(0x83000000) in plan.plan_down(t).nft and not {e for e in plan.plan_up(t, lease()).nft
                                                                        if isinstance(e, dns.DnsAppBlock)}
    assert not dns.plan_apps(tunnel(app_slot=3, strict=False), None) and not dns.plan_apps(tunnel(), lease())
    entries = dns.plan_apps(t, lease()) | {dns.DnsAppBlock(0x85000000)}
    listing = nftkinds.Listing({}, set(), {})
    for e in entries:
        for name, elem in nftkinds.KINDS[type(e)].elements(e):
            listing.sets.setdefault(name, []).append(elem)
    assert {x for e in entries for x in nftkinds.KINDS[type(e)].read(listing)} == entries


def test_nft_elements_read_back_as_the_entries():
    entries = {apps.AppConfine(0x83000000, "tun0"), apps.AppReach(4, 0x83000000, "192.168.1.0/24", "tun0"),
               apps.AppReach(6, 0x83000000, "2001:db8::1", "tun0")}
    listing = {}
    for e in entries:
        for name, elem in appsnat.elements(e):
            listing.setdefault(name, []).append(elem)
    assert appsnat.confines(listing) | appsnat.reaches(listing) == entries
    # a half-present entry (app_out without app_mark) counts as absent, and so do its reaches
    assert appsnat.confines({"app_out": listing["app_out"]}) == set() == appsnat.reaches({**listing, "app_mark": []})


@pytest.mark.parametrize("section, named", [
    ({"app_slot": 0}, "app_slot = 0 must be an integer 1-15"),
    ({"app_slot": 3.0}, "app_slot = 3.0"),
    ({"cgroups": ["a.slice"]}, "needs app_slot"),
    ({"app_slot": 1, "units": ["../x.service"]}, "units entry '../x.service'"),
    ({"app_slot": 1, "cgroups": ["/system.slice"]}, "cgroups entry '/system.slice'"),
    ({"app_slot": 1, "cgroups": "a"}, "must be a list"),
])
def test_config_refuses_bad_app_keys(section, named):
    with pytest.raises(InputError, match=named):
        config.parse({"tunnel": {"x": {"device": "tun0", "id": 1, **section}}})


def test_two_tunnels_never_share_a_slot_and_lan_needs_sources_or_a_slot():
    with pytest.raises(InputError, match="app_slot 2 is already used by"):
        config.parse({"tunnel": {"a": {"device": "tun0", "id": 1, "app_slot": 2}, "b": {"device": "tun1", "id": 2, "app_slot": 2}}})
    assert config.parse({"tunnel": {"a": {"device": "tun0", "id": 1, "app_slot": 2, "lan": ["192.168.1.0/24"]}}})
    with pytest.raises(InputError, match="lan = .* only applies to sources and programs"):
        config.parse({"tunnel": {"a": {"device": "tun0", "id": 1, "lan": ["192.168.1.0/24"]}}})


MOUNTS = {
    "unified": "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
    "hybrid": ("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
               "40 30 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"),
    "legacy": "31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
}


@pytest.mark.parametrize("layout, found", [("unified", "/sys/fs/cgroup"), ("hybrid", "/sys/fs/cgroup/unified"), ("legacy", None)])
def test_cgroup2_is_found_where_it_is_mounted(tmp_path, layout, found):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTS[layout])
    if found:
        assert cgroups.root(str(info)) == found
    else:
        with pytest.raises(InputError, match="none is mounted .*legacy"):
            cgroups.root(str(info))


def test_systemd_scope_reruns_vpnsplit_inside_it():
    t = tunnel(app_slot=3)
    argv = cgroups.scope_argv(t, "/etc/vpnsplit/vpnsplit.toml", None, ["firefox", "--new-window"])
    assert argv[:4] == ["systemd-run", "--scope", "--quiet", "--collect"]
    inner = argv[argv.index("--") + 1:]
    assert inner[1:] == ["-I", "-m", "vpnsplit", "run", "--config", "/etc/vpnsplit/vpnsplit.toml", "--in-scope", "p", "--",
                         "firefox", "--new-window"]



def test_status_finds_each_scope_of_vpnsplit_run_and_only_its_tunnels(tmp_path, monkeypatch):
    top = tmp_path / "cgroup"
    for scope in ("vpnsplit-p-12.scope", "vpnsplit-p-2-13.scope", "vpnsplit-p-x.scope", "cron.service"):
        (top / "system.slice" / scope).mkdir(parents=True)
    monkeypatch.setattr(cgroups, "systemd_booted", lambda: True)
    monkeypatch.setattr(cgroups.os, "getpid", lambda: 12)
    assert "--unit=vpnsplit-p-12.scope" in cgroups.scope_argv(tunnel(app_slot=3), "/etc/vpnsplit/vpnsplit.toml", None, ["x"])
    assert cgroups.run_cgroups(str(top), "p") == [("vpnsplit run vpnsplit-p-12.scope", str(top / "system.slice/vpnsplit-p-12.scope"))]
    assert [what for what, _ in cgroups.run_cgroups(str(top), "p-2")] == ["vpnsplit run vpnsplit-p-2-13.scope"]  # tunnel p-2's
    assert cgroups.run_cgroups(str(top), "other") == [("vpnsplit run", None)]
    monkeypatch.setattr(cgroups, "systemd_booted", lambda: False)
    assert cgroups.run_cgroups(str(top), "p") == [("vpnsplit run", str(top / "vpnsplit/p"))]


def test_the_apps_chain_as_nftables_1_1_lists_it_is_intact():
    """Debian 13's nftables 1.1.3 lists the lan rules' mask (a concatenation looked up in an interval
    set) byte-swapped, its bytecode being right; Debian 12's 1.0.6 lists it as loaded. Both are the
    chain; a chain with another mask, or a rule short, is not (check: damaged)."""
    from vpnsplit import nat

    wanted = appsnat.chain_rules()
    as_1_1 = copy.deepcopy(wanted)
    for rule in as_1_1[2:4]:  # `meta mark & 0x0000008f . ip daddr @app_to4 accept`, as 1.1.3 lists it
        rule[0]["match"]["left"]["concat"][0]["&"][1] = 0x8F
    assert nat._same(wanted, wanted) and nat._same(as_1_1, wanted)
    other = copy.deepcopy(wanted)
    other[2][0]["match"]["left"]["concat"][0]["&"][1] = 0x0F000000
    assert not nat._same(other, wanted) and not nat._same(wanted[:-1], wanted)


def _program(**dns):
    return {"cgroup": "/vpnsplit/vpn", "mark": 0x83000000, "marked_by": "/vpnsplit/vpn", "tunnel": "vpn", "dst": "198.51.100.1",
            "verdict": "unicast", "table": 10003, "device": "vpn0", "source": "10.8.0.2", "dns": dns}


def test_explain_program_shows_its_dns_redirect():
    text = appexplain.describe(_program(action="redirect", to="192.0.2.53", text="redirected to 192.0.2.53 (the tunnel's "
                                        "resolver), whatever resolver it asks: table 10003, dev vpn0, source 10.8.0.2"), "pid 7")
    assert text.splitlines()[-1] == ("  dns to 198.51.100.1 (port 53): redirected to 192.0.2.53 (the tunnel's resolver), "
                                     "whatever resolver it asks: table 10003, dev vpn0, source 10.8.0.2")
    down = appexplain.describe({**_program(action="refuse", to=None, text="refused at once (strict: the tunnel is down), "
                                           "whatever resolver it asks"), "verdict": "unreachable"}, "pid 7")
    assert down.splitlines()[1:] == ["  to 198.51.100.1: unreachable (strict: the tunnel is down; nothing leaves)",
                                     "  dns to 198.51.100.1 (port 53): refused at once (strict: the tunnel is down), whatever resolver it asks"]


def test_explain_program_dns_is_read_off_the_nft_entries(monkeypatch):
    """appexplain._dns: the DnsApp of the program's mark and DST's family, with the kernel's route to that resolver."""
    class Kernel:
        def __init__(self, entries):
            self.entries = entries

        def nat_view(self):
            return True, frozenset(self.entries)

    asked = []
    monkeypatch.setattr(appexplain, "_route", lambda kernel, dst, mark, **sel: asked.append((str(dst), mark, sel)) or {
        "verdict": "unicast", "table": 10003, "device": "vpn0", "source": "10.8.0.2"})
    mark, dst = 0x83000000, ipaddress.ip_address("198.51.100.1")
    entries = [dns.DnsApp(4, mark, "192.0.2.53"), dns.DnsApp(6, mark, "2001:db8:2::53"), dns.DnsApp(4, 0x84000000, "192.0.2.54")]
    got = appexplain._dns(Kernel(entries), mark, dst)
    assert (got["action"], got["to"], got["source"]) == ("redirect", "192.0.2.53", "10.8.0.2")
    assert asked == [("192.0.2.53", mark, {"ip_proto": 17, "dport": 53})]
    assert appexplain._dns(Kernel([dns.DnsAppBlock(mark)]), mark, dst)["action"] == "refuse"
    assert appexplain._dns(Kernel(entries), 0x85000000, dst)["action"] == "none"


def test_a_run_scope_is_named_after_its_tunnel_and_pid():
    t = config.Tunnel("a", "tun0", 100, 1000)
    assert cgroups._run_scope("/sys/fs/cgroup/system.slice/vpnsplit-a-4242.scope", t)
    assert not cgroups._run_scope("/sys/fs/cgroup/system.slice/vpnsplit-a-b-4242.scope", t)  # tunnel a-b's
    assert not cgroups._run_scope("/sys/fs/cgroup/system.slice/vpnsplit-a-4242.service", t)
