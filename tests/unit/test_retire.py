"""A retired alias kept confined (retire.py), the pure part: its record form, its nft elements read back,
and which retired aliases a run considers and may confine."""

import ipaddress
import json

from vpnsplit import backstop, nftkinds, owned, plan
from vpnsplit.nftkinds import Listing
from vpnsplit.retire import Retired, candidates, confinable

OLD6 = Retired(6, "fd10:192::5", "tun0")


def test_a_retired_alias_round_trips_through_the_record_and_equals_no_other_kind():
    state = plan.State(nft=frozenset({OLD6, Retired(4, "10.192.8.5", "tun0"), backstop.Confine(*OLD6),
                                      plan.Guard(*OLD6)}))
    assert len(state.nft) == 4  # as plain tuples, three of them would be one
    assert owned.from_json(json.loads(json.dumps(owned.to_json(state))), "x") == state
    assert owned.describe(plan.State(nft=frozenset({OLD6}))) == "1 nft entry"


def _listing(sets):
    return Listing(sets=sets, chains=set(), rules={}, comments={})


def test_its_elements_are_a_confined_source_with_no_way_out_and_read_back_only_whole():
    kind = nftkinds.KINDS[Retired]
    assert kind.elements(OLD6) == [("confine_src6", "fd10:192::5"), ("retired6", {"concat": ["fd10:192::5", "tun0"]})]
    whole = _listing({"confine_src6": ["fd10:192::5"], "retired6": [{"concat": ["fd10:192::5", "tun0"]}]})
    assert kind.read(whole) == {OLD6}
    # no Confine is read from it: a confined source without a device of its own is none of the Confine kind's
    assert not backstop.entries(whole.sets)
    assert kind.read(_listing({"retired6": [{"concat": ["fd10:192::5", "tun0"]}]})) == set()  # half: absent
    # a half-present Confine is not taken for a retired alias
    assert kind.read(_listing({"confine_src6": ["fd10:192::5"]})) == set()
    delete = {"delete": nftkinds.obj("element", name="retired6", elem=[{"concat": ["fd10:192::5", "tun0"]}])}
    assert delete in kind.commands("delete", OLD6)


def test_a_run_considers_the_aliases_it_retires_and_the_retired_ones_recorded_that_nothing_wants():
    recorded = Retired(6, "fd10:192::9", "tun0")
    aliases = frozenset({plan.Address(6, "tun0", "fd10:192::5"), plan.Address(4, "lo", "10.192.8.5")})
    applied, left = plan.State(addresses=aliases, nft=frozenset({recorded})), plan.State(nft=frozenset({recorded}))
    retired = [ipaddress.ip_address("fd10:192::5"), ipaddress.ip_address("10.192.8.5")]
    assert candidates(applied, left, retired, "tun0") == {OLD6, Retired(4, "10.192.8.5", "tun0"), recorded}
    # a gone section whose record names no device: the alias's own
    assert Retired(4, "10.192.8.5", "lo") in candidates(applied, plan.State(), retired, None)
    # a recorded one that is not among what the run removes (*left*) is not reconsidered
    assert recorded not in candidates(applied, plan.State(), [], "tun0")


def test_an_address_held_again_wanted_or_in_a_source_subnet_is_not_confined():
    entries = {OLD6, Retired(6, "fd20:1::7", "tun0"), Retired(4, "10.192.8.5", "tun0"),
               Retired(4, "10.192.8.6", "tun0")}
    held, keep = {ipaddress.ip_address("10.192.8.5")}, {ipaddress.ip_address("10.192.8.6")}
    assert confinable(entries, held, keep, [ipaddress.ip_network("fd20:1::/64")]) == {OLD6}


def test_proc_net_addresses_are_read_as_the_kernel_lists_them():
    """/proc/net/{udp,raw,icmp}{,6} list each 32-bit word in host byte order (x86: little-endian); these are
    the lines a namespace listed for sockets bound to fd10::5 and 10.9.9.5."""
    import sys

    from vpnsplit import sockets

    if sys.byteorder != "little":
        return
    assert sockets._listed("000010FD000000000000000005000000") == ipaddress.ip_address("fd10::5")
    assert sockets._listed("0509090A") == ipaddress.ip_address("10.9.9.5")
