"""Supervisor behaviour that follows OTP (issue 12, items 3 and 4).

- `Supervisor.stop(sup, reason)` stops the children in reverse order and ends the
  supervisor with `reason`, ``"normal"`` included, as ``gen_server:stop/3``; its
  timeout holds inside and outside a process.
- A restart whose start fails is tried again with the whole group, as OTP's
  ``try_again`` (OTP test ``one_for_all_other_child_fails_restart``).
"""

from __future__ import annotations

import asyncio

import pytest

import procreg
from procreg import Supervisor, child

# -- item 3: Supervisor.stop -----------------------------------------------------------


class Logged(procreg.Server):
    def init(self, name, log):
        self.name = name
        self.log = log

    def terminate(self, reason):
        self.log.append((self.name, reason))


def _tree(log):
    return [child(Logged, f"c{i}", log, id=f"c{i}") for i in range(3)]


REASONS = ["normal", "shutdown", ("custom", 1)]


@pytest.mark.parametrize("reason", REASONS)
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_stop_from_a_process_stops_children_in_reverse_and_ends_with_reason(reason, timeout):
    async def main():
        log = []
        sup = await Supervisor.start(_tree(log))
        kids = [c.pid for c in await Supervisor.which_children(sup)]
        ref = procreg.monitor(sup)
        await Supervisor.stop(sup, reason, timeout=timeout)
        down = await procreg.receive(timeout=1)
        alive = [procreg.is_alive(p) for p in [sup, *kids]]
        return log, down.ref == ref, down.reason, alive, procreg.current_node().process_count()

    log, same, down_reason, alive, count = procreg.run(main)
    assert log == [("c2", "shutdown"), ("c1", "shutdown"), ("c0", "shutdown")]
    assert same and down_reason == reason
    assert alive == [False] * 4
    assert count == 1  # only main: no watcher left behind


@pytest.mark.parametrize("reason", REASONS)
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_stop_from_outside_a_process(reason, timeout):
    async def main():
        async with procreg.Node() as node:
            log = []
            sup = await Supervisor.start(_tree(log), name="tree")
            await Supervisor.stop("tree", reason, timeout=timeout)
            return log, node.is_alive(sup), node.process_count()

    log, alive, count = asyncio.run(main())
    assert log == [("c2", "shutdown"), ("c1", "shutdown"), ("c0", "shutdown")]
    assert not alive and count == 0


class Stuck(procreg.Server):
    """Its terminate waits until the test releases it."""

    def init(self, gate):
        self.gate = gate

    async def terminate(self, reason):
        await self.gate


@pytest.mark.parametrize("inside", [True, False], ids=["in_process", "outside"])
def test_stop_timeout_is_honoured(inside):
    async def body():
        gate = asyncio.get_running_loop().create_future()
        sup = await Supervisor.start([child(Stuck, gate, id="s", shutdown="infinity")])
        with pytest.raises(TimeoutError):
            await Supervisor.stop(sup, "normal", timeout=0.05)
        still = procreg.is_alive(sup)
        gate.set_result(None)  # let it finish: the stop went on meanwhile
        for _ in range(1000):
            if not procreg.is_alive(sup):
                break
            await asyncio.sleep(0.001)
        return still, procreg.is_alive(sup)

    if inside:
        assert procreg.run(body) == (True, False)
    else:

        async def main():
            async with procreg.Node():
                return await body()

        assert asyncio.run(main()) == (True, False)


def test_stop_of_a_dead_or_unknown_supervisor():
    async def main():
        sup = await Supervisor.start([])
        await Supervisor.stop(sup, "normal")
        await Supervisor.stop(sup, "normal")  # not alive: returns at once
        with pytest.raises(procreg.NoProcess):
            await Supervisor.stop("no such name")
        return True

    assert procreg.run(main)


def test_stop_normal_of_a_child_supervisor_is_not_restarted_when_transient():
    async def main():
        outer = await Supervisor.start(
            [child(Supervisor, [], id="inner", restart="transient", name="inner")]
        )
        inner = await procreg.whereis("inner", "supervisors")
        await Supervisor.stop(inner, "normal")
        await asyncio.sleep(0.01)
        return [c.pid for c in await Supervisor.which_children(outer)]

    assert procreg.run(main) == [None]


# -- item 4: a restart whose start fails -------------------------------------------------


class Scripted(procreg.Server):
    """Counts its starts in `starts`; fails when its script says so."""

    def init(self, name, starts, script=None):
        starts.append(name)
        if script:
            outcome = script.pop(0)
            if outcome == "fail":
                raise RuntimeError(f"{name} refuses to start")


def _kids(names, starts, scripts):
    return [child(Scripted, n, starts, scripts.get(n), id=n) for n in names]


async def _kill_and_settle(sup, victim):
    pid = next(c.pid for c in await Supervisor.which_children(sup) if c.id == victim)
    procreg.exit(pid, "kill")
    for _ in range(200):
        await asyncio.sleep(0.001)
        rows = await Supervisor.which_children(sup)
        if all(c.pid is not None and procreg.is_alive(c.pid) for c in rows):
            return rows
    raise AssertionError("the group did not come back")


@pytest.mark.parametrize(
    ("strategy", "names", "victim", "scripts", "expected"),
    [
        # OTP one_for_all_other_child_fails_restart: c1 started 3 times
        ("one_for_all", ["c1", "c2"], "c1", {"c2": ["ok", "fail", "ok"]}, {"c1": 3, "c2": 3}),
        (
            "one_for_all",
            ["c1", "c2", "c3"],
            "c3",
            {"c2": ["ok", "fail", "ok"]},
            {"c1": 3, "c2": 3, "c3": 2},
        ),
        # rest_for_one: the failed child and those after it, again
        (
            "rest_for_one",
            ["c0", "c1", "c2"],
            "c1",
            {"c2": ["ok", "fail", "ok"]},
            {"c0": 1, "c1": 3, "c2": 3},
        ),
        (
            "rest_for_one",
            ["c0", "c1", "c2"],
            "c1",
            {"c1": ["ok", "fail", "ok"]},
            {"c0": 1, "c1": 3, "c2": 2},
        ),
        ("one_for_one", ["c1", "c2"], "c1", {"c1": ["ok", "fail", "ok"]}, {"c1": 3, "c2": 1}),
    ],
)
def test_a_failed_restart_restarts_the_whole_group_again(
    strategy, names, victim, scripts, expected
):
    async def main():
        starts = []
        sup = await Supervisor.start(_kids(names, starts, scripts), strategy=strategy, intensity=10)
        before = {c.id: c.pid for c in await Supervisor.which_children(sup)}
        rows = await _kill_and_settle(sup, victim)
        after = {c.id: c.pid for c in rows}
        counts = {n: starts.count(n) for n in names}
        return counts, before, after

    counts, before, after = procreg.run(main)
    assert counts == expected
    for name in names:  # every child that was started again is a new process
        assert (before[name] != after[name]) == (expected[name] > 1)
