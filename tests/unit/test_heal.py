"""The watcher's heal policy without a kernel: the rate limit, the backoff, telling a fight."""

from vpnsplit import heal
from vpnsplit.events import Event

RULE = "add rule from 10.192.8.1/32 lookup 100 priority 1001"


def test_budget_allows_a_burst_then_one_per_period(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(heal.time, "monotonic", lambda: now[0])
    budget = heal.Budget(burst=3, period=5.0)
    for _ in range(3):
        assert budget.next_at() == 0.0
        budget.spend()
    assert budget.next_at() == 105.0
    now[0] = 105.0
    assert budget.next_at() == 0.0
    budget.spend()
    now[0] = 1000.0  # idle: the burst refills, no further
    assert budget.next_at() == 0.0
    for _ in range(3):
        budget.spend()
    assert budget.next_at() == 1005.0


def test_backoff_doubles_up_to_a_minute_and_resets():
    b = heal.Backoff()
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next() == 1


def test_a_fight_is_told_once_per_period_naming_the_object():
    fights = heal.Fights(period=5.0)
    assert fights.heal([RULE], 0.0, "x") is None
    assert fights.heal([RULE], 1.0, "x") is None
    told = fights.heal([RULE], 2.0, "rule removed by netlink port 7")
    assert told.startswith("fight: another program keeps undoing rule from 10.192.8.1/32 lookup 100 priority 1001:")
    assert "3 times" in told and "rule removed by netlink port 7" in told
    assert fights.heal([RULE], 6.0, "x") == ""  # within the period: already told
    assert fights.heal([RULE], 7.5, "x").startswith("fight:")
    # heals far apart (a DHCP renew an hour later) are no fight
    assert fights.heal([RULE], 3600.0, "x") is None


def test_cause_names_the_first_event_and_counts_the_others():
    events = [Event("rule priority 1001 lookup 100 removed", "the kernel")]
    events += [Event(f"rule priority {p} lookup 5 removed") for p in range(3)]
    assert heal.cause(events) == "rule priority 1001 lookup 100 removed by the kernel and 3 other change(s)"
    assert heal.cause([Event("the watcher started")]) == "the watcher started"
