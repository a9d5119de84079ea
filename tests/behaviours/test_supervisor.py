"""Supervision trees: strategies, restart types, intensity, escalation, shutdown.

The expectations follow OTP's documented supervisor behaviour (``supervisor(3)`` and
the "Supervisor Behaviour" design principles): children start in order and stop in
reverse order; ``one_for_one`` restarts the child that ended, ``one_for_all`` all of
them, ``rest_for_one`` it and the ones started after it; ``permanent`` children are
always restarted, ``transient`` ones only after an abnormal exit, ``temporary`` ones
never (and their spec is dropped); more than ``intensity`` restarts within ``period``
seconds make the supervisor stop its children and exit with ``"shutdown"``.

Workers record ``("start", name)`` in ``init`` and ``("stop", name, reason)`` in
``terminate`` into a shared list, so the tests can check order. Dynamic children,
named supervisors and bad input are in ``test_supervisor_dynamic.py``.
"""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import child_pids, wait_down
from procreg import Supervisor, child

pytestmark = pytest.mark.timeout(30)

STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one"]
RESTARTS = ["permanent", "transient", "temporary"]


# -- helpers ------------------------------------------------------------------------


def _why(reason):
    """A reason as recorded in the log: exceptions by their type name."""
    return reason if isinstance(reason, (str, tuple)) else type(reason).__name__


class Worker(procreg.Server):
    """A worker that logs its start and stop and ends on request.

    ``cast(("exit", how))`` ends it: ``"crash"`` raises, anything else is the exit
    reason (``Stop(how)``)."""

    def init(self, log, name):
        self.log = log
        self.name = name
        log.append(("start", name))

    def handle_call(self, request):
        if request == "name":
            return self.name
        return "pong"

    def handle_cast(self, msg):
        kind, how = msg
        assert kind == "exit"
        if how == "crash":
            raise RuntimeError(f"{self.name} crashed on purpose")
        raise procreg.Stop(how)

    def terminate(self, reason):
        self.log.append(("stop", self.name, _why(reason)))


def w(log, name, **opts):
    """A child spec for a `Worker` with id `name`."""
    opts.setdefault("shutdown", 0.5)
    return child(Worker, log, name, id=name, **opts)


async def end(pid, how):
    """End `pid` (``"crash"``, ``"kill"`` or a reason) and wait until it is gone.

    When this returns, the supervisor already has the exit in its mailbox, so the
    next request to it is answered after it has dealt with the exit."""
    ref = procreg.monitor(pid)
    if how == "kill":
        procreg.exit(pid, "kill")
    else:
        procreg.cast(pid, ("exit", how))
    down = await wait_down(ref)
    return down.reason


# -- start order and stop order -------------------------------------------------------


def test_children_start_in_order_and_stop_in_reverse_on_exit_shutdown():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b"), w(log, "c")])
        assert log == [("start", "a"), ("start", "b"), ("start", "c")]
        kids = await child_pids(sup)
        ref = procreg.monitor(sup)
        procreg.exit(sup, "shutdown")
        down = await wait_down(ref)
        return down.reason, kids

    reason, kids = procreg.run(main)
    assert reason == "shutdown"
    assert list(kids) == ["a", "b", "c"]
    assert log[3:] == [
        ("stop", "c", "shutdown"),
        ("stop", "b", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


def test_children_are_gone_when_the_supervisor_has_stopped():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a", key="ka"), w(log, "b", key="kb")])
        kids = await child_pids(sup)
        ref = procreg.monitor(sup)
        procreg.exit(sup, "shutdown")
        await wait_down(ref)
        return (
            [procreg.is_alive(p) for p in kids.values()],
            await procreg.whereis("ka"),
            await procreg.whereis("kb"),
            procreg.is_alive(sup),
        )

    assert procreg.run(main) == ([False, False], None, None, False)


def test_terminating_a_child_supervisor_stops_its_children_in_reverse_order():
    log = []

    async def main():
        inner = child(Supervisor, [w(log, "a"), w(log, "b"), w(log, "c")], id="inner")
        outer = await Supervisor.start([w(log, "x"), inner])
        inner_pid = (await child_pids(outer))["inner"]
        grandchildren = await child_pids(inner_pid)
        await Supervisor.terminate_child(outer, "inner")
        return (
            procreg.is_alive(inner_pid),
            [procreg.is_alive(p) for p in grandchildren.values()],
            await child_pids(outer),
        )

    inner_alive, grandchildren_alive, outer_kids = procreg.run(main)
    assert not inner_alive
    assert grandchildren_alive == [False, False, False]
    assert outer_kids["inner"] is None
    assert log[:4] == [("start", "x"), ("start", "a"), ("start", "b"), ("start", "c")]
    assert log[4:7] == [
        ("stop", "c", "shutdown"),
        ("stop", "b", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


def test_dynamic_children_are_stopped_before_the_static_ones_they_follow():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b")])
        await Supervisor.start_child(sup, w(log, "c"))
        await Supervisor.start_child(sup, w(log, "d"))
        ref = procreg.monitor(sup)
        procreg.exit(sup, "shutdown")
        await wait_down(ref)

    procreg.run(main)
    assert [e[1] for e in log if e[0] == "stop"] == ["d", "c", "b", "a"]


def test_node_stop_stops_a_tree_in_reverse_start_order_after_a_restart():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b"), w(log, "c")])
        await end((await child_pids(sup))["a"], "crash")
        await child_pids(sup)
        del log[:]
        # returning ends the node, which stops every process

    procreg.run(main)
    assert log == [("stop", "c", "shutdown"), ("stop", "b", "shutdown"), ("stop", "a", "shutdown")]


def test_a_parent_that_ends_takes_its_supervisor_and_children_with_it():
    log = []

    async def parent(main_pid):
        sup = await Supervisor.start([w(log, "a"), w(log, "b")], link=True)
        procreg.send(main_pid, ("sup", sup))
        await procreg.receive()  # told when to go
        raise procreg.Stop("bye")

    async def main():
        p = procreg.spawn(parent, procreg.self())
        msg = await procreg.receive(timeout=5)
        sup = msg[1]
        kids = await child_pids(sup)
        ref = procreg.monitor(sup)
        procreg.send(p, "go")
        down = await wait_down(ref)
        return down.reason, [procreg.is_alive(k) for k in kids.values()]

    reason, alive = procreg.run(main)
    assert reason == "bye"
    assert alive == [False, False]
    assert log[2:] == [("stop", "b", "shutdown"), ("stop", "a", "shutdown")]


def test_a_parent_that_ends_normally_takes_its_supervisor_with_it():
    log = []

    async def parent(main_pid):
        sup = await Supervisor.start([w(log, "a")], link=True)
        procreg.send(main_pid, ("sup", sup))
        await procreg.receive()

    async def main():
        p = procreg.spawn(parent, procreg.self())
        sup = (await procreg.receive(timeout=5))[1]
        ref = procreg.monitor(sup)
        procreg.send(p, "go")
        try:
            down = await wait_down(ref, timeout=1.0)
        except TimeoutError:
            return "still running"
        return down.reason

    assert procreg.run(main) == "normal"
    assert log == [("start", "a"), ("stop", "a", "shutdown")]


def test_killing_a_supervisor_kills_its_children():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b")])
        kids = await child_pids(sup)
        refs = [procreg.monitor(p) for p in kids.values()]
        procreg.exit(sup, "kill")
        reasons = [(await wait_down(r)).reason for r in refs]
        return reasons, procreg.is_alive(sup)

    reasons, alive = procreg.run(main)
    assert reasons == ["kill", "kill"]
    assert not alive


# -- strategies x restart types x exit reasons ---------------------------------------


AFFECTED = {
    "one_for_one": ["b"],
    "one_for_all": ["a", "b", "c"],
    "rest_for_one": ["b", "c"],
}


@pytest.mark.parametrize("how", ["crash", "normal", "shutdown", "kill"])
@pytest.mark.parametrize("restart", RESTARTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_restart_type_and_exit_reason(strategy, restart, how):
    """The middle child "b" (of a, b, c; the others permanent) ends with `how`."""
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a"), w(log, "b", restart=restart), w(log, "c")],
            strategy=strategy,
            intensity=10,
            period=5,
        )
        before = await child_pids(sup)
        del log[:]
        reason = await end(before["b"], how)
        after = await child_pids(sup)
        counts = await Supervisor.count_children(sup)
        return before, reason, after, counts, list(log)

    before, reason, after, counts, log = procreg.run(main)
    assert _why(reason) == {"crash": "RuntimeError"}.get(how, how)
    own_stop = [] if how == "kill" else [("stop", "b", _why(reason))]

    restarted = restart == "permanent" or (restart == "transient" and how in ("crash", "kill"))
    if restarted:
        affected = AFFECTED[strategy]
        assert list(after) == ["a", "b", "c"]
        for cid in "abc":
            if cid in affected:
                assert after[cid] != before[cid], cid
                assert after[cid] is not None
            else:
                assert after[cid] == before[cid], cid
        others = [cid for cid in affected if cid != "b"]
        assert log == (
            own_stop
            + [("stop", cid, "shutdown") for cid in reversed(others)]
            + [("start", cid) for cid in affected]
        )
        assert counts == {"specs": 3, "active": 3, "supervisors": 0, "workers": 3}
    else:
        assert log == own_stop
        assert after["a"] == before["a"] and after["c"] == before["c"]
        if restart == "temporary":
            assert list(after) == ["a", "c"]  # its spec is gone
            assert counts == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
        else:
            assert list(after) == ["a", "b", "c"]
            assert after["b"] is None
            assert counts == {"specs": 3, "active": 2, "supervisors": 0, "workers": 3}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_restarted_children_are_new_live_processes_and_old_ones_are_gone(strategy):
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b"), w(log, "c")], strategy=strategy)
        before = await child_pids(sup)
        await end(before["a"], "crash")
        after = await child_pids(sup)
        names = {cid: await procreg.call(pid, "name") for cid, pid in after.items()}
        return before, after, names

    before, after, names = procreg.run(main)
    assert names == {"a": "a", "b": "b", "c": "c"}
    replaced = {
        "one_for_one": {"a"},
        "one_for_all": {"a", "b", "c"},
        "rest_for_one": {"a", "b", "c"},
    }
    assert {cid for cid in "abc" if after[cid] != before[cid]} == replaced[strategy]


def test_rest_for_one_keeps_the_children_started_before_the_one_that_ended():
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a"), w(log, "b"), w(log, "c"), w(log, "d")], strategy="rest_for_one"
        )
        before = await child_pids(sup)
        del log[:]
        await end(before["c"], "crash")
        return before, await child_pids(sup), list(log)

    before, after, log = procreg.run(main)
    assert [cid for cid in "abcd" if after[cid] == before[cid]] == ["a", "b"]
    assert log == [
        ("stop", "c", "RuntimeError"),
        ("stop", "d", "shutdown"),
        ("start", "c"),
        ("start", "d"),
    ]


@pytest.mark.parametrize("how", ["normal", "shutdown"])
@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_a_transient_child_ending_normally_leaves_its_siblings_alone(strategy, how):
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a", restart="transient"), w(log, "b"), w(log, "c")], strategy=strategy
        )
        before = await child_pids(sup)
        await end(before["a"], how)
        return before, await child_pids(sup)

    before, after = procreg.run(main)
    assert after == {"a": None, "b": before["b"], "c": before["c"]}


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_temporary_siblings_are_not_restarted_by_a_group_restart(strategy):
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a"), w(log, "t", restart="temporary"), w(log, "c")],
            strategy=strategy,
            intensity=10,
        )
        before = await child_pids(sup)
        await end(before["a"], "crash")
        return before, await child_pids(sup)

    before, after = procreg.run(main)
    assert list(after) == ["a", "c"]
    assert after["a"] != before["a"] and after["c"] != before["c"]
    assert log.count(("start", "t")) == 1
    assert ("stop", "t", "shutdown") in log


def test_a_transient_child_ending_with_a_shutdown_tuple_is_not_restarted():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a", restart="transient")])
        before = await child_pids(sup)
        await end(before["a"], ("shutdown", "done"))
        return await child_pids(sup)

    assert procreg.run(main) == {"a": None}


async def crasher(log, name):
    log.append(("start", name))
    msg = await procreg.receive()
    if msg == "crash":
        raise RuntimeError("boom")
    # anything else: return, a normal end


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        ("permanent", "crash", True),
        ("permanent", "return", True),
        ("transient", "crash", True),
        ("transient", "return", False),
        ("temporary", "crash", False),
    ],
)
def test_coroutine_children_follow_their_restart_type(restart, how, restarted):
    log = []

    async def main():
        sup = await Supervisor.start([child(crasher, log, "co", id="co", restart=restart)])
        before = (await child_pids(sup))["co"]
        ref = procreg.monitor(before)
        procreg.send(before, how)
        down = await wait_down(ref)
        return down.reason, before, await child_pids(sup)

    reason, before, after = procreg.run(main)
    assert _why(reason) == ("RuntimeError" if how == "crash" else "normal")
    if restarted:
        assert after["co"] not in (None, before)
        assert log == [("start", "co"), ("start", "co")]
    elif restart == "temporary":
        assert after == {}
    else:
        assert after == {"co": None}


# -- restart intensity ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_intensity_restarts_within_the_period_are_allowed(strategy):
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")], strategy=strategy, intensity=3, period=30)
        for _ in range(3):
            await end((await child_pids(sup))["a"], "crash")
        kids = await child_pids(sup)
        return procreg.is_alive(sup), procreg.is_alive(kids["a"]), log.count(("start", "a"))

    assert procreg.run(main) == (True, True, 4)


# The last child crashes, so that each strategy restarts that child alone (one_for_all
# with more than one child is covered by test_a_group_restart_counts_as_one_restart).
GIVE_UP_CHILDREN = {"one_for_one": ["a", "b"], "rest_for_one": ["a", "b"], "one_for_all": ["b"]}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_restart_over_the_intensity_makes_the_supervisor_give_up(strategy):
    log = []

    async def main():
        names = GIVE_UP_CHILDREN[strategy]
        sup = await Supervisor.start(
            [w(log, n) for n in names], strategy=strategy, intensity=3, period=30
        )
        ref = procreg.monitor(sup)
        for _ in range(3):
            await end((await child_pids(sup))["b"], "crash")
        last = await child_pids(sup)
        alive_at_limit = procreg.is_alive(sup)
        await end(last["b"], "crash")
        down = await wait_down(ref)
        children_alive = [procreg.is_alive(p) for p in last.values()]
        return alive_at_limit, down.reason, children_alive, procreg.is_alive(sup)

    alive_at_limit, reason, children_alive, alive = procreg.run(main)
    assert alive_at_limit
    assert reason == "shutdown"
    assert not alive
    assert not any(children_alive)
    assert log.count(("start", "b")) == 4  # not restarted a fourth time
    if strategy == "one_for_all":
        assert log[-1] == ("stop", "b", "RuntimeError")
    else:  # the survivor was stopped on the way out
        assert log[-2:] == [("stop", "b", "RuntimeError"), ("stop", "a", "shutdown")]


def test_intensity_zero_gives_up_at_the_first_restart():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b")], intensity=0)
        kids = await child_pids(sup)
        ref = procreg.monitor(sup)
        await end(kids["b"], "crash")
        down = await wait_down(ref)
        return down.reason, procreg.is_alive(kids["a"])

    assert procreg.run(main) == ("shutdown", False)
    assert log.count(("start", "b")) == 1


def test_a_normal_end_of_a_transient_child_is_not_a_restart():
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a", restart="transient"), w(log, "b", restart="transient")], intensity=0
        )
        kids = await child_pids(sup)
        await end(kids["a"], "normal")
        await end(kids["b"], "shutdown")
        return procreg.is_alive(sup)

    assert procreg.run(main) is True


def test_restarts_older_than_the_period_do_not_count():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")], intensity=1, period=0.2)
        ref = procreg.monitor(sup)
        await end((await child_pids(sup))["a"], "crash")
        await asyncio.sleep(0.3)  # the first restart leaves the window
        await end((await child_pids(sup))["a"], "crash")
        survived = procreg.is_alive(sup)
        await end((await child_pids(sup))["a"], "crash")  # two within the window: too many
        down = await wait_down(ref)
        return survived, down.reason

    assert procreg.run(main) == (True, "shutdown")


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_a_group_restart_counts_as_one_restart(strategy):
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a"), w(log, "b"), w(log, "c")], strategy=strategy, intensity=1, period=30
        )
        await end((await child_pids(sup))["a"], "crash")
        try:
            await child_pids(sup)
        except procreg.ProcregError:  # it gave up: ProcessExited or NoProcess
            return "gave up"
        return "alive"

    assert procreg.run(main) == "alive"


def test_a_child_that_cannot_be_restarted_makes_the_supervisor_give_up():
    log = []
    state = {"fail": False}

    class Fragile(procreg.Server):
        def init(self):
            log.append("init")
            if state["fail"]:
                raise OSError("resource gone")

        def handle_cast(self, msg):
            raise RuntimeError("crash")

    async def main():
        sup = await Supervisor.start([w(log, "a"), child(Fragile, id="f")], intensity=3, period=30)
        ref = procreg.monitor(sup)
        state["fail"] = True
        procreg.cast((await child_pids(sup))["f"], "crash")
        down = await wait_down(ref)
        return down.reason

    assert procreg.run(main) == "shutdown"
    assert log.count("init") == 4  # the first start and three failed restarts
    assert log[-1] == ("stop", "a", "shutdown")


def test_a_restart_that_fails_once_is_retried():
    log = []
    state = {"failures": 0}

    class Flaky(procreg.Server):
        def init(self):
            log.append("init")
            if state["failures"]:
                state["failures"] -= 1
                raise OSError("not yet")

        def handle_call(self, request):
            return "ok"

        def handle_cast(self, msg):
            raise RuntimeError("crash")

    async def main():
        sup = await Supervisor.start([child(Flaky, id="f", key="flaky")], intensity=3)
        first = (await child_pids(sup))["f"]
        state["failures"] = 1
        ref = procreg.monitor(first)
        procreg.cast(first, "crash")
        await wait_down(ref)
        now = (await child_pids(sup))["f"]
        return procreg.is_alive(sup), now not in (None, first), await procreg.call(now, "x")

    assert procreg.run(main) == (True, True, "ok")
    assert log == ["init", "init", "init"]


# -- nested supervisors and escalation ----------------------------------------------------


def test_an_inner_supervisor_that_gives_up_is_restarted_by_the_outer_one():
    log = []

    async def main():
        inner = child(Supervisor, [w(log, "w", key="w")], id="inner", intensity=0)
        outer = await Supervisor.start([w(log, "x"), inner], intensity=3)
        before = await child_pids(outer)
        w1 = await procreg.whereis("w")
        inner_ref = procreg.monitor(before["inner"])
        await end(w1, "crash")
        down = await wait_down(inner_ref)
        after = await child_pids(outer)
        w2 = await procreg.whereis("w")
        return before, after, down.reason, w1, w2, await child_pids(after["inner"]), list(log)

    before, after, inner_reason, w1, w2, inner_kids, log = procreg.run(main)
    assert inner_reason == "shutdown"
    assert after["x"] == before["x"]
    assert after["inner"] not in (None, before["inner"])
    assert w2 not in (None, w1)
    assert inner_kids == {"w": w2}
    assert log == [("start", "x"), ("start", "w"), ("stop", "w", "RuntimeError"), ("start", "w")]


def test_escalation_reaches_the_top_when_every_level_gives_up():
    log = []

    async def main():
        inner = child(Supervisor, [w(log, "w")], id="inner", intensity=0)
        middle = child(Supervisor, [w(log, "m"), inner], id="middle", intensity=0)
        top = await Supervisor.start([w(log, "t"), middle], intensity=0)
        ref = procreg.monitor(top)
        middle_pid = (await child_pids(top))["middle"]
        inner_pid = (await child_pids(middle_pid))["inner"]
        await end((await child_pids(inner_pid))["w"], "crash")
        down = await wait_down(ref)
        return down.reason, [procreg.is_alive(p) for p in (middle_pid, inner_pid)]

    reason, alive = procreg.run(main)
    assert reason == "shutdown"
    assert alive == [False, False]
    stops = [e[1] for e in log if e[0] == "stop"]
    assert stops == ["w", "m", "t"]


def test_a_transient_inner_supervisor_that_gives_up_is_not_restarted():
    # it exits with "shutdown", which is a normal end for a transient child
    log = []

    async def main():
        inner = child(Supervisor, [w(log, "w")], id="inner", intensity=0, restart="transient")
        outer = await Supervisor.start([inner, w(log, "x")])
        inner_pid = (await child_pids(outer))["inner"]
        ref = procreg.monitor(inner_pid)
        await end((await child_pids(inner_pid))["w"], "crash")
        await wait_down(ref)
        return await child_pids(outer), procreg.is_alive(outer)

    kids, alive = procreg.run(main)
    assert alive
    assert kids["inner"] is None and kids["x"] is not None


def test_a_supervisor_subclass_with_its_own_children_and_flags():
    log = []

    class Pair(Supervisor):
        strategy = "one_for_all"
        intensity = 0
        period = 1.0

        def children(self):
            return [w(log, "p1"), w(log, "p2")]

    async def main():
        outer = await Supervisor.start([child(Pair, id="pair"), w(log, "x")], intensity=2)
        pair = (await child_pids(outer))["pair"]
        kinds = {c.id: c.kind for c in await Supervisor.which_children(outer)}
        pair_kids = await child_pids(pair)
        ref = procreg.monitor(pair)
        await end(pair_kids["p1"], "crash")  # intensity 0: the pair gives up at once
        await wait_down(ref)
        return kinds, pair, await child_pids(outer), list(log)

    kinds, pair, after, log = procreg.run(main)
    assert kinds == {"pair": "supervisor", "x": "worker"}
    assert after["pair"] not in (None, pair)
    assert log[:3] == [("start", "p1"), ("start", "p2"), ("start", "x")]
    # p2 was stopped by the pair giving up, then both came back, in order
    assert log[3:] == [
        ("stop", "p1", "RuntimeError"),
        ("stop", "p2", "shutdown"),
        ("start", "p1"),
        ("start", "p2"),
    ]


def test_nested_supervisor_spec_takes_strategy_keywords():
    log = []

    async def main():
        inner = child(
            Supervisor, [w(log, "a"), w(log, "b")], id="inner", strategy="one_for_all", intensity=5
        )
        outer = await Supervisor.start([inner])
        inner_pid = (await child_pids(outer))["inner"]
        before = await child_pids(inner_pid)
        await end(before["b"], "crash")
        return before, await child_pids(inner_pid)

    before, after = procreg.run(main)
    assert after["a"] != before["a"] and after["b"] != before["b"]


# -- shutdown: graceful, timed out, brutal ------------------------------------------------


class Stubborn(procreg.Server):
    """Traps exits and ignores the ``Exit`` it gets: it only goes when killed.

    (A child spec has no trap-exits option, so the class asks for it when the
    supervisor starts it.)"""

    @classmethod
    async def start_ready(cls, *args, **opts):
        opts["trap_exits"] = True
        return await super().start_ready(*args, **opts)

    def init(self, log):
        self.log = log

    def handle_info(self, msg):
        if isinstance(msg, procreg.Exit):
            self.log.append(("ignored", msg.reason))

    def terminate(self, reason):
        self.log.append(("terminate", _why(reason)))


def test_a_child_that_ignores_shutdown_is_killed_after_its_shutdown_time():
    log = []

    async def main():
        loop = asyncio.get_running_loop()
        sup = await Supervisor.start([child(Stubborn, log, id="s", shutdown=0.1)])
        pid = (await child_pids(sup))["s"]
        ref = procreg.monitor(pid)
        t0 = loop.time()
        await Supervisor.terminate_child(sup, "s")
        waited = loop.time() - t0
        down = await wait_down(ref, timeout=1)
        return down.reason, waited, procreg.is_alive(pid), procreg.is_alive(sup), list(log)

    reason, waited, alive, sup_alive, log = procreg.run(main)
    assert reason == "kill"
    assert waited >= 0.09  # it was given its shutdown time first
    assert not alive and sup_alive
    assert log == [("ignored", "shutdown")]  # asked politely; no terminate on kill


def test_a_supervisor_shutting_down_kills_a_stubborn_child_and_goes_on():
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a"), child(Stubborn, log, id="s", shutdown=0.05), w(log, "c")]
        )
        kids = await child_pids(sup)
        ref = procreg.monitor(sup)
        procreg.exit(sup, "shutdown")
        down = await wait_down(ref)
        return down.reason, [procreg.is_alive(p) for p in kids.values()]

    reason, alive = procreg.run(main)
    assert reason == "shutdown"
    assert alive == [False, False, False]
    assert log[2:] == [
        ("stop", "c", "shutdown"),
        ("ignored", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


def test_brutal_kill_kills_at_once_without_asking():
    log = []

    async def main():
        sup = await Supervisor.start(
            [
                child(Stubborn, log, id="s", shutdown="brutal_kill"),
                w(log, "w", shutdown="brutal_kill"),
            ]
        )
        kids = await child_pids(sup)
        refs = {cid: procreg.monitor(p) for cid, p in kids.items()}
        await Supervisor.terminate_child(sup, "s")
        await Supervisor.terminate_child(sup, "w")
        return {cid: (await wait_down(r)).reason for cid, r in refs.items()}

    assert procreg.run(main) == {"s": "kill", "w": "kill"}
    assert log == [("start", "w")]  # no Exit seen, no terminate called


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_shutdown_of_a_server_calls_its_terminate(kind):
    log = []

    if kind == "sync":

        class Svc(procreg.Server):
            def terminate(self, reason):
                log.append(("terminate", reason))

    else:

        class Svc(procreg.Server):
            async def terminate(self, reason):
                await asyncio.sleep(0.01)
                log.append(("terminate", reason))

    async def main():
        sup = await Supervisor.start([child(Svc, id="svc", shutdown=1.0)])
        pid = (await child_pids(sup))["svc"]
        ref = procreg.monitor(pid)
        await Supervisor.terminate_child(sup, "svc")
        done_before_return = list(log)
        down = await wait_down(ref)
        return done_before_return, down.reason

    done, reason = procreg.run(main)
    assert done == [("terminate", "shutdown")]  # terminate_child waited for it
    assert reason == "shutdown"


def test_shutdown_infinity_waits_for_a_slow_terminate():
    log = []

    class Slow(procreg.Server):
        async def terminate(self, reason):
            await asyncio.sleep(0.15)
            log.append("terminated")

    async def main():
        sup = await Supervisor.start([child(Slow, id="s", shutdown="infinity")])
        pid = (await child_pids(sup))["s"]
        ref = procreg.monitor(pid)
        await Supervisor.terminate_child(sup, "s")
        return list(log), (await wait_down(ref)).reason

    assert procreg.run(main) == (["terminated"], "shutdown")


def test_a_child_whose_terminate_outlasts_its_shutdown_time_is_killed():
    log = []

    async def main():
        gate = asyncio.Event()

        class Hanging(procreg.Server):
            async def terminate(self, reason):
                log.append("terminate started")
                await gate.wait()
                log.append("terminate finished")

        sup = await Supervisor.start([child(Hanging, id="h", shutdown=0.05)])
        pid = (await child_pids(sup))["h"]
        ref = procreg.monitor(pid)
        try:
            await asyncio.wait_for(Supervisor.terminate_child(sup, "h"), 1.0)
            reason = (await wait_down(ref, timeout=1)).reason
        except TimeoutError:
            reason = "terminate_child did not return"
        finally:
            gate.set()
        return reason

    assert procreg.run(main) == "kill"
    assert log == ["terminate started"]


def test_a_coroutine_child_that_ignores_cancellation_does_not_run_on():
    ticks = []

    async def stubborn_body():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0  # bounded, so the test cannot hang
        ignored = 0
        while loop.time() < deadline:
            try:
                await asyncio.sleep(0.005)
                ticks.append(loop.time())
            except asyncio.CancelledError:
                ignored += 1
                if ignored > 1:
                    raise

    async def main():
        loop = asyncio.get_running_loop()
        sup = await Supervisor.start([child(stubborn_body, id="s", shutdown=0.05)])
        await asyncio.sleep(0.02)
        await Supervisor.terminate_child(sup, "s")
        stopped_at = loop.time()
        await asyncio.sleep(0.1)
        return [t for t in ticks if t > stopped_at + 0.01]

    assert procreg.run(main) == []


# -- restarts and the registry ------------------------------------------------------------


def test_a_restarted_child_is_found_under_the_same_key():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a", key="k")])
        first = await procreg.whereis("k")
        await end(first, "crash")
        await child_pids(sup)  # the supervisor has dealt with the exit
        second = await procreg.whereis("k")
        return first, second, procreg.is_alive(first), await procreg.call(second, "name")

    first, second, first_alive, name = procreg.run(main)
    assert second is not None and second != first
    assert not first_alive
    assert name == "a"


@pytest.mark.parametrize("how", ["crash", "kill"])
def test_group_restart_re_registers_every_keyed_child(how):
    log = []

    async def main():
        sup = await Supervisor.start(
            [w(log, "a", key="ka"), w(log, "b", key="kb", table="workers")],
            strategy="one_for_all",
            intensity=5,
        )
        before = await child_pids(sup)
        await end(before["a"], how)
        after = await child_pids(sup)
        return after, await procreg.whereis("ka"), await procreg.whereis("kb", table="workers")

    after, ka, kb = procreg.run(main)
    assert ka == after["a"] and kb == after["b"]


def test_a_terminated_keyed_child_is_unregistered_and_restart_child_registers_it_again():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a", key="k")])
        first = await procreg.whereis("k")
        await Supervisor.terminate_child(sup, "a")
        gone = await procreg.whereis("k")
        second = await Supervisor.restart_child(sup, "a")
        return first, gone, second, await procreg.whereis("k")

    first, gone, second, found = procreg.run(main)
    assert gone is None
    assert second != first and found == second


def test_a_supervisor_whose_child_key_is_taken_fails_to_start():
    log = []

    async def squatter():
        await procreg.receive()

    async def main():
        other = procreg.spawn(squatter)
        await procreg.register("k", other)
        n = procreg.current_node().process_count()
        with pytest.raises(procreg.AlreadyRegistered):
            await Supervisor.start([w(log, "a"), w(log, "b", key="k")])
        return n, procreg.current_node().process_count(), await procreg.whereis("k") == other

    before, after, still_other = procreg.run(main)
    assert after == before and still_other
    # "b"'s key is claimed before its init: it never started; "a" was stopped
    assert log == [("start", "a"), ("stop", "a", "shutdown")]


# -- a supervisor whose initial children fail -----------------------------------------------


class Broken(procreg.Server):
    def init(self, log):
        log.append(("start", "broken"))
        raise ValueError("cannot start")


class BrokenAsync(procreg.Server):
    async def init(self, log):
        await asyncio.sleep(0)
        log.append(("start", "broken"))
        raise ValueError("cannot start")


@pytest.mark.parametrize("factory", [Broken, BrokenAsync], ids=["sync-init", "async-init"])
def test_start_raises_the_child_error_and_stops_the_children_started_before(factory):
    log = []

    async def main():
        n = procreg.current_node().process_count()
        with pytest.raises(ValueError, match="cannot start"):
            await Supervisor.start(
                [w(log, "a"), w(log, "b"), child(factory, log, id="bad"), w(log, "c")], name="s"
            )
        await asyncio.sleep(0)
        return (
            n,
            procreg.current_node().process_count(),
            await procreg.whereis("s", table="supervisors"),
        )

    before, after, named = procreg.run(main)
    assert after == before  # no supervisor, no child left
    assert named is None
    assert log == [
        ("start", "a"),
        ("start", "b"),
        ("start", "broken"),
        ("stop", "b", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


def test_an_inner_supervisor_that_fails_to_start_fails_start_child_only():
    log = []

    async def main():
        outer = await Supervisor.start([w(log, "x")])
        with pytest.raises(ValueError, match="cannot start"):
            await Supervisor.start_child(
                outer, child(Supervisor, [w(log, "a"), child(Broken, log, id="bad")], id="inner")
            )
        return procreg.is_alive(outer), await child_pids(outer), list(log)

    alive, kids, log = procreg.run(main)
    assert alive and list(kids) == ["x"]
    assert log == [("start", "x"), ("start", "a"), ("start", "broken"), ("stop", "a", "shutdown")]
