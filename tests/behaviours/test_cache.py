"""`procreg.cache`: the TTL `Cache` (with an injected clock) and N2O's cache timer,
the supervised ``"/timer"`` process of table ``"caching"``."""

from __future__ import annotations

import math

import pytest

import procreg
from conftest import wait_until
from procreg import pi
from procreg.cache import Cache, cache, start_cache_timer


class Clock:
    """A settable clock: ``Cache(clock=clock)``, then ``clock.t = ...``."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def c(clock):
    return Cache(clock=clock)


# -- put / get / default ---------------------------------------------------------------


def test_put_and_get(c):
    c.put("a", 1)
    c.put(("t", 2), {"x": 1})
    assert c.get("a") == 1
    assert c.get(("t", 2)) == {"x": 1}
    c.put("a", 2)  # overwrite
    assert c.get("a") == 2


def test_get_of_a_missing_key_gives_the_default(c):
    assert c.get("nope") is None
    assert c.get("nope", "dflt") == "dflt"
    c.put("none", None)
    assert c.get("none", "dflt") is None  # a stored None is a value, not a miss
    assert "none" in c


def test_contains(c):
    c.put("a", 1, ttl=5)
    assert "a" in c and "b" not in c


# -- ttl expiry --------------------------------------------------------------------------


def test_an_entry_expires_after_its_ttl(c, clock):
    c.put("a", 1, ttl=5)
    clock.t += 4.999
    assert c.get("a") == 1 and "a" in c
    clock.t += 0.001  # exactly at the deadline: expired
    assert c.get("a") is None
    assert c.get("a", "gone") == "gone"
    assert "a" not in c


def test_expired_entries_count_in_len_until_swept_but_not_in_keys(c, clock):
    c.put("short", 1, ttl=1)
    c.put("long", 2, ttl=10)
    c.put("forever", 3)
    clock.t += 2
    assert len(c) == 3  # "short" is expired but not yet swept
    assert sorted(c.keys()) == ["forever", "long"]
    assert c.sweep() == ["short"]
    assert len(c) == 2
    assert sorted(c.keys()) == ["forever", "long"]


def test_ttl_zero_is_expired_at_once(c):
    c.put("a", 1, ttl=0)
    assert c.get("a") is None and "a" not in c
    assert c.sweep() == ["a"]


def test_ttl_none_never_expires(c, clock):
    c.put("a", 1, ttl=None)
    c.put("b", 2)
    clock.t += 1e9
    assert c.get("a") == 1 and c.get("b") == 2
    assert "a" in c and "b" in c
    assert c.sweep() == []
    assert c.sweep(now=math.inf) == []
    assert len(c) == 2


def test_default_ttl_applies_when_no_ttl_is_given(clock):
    c = Cache(default_ttl=10, clock=clock)
    c.put("dflt", 1)
    c.put("own", 2, ttl=3)
    clock.t += 5
    assert c.get("dflt") == 1 and c.get("own") is None
    clock.t += 5
    assert c.get("dflt") is None
    assert sorted(c.sweep()) == ["dflt", "own"]


def test_reput_with_a_longer_ttl_extends(c, clock):
    c.put("a", 1, ttl=10)  # expires at +10
    clock.t += 5
    c.put("a", 2, ttl=10)  # now expires at +15
    clock.t += 7  # +12: past the first deadline
    assert c.get("a") == 2
    assert c.sweep() == []  # the stale deadline must not remove it
    assert c.get("a") == 2 and len(c) == 1
    clock.t += 3  # +15
    assert c.sweep() == ["a"]
    assert c.get("a") is None and len(c) == 0


def test_reput_with_a_shorter_ttl_shortens(c, clock):
    c.put("a", 1, ttl=10)  # expires at +10
    clock.t += 1
    c.put("a", 2, ttl=2)  # now expires at +3
    clock.t += 2
    assert c.get("a") is None
    assert c.sweep() == ["a"]
    clock.t += 20  # past the stale +10 deadline: nothing more to report
    assert c.sweep() == []
    assert c.swept == 1


def test_reput_without_ttl_makes_it_permanent(c, clock):
    c.put("a", 1, ttl=2)
    c.put("a", 2)  # no ttl now
    clock.t += 100
    assert c.sweep() == []
    assert c.get("a") == 2


def test_sweep_honours_the_newest_of_several_reputs(c, clock):
    c.put("a", 1, ttl=10)
    c.put("a", 2, ttl=2)
    c.put("a", 3, ttl=20)
    assert c.sweep(now=clock.t + 2) == []
    assert c.sweep(now=clock.t + 10) == []
    assert c.get("a") == 3
    assert c.sweep(now=clock.t + 20) == ["a"]
    assert c.swept == 1


def test_sweep_after_delete_and_reput_reports_a_key_once(c, clock):
    c.put("a", 1, ttl=5)
    c.delete("a")
    c.put("a", 2, ttl=5)  # the same deadline as the deleted entry
    clock.t += 5
    assert c.sweep() == ["a"]
    assert c.sweep() == []


# -- sweep --------------------------------------------------------------------------------


def test_sweep_returns_exactly_the_expired_keys_and_counts(c, clock):
    for i in range(10):
        c.put(i, str(i), ttl=i + 1)  # key i expires at +(i+1)
    c.put("forever", 0)
    assert c.sweep() == []
    assert c.sweep(now=clock.t + 3) == [0, 1, 2]
    assert c.swept == 3
    clock.t += 5.5
    assert sorted(c.sweep()) == [3, 4]
    assert c.swept == 5
    assert sorted(c.keys(), key=str) == sorted([5, 6, 7, 8, 9, "forever"], key=str)
    assert len(c) == 6
    assert c.sweep() == []  # nothing twice
    assert c.swept == 5


def test_sweep_with_an_explicit_now_does_not_move_the_clock(c, clock):
    c.put("a", 1, ttl=5)
    assert c.sweep(now=clock.t + 1) == []
    assert c.get("a") == 1


# -- delete / len / keys ------------------------------------------------------------------


def test_delete(c, clock):
    c.put("a", 1)
    c.put("b", 2, ttl=1)
    assert c.delete("a") is True
    assert c.delete("a") is False
    assert c.delete("missing") is False
    clock.t += 2
    assert c.delete("b") is True  # expired but present
    assert len(c) == 0
    assert c.sweep() == []  # a deleted entry is not swept
    assert c.swept == 0


def test_len_and_keys(c, clock):
    assert len(c) == 0 and list(c.keys()) == []
    c.put("a", 1)
    c.put("b", 2, ttl=1)
    c.put("a", 3)  # overwrite: still one entry
    assert len(c) == 2
    assert sorted(c.keys()) == ["a", "b"]
    clock.t += 1
    assert list(c.keys()) == ["a"]


def test_keys_can_be_consumed_while_the_cache_changes(c):
    c.put("a", 1)
    c.put("b", 2)
    live = c.keys()  # an iterator over a snapshot
    for k in live:
        c.delete(k)
    assert len(c) == 0


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [-1, -0.001, float("nan")])
def test_negative_ttl_is_a_value_error(c, ttl):
    with pytest.raises(ValueError):
        c.put("a", 1, ttl=ttl)
    assert len(c) == 0 and "a" not in c


def test_non_number_ttl_is_a_type_error(c):
    with pytest.raises(TypeError):
        c.put("a", 1, ttl="5")
    assert len(c) == 0


def test_negative_default_ttl_is_a_value_error(clock):
    with pytest.raises(ValueError):
        Cache(default_ttl=-1, clock=clock)


# -- the cache timer ------------------------------------------------------------------------


def test_node_cache_is_one_per_name_and_node():
    async def main():
        return cache("caching"), cache("caching"), cache("other"), cache()

    a, b, other, dflt = procreg.run(main)
    assert a is b is dflt and other is not a
    assert isinstance(a, Cache) and a.name == "caching" and other.name == "other"

    async def again():
        return cache("caching")

    assert procreg.run(again) is not a  # a fresh node has its own caches


def test_timer_sweeps_repeatedly_and_is_registered():
    sweeps = []

    async def main():
        sessions = cache("caching")
        sessions.put("s1", 1, ttl=0.05)
        sessions.put("s2", 2, ttl=0.15)
        sessions.put("config", "dark")  # never expires
        started = await start_cache_timer(interval=0.05, on_sweep=sweeps.append)
        assert not isinstance(started, pi.Error), started
        pid, name = started
        where = await procreg.whereis("/timer", table="caching")
        kids = {k.id: k for k in await procreg.Supervisor.which_children("root")}
        await wait_until(lambda: len(sessions) == 1 and len(sweeps) >= 4)
        count = await pi.send("caching", "/timer", "sweeps")
        return pid, name, where, pi.pid("caching", "/timer"), kids, sessions, count

    pid, name, where, found, kids, sessions, count = procreg.run(main)
    assert name == "/timer"
    assert where == found == pid
    assert kids[("caching", "/timer")].pid == pid
    assert list(sessions.keys()) == ["config"] and len(sessions) == 1
    assert sessions.get("config") == "dark"
    swept = [k for gone in sweeps for k in gone]
    assert sorted(swept) == ["s1", "s2"]  # each removed once, "config" never
    assert len(sweeps) >= 4 and count >= 4  # it re-armed itself
    assert all(isinstance(gone, list) for gone in sweeps)


def test_timer_sweeps_the_named_cache_only():
    async def main():
        mine, other = cache("mine"), cache("caching")
        mine.put("a", 1, ttl=0.01)
        other.put("b", 1, ttl=0.01)
        seen = []
        await start_cache_timer(interval=0.03, name="mine", on_sweep=seen.append)
        await wait_until(lambda: len(seen) >= 2)
        return len(mine), len(other)

    assert procreg.run(main) == (0, 1)


def test_timer_is_restarted_after_a_crash_and_keeps_sweeping():
    sweeps = []

    async def main():
        sessions = cache("caching")
        sessions.put("config", "dark")
        first, _ = await start_cache_timer(interval=0.05, on_sweep=sweeps.append)
        await wait_until(lambda: len(sweeps) >= 2)
        ref = procreg.monitor(first)
        procreg.exit(first, "boom")
        down = await procreg.receive(timeout=1, match=lambda m: isinstance(m, procreg.Down))
        second = await wait_until(
            lambda: (p := pi.pid("caching", "/timer")) not in (None, first) and p
        )
        where = await procreg.whereis("/timer", table="caching")
        kids = {k.id: k for k in await procreg.Supervisor.which_children("root")}
        before = len(sweeps)
        sessions.put("late", 1, ttl=0.05)  # put after the crash: the new timer sweeps it
        await wait_until(lambda: "late" not in sessions and len(sessions) == 1)
        await wait_until(lambda: len(sweeps) >= before + 3)
        return (
            first,
            second,
            down == procreg.Down(ref, first, "boom"),
            procreg.is_alive(first),
            procreg.is_alive(second),
            where,
            kids,
            sessions,
        )

    first, second, down_ok, first_alive, second_alive, where, kids, sessions = procreg.run(main)
    assert down_ok and not first_alive and second_alive
    assert second != first and where == second
    assert kids[("caching", "/timer")].pid == second
    assert any("late" in gone for gone in sweeps)
    assert sessions.get("config") == "dark"


def test_second_timer_start_is_already_started():
    async def main():
        pid, _ = await start_cache_timer(interval=0.05)
        return pid, await start_cache_timer(interval=0.05)

    pid, again = procreg.run(main)
    assert again == pi.Error(("already_started", pid))


@pytest.mark.parametrize("interval", [0, 0.0, -1, -0.05])
def test_timer_interval_must_be_positive(interval):
    async def main():
        with pytest.raises(ValueError):
            await start_cache_timer(interval=interval)
        return pi.pid("caching", "/timer"), await procreg.whereis("/timer", table="caching")

    assert procreg.run(main) == (None, None)
