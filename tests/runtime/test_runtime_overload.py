"""Bounded mailboxes (issue 13): ``max_mailbox`` / ``overflow`` on spawn, Server.start,
child specs, pi and the node default; what a full mailbox does to sends, casts, calls
and publishes; the counters in `Node.info` / `Node.stats`.

Every test counts messages: none depends on timing. A "slow" consumer is one whose
async handler waits on a future the test releases.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest

import procreg
from procreg import pi
from procreg.supervisor import root


class Gate(procreg.Server):
    """A consumer as slow as the test wants: each cast waits until `open` is set."""

    def init(self, gate: asyncio.Future[None]) -> None:
        self.gate = gate
        self.seen: list[Any] = []

    async def handle_cast(self, msg: Any) -> None:
        await asyncio.shield(self.gate)  # (ending the process must not cancel the gate)
        self.seen.append(msg)

    def handle_call(self, request: Any) -> Any:
        return ("seen", len(self.seen))

    def handle_info(self, msg: Any) -> None:
        self.seen.append(("info", msg))


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _node() -> procreg.Node:
    return procreg.current_node()


# -- drop ---------------------------------------------------------------------------


def test_slow_consumer_mailbox_stays_at_the_bound_and_drops_are_counted():
    bound, sent = 100, 10_000

    async def main():
        node = _node()
        gate = asyncio.get_running_loop().create_future()
        pid = Gate.start(gate, max_mailbox=bound)
        # the first cast is taken by the (blocked) handler on the next turn
        assert procreg.cast(pid, 0)
        await _turns()
        results = [procreg.cast(pid, i) for i in range(1, sent)]
        info = node.info(pid)
        stats = node.stats()
        gate.set_result(None)
        while node.info(pid).status != "idle":
            await asyncio.sleep(0)
        proc = node.local_process(pid)
        return results, info, stats, len(proc.seen), node.info(pid)

    results, info, stats, handled, after = procreg.run(main)
    assert results.count(True) == 100 and results.count(False) == sent - 1 - 100
    assert results[:100] == [True] * 100  # the oldest are kept, the new ones refused
    assert info.mailbox == bound
    assert info.mailbox_peak == bound
    assert info.max_mailbox == bound and info.overflow == "drop"
    assert info.dropped == sent - 1 - bound
    assert stats.dropped == sent - 1 - bound and stats.overloaded == 0
    assert handled == bound + 1
    assert after.mailbox == 0 and after.mailbox_peak == bound


def test_a_sender_faster_than_the_handler_is_held_at_the_bound():
    """The producer sends 20 messages per handled one; the mailbox never exceeds the
    bound and exactly the messages refused are missing."""
    bound, rounds, burst = 50, 200, 20

    async def main():
        node = _node()
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        gate.set_result(None)  # never blocks: one message handled per turn (async step)
        pid = Gate.start(gate, max_mailbox=bound)
        accepted = highest = 0
        for r in range(rounds):
            for i in range(burst):
                accepted += procreg.cast(pid, (r, i))
            highest = max(highest, node.info(pid).mailbox)
            await asyncio.sleep(0)
        while node.info(pid).status != "idle":
            await asyncio.sleep(0)
        return accepted, highest, len(node.local_process(pid).seen), node.info(pid), node.stats()

    accepted, highest, handled, info, stats = procreg.run(main)
    assert highest == bound
    assert handled == accepted
    assert info.dropped == rounds * burst - accepted == stats.dropped
    assert info.mailbox_peak == bound


def test_runtime_signals_pass_a_full_mailbox():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        pid = Gate.start(gate, max_mailbox=2, trap_exits=True)
        procreg.cast(pid, 0)
        await _turns()
        assert procreg.cast(pid, 1) and procreg.cast(pid, 2)
        assert not procreg.cast(pid, 3) and not procreg.send(pid, "plain")
        node = _node()
        proc = node.local_process(pid)

        async def short():
            pass

        other = procreg.spawn(short)
        # a monitor's Down and a link's Exit are queued although the mailbox is full
        node._add_monitor(proc, node.local_process(other))
        node._add_link(proc, node.local_process(other))
        await _turns()
        kinds = [type(item[1]).__name__ for item in proc._procreg_mail]
        gate.set_result(None)
        return kinds, node.info(pid).dropped

    kinds, dropped = procreg.run(main)
    assert kinds == ["int", "int", "Down", "Exit"]
    assert dropped == 2


def test_key_events_pass_a_full_mailbox():
    """A key monitor's `KeyEvent` is a runtime signal (it came with the merge of key
    monitors): a full mailbox still takes it."""

    async def main():
        node = _node()
        gate = asyncio.get_running_loop().create_future()
        pid = Gate.start(gate, max_mailbox=1)
        procreg.cast(pid, 0)
        await _turns()
        assert procreg.cast(pid, 1)
        assert not procreg.send(pid, "plain")
        ref = await node.registry.monitor_key("watched", procreg.DEFAULT_TABLE, pid)
        await procreg.register("watched", procreg.self())
        await procreg.unregister("watched")
        proc = node.local_process(pid)
        events = [item[1] for item in proc._procreg_mail if type(item[1]) is procreg.KeyEvent]
        gate.set_result(None)
        return [(e.ref == ref, e.event) for e in events], node.info(pid).dropped

    events, dropped = procreg.run(main)
    assert events == [(True, "registered"), (True, "unregistered")]
    assert dropped == 1


def test_coroutine_process_bound_and_selective_receive():
    """A coroutine process's bound refuses plain messages, but a message its pending
    selective receive matches goes straight to it, full mailbox or not."""

    async def body(parent):
        got = await procreg.receive(match=lambda m: m == "go")
        procreg.send(parent, ("got", got))
        await procreg.receive(match=lambda m: m == "never")

    async def main():
        node = _node()
        pid = procreg.spawn(body, procreg.self(), max_mailbox=3)
        await _turns()
        sent = [procreg.send(pid, i) for i in range(5)]
        assert procreg.send(pid, "go")
        got = await procreg.receive(timeout=5)
        info = node.info(pid)
        procreg.exit(pid, "kill")
        return sent, got, info

    sent, got, info = procreg.run(main)
    assert sent == [True, True, True, False, False]
    assert got == ("got", "go")
    assert info.mailbox == 3 and info.dropped == 2 and info.mailbox_peak == 3


def test_unbounded_processes_record_their_mailbox_peak():
    async def main():
        node = _node()
        gate = asyncio.get_running_loop().create_future()
        gate.set_result(None)
        pid = Gate.start(gate)
        for i in range(37):
            procreg.cast(pid, i)
        peak_before = node.info(pid).mailbox_peak
        while node.info(pid).status != "idle":
            await asyncio.sleep(0)
        return peak_before, node.info(pid)

    peak_before, info = procreg.run(main)
    assert peak_before == 37  # what waits now counts too
    assert info.mailbox_peak == 37 and info.max_mailbox is None and info.dropped == 0


# -- calls --------------------------------------------------------------------------


def test_call_to_a_full_mailbox_raises_overloaded_at_once():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        pid = Gate.start(gate, max_mailbox=2)
        procreg.cast(pid, 0)
        await _turns()
        procreg.cast(pid, 1)
        procreg.cast(pid, 2)
        coro = procreg.call(pid, "hello", timeout=None)
        try:
            coro.send(None)  # runs the call up to its first suspension: there is none
        except procreg.Overloaded as exc:
            error: BaseException = exc
        else:
            raise AssertionError("the call suspended instead of failing at once")
        alive = procreg.is_alive(pid)
        gate.set_result(None)
        await _turns(10)
        reply = await procreg.call(pid, "again")  # room again: answered
        return error, alive, reply, _node().stats()

    error, alive, reply, stats = procreg.run(main)
    assert isinstance(error, procreg.Overloaded) and isinstance(error, procreg.ProcregError)
    assert error.bound == 2
    assert alive  # "drop": the process keeps running
    assert reply == ("seen", 3)
    assert stats.dropped == 1


def test_call_to_a_full_coroutine_process_raises_overloaded():
    async def body():
        await procreg.receive(match=lambda m: m == "never")

    async def main():
        pid = procreg.spawn(body, max_mailbox=1)
        await _turns()
        procreg.send(pid, "filler")
        with pytest.raises(procreg.Overloaded) as info:
            await procreg.call(pid, "req", timeout=None)
        procreg.exit(pid, "kill")
        return info.value.pid == pid

    assert procreg.run(main)


def test_a_remote_style_caller_is_failed_with_overloaded():
    """The cluster hands `_call` a caller object with ``reply``/``fail``: a full
    mailbox fails it with `Overloaded` (which survives a pickle round trip, as the
    transport needs) and `_call` returns False."""

    class Caller:
        done = False

        def __init__(self) -> None:
            self.failed: BaseException | None = None

        def reply(self, value: Any) -> None:
            raise AssertionError("not expected")

        def fail(self, exc: BaseException) -> None:
            self.failed = exc

    async def main():
        gate = asyncio.get_running_loop().create_future()
        pid = Gate.start(gate, max_mailbox=1)
        procreg.cast(pid, 0)
        await _turns()
        procreg.cast(pid, 1)
        caller = Caller()
        queued = _node().local_process(pid)._procreg_call(caller, "req")
        gate.set_result(None)
        return queued, caller.failed, pid

    queued, failed, pid = procreg.run(main)
    assert queued is False
    assert isinstance(failed, procreg.Overloaded)
    copy = pickle.loads(pickle.dumps(failed))
    assert type(copy) is procreg.Overloaded and copy.pid == pid and copy.bound == 1
    assert str(copy) == str(failed)


# -- exit ---------------------------------------------------------------------------


def test_overflow_exit_ends_the_process_with_overload_for_links_and_monitors():
    async def main():
        node = _node()
        gate = asyncio.get_running_loop().create_future()
        procreg.current_node().local_process(procreg.self())._procreg_extra().trap = True
        pid = Gate.start(gate, max_mailbox=3, overflow="exit", link=True)
        ref = procreg.monitor(pid)
        procreg.cast(pid, 0)
        await _turns()
        results = [procreg.cast(pid, i) for i in range(1, 6)]
        alive = procreg.is_alive(pid)
        msgs = [await procreg.receive(timeout=5) for _ in range(2)]
        return pid, ref, results, alive, msgs, node.stats()

    pid, ref, results, alive, msgs, stats = procreg.run(main)
    assert results == [True, True, True, False, False]
    assert not alive
    down = next(m for m in msgs if isinstance(m, procreg.Down))
    exit_ = next(m for m in msgs if isinstance(m, procreg.Exit))
    assert down.ref == ref and down.pid == pid and down.reason == "overload"
    assert exit_.pid == pid and exit_.reason == "overload"
    assert stats.overloaded == 1
    assert stats.dropped == 1  # the message that found it full; later ones: dead


def test_overflow_exit_kills_a_non_trapping_linked_process():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        box: dict[str, Any] = {}

        async def owner():
            box["pid"] = Gate.start(gate, max_mailbox=1, overflow="exit", link=True)
            await procreg.receive(match=lambda m: m == "never")

        _, oref = procreg.spawn_monitor(owner)
        await _turns()
        procreg.cast(box["pid"], 0)
        await _turns()
        procreg.cast(box["pid"], 1)
        procreg.cast(box["pid"], 2)  # full: the server ends, its link takes the owner
        down = await procreg.receive(timeout=5)
        return down, oref

    down, oref = procreg.run(main)
    assert down.ref == oref and down.reason == "overload"


def test_call_to_a_full_exit_policy_server_raises_overloaded_and_ends_it():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        pid = Gate.start(gate, max_mailbox=1, overflow="exit")
        ref = procreg.monitor(pid)
        procreg.cast(pid, 0)
        await _turns()
        procreg.cast(pid, 1)
        with pytest.raises(procreg.Overloaded):
            await procreg.call(pid, "req")
        down = await procreg.receive(timeout=5)
        return down.ref == ref, down.reason

    assert procreg.run(main) == (True, "overload")


def test_supervisor_restarts_a_child_ended_by_overload():
    async def main():
        node = _node()
        gate = asyncio.get_running_loop().create_future()
        spec = procreg.child(
            Gate, gate, id="slow", key="slow", max_mailbox=4, overflow="exit", restart="permanent"
        )
        assert spec.max_mailbox == 4 and spec.overflow == "exit"
        await procreg.Supervisor.start([spec], name="overload_sup")
        first = await procreg.whereis("slow")
        assert node.info(first).max_mailbox == 4
        procreg.cast(first, 0)
        await _turns()
        results = [procreg.cast(first, i) for i in range(1, 7)]
        second = None
        for _ in range(1000):  # bounded: the restart takes a few loop turns
            second = await procreg.whereis("slow")
            if second is not None and second != first:
                break
            await asyncio.sleep(0)
        info = node.info(second) if second is not None else None
        return first, second, results, info, node.stats()

    first, second, results, info, stats = procreg.run(main)
    assert results == [True] * 4 + [False, False]
    assert second is not None and second != first
    assert info is not None and info.max_mailbox == 4 and info.overflow == "exit"
    assert stats.overloaded == 1


# -- defaults, class attributes, validation -----------------------------------------------


def test_node_default_bound_applies_to_processes_without_their_own():
    async def idle():
        await procreg.receive(match=lambda m: m == "never")

    async def main():
        node = _node()
        a = procreg.spawn(idle)
        b = procreg.spawn(idle, max_mailbox=0)  # opts out
        c = procreg.spawn(idle, max_mailbox=7)
        sup = await procreg.Supervisor.start([])
        await _turns()
        sent = [procreg.send(a, i) for i in range(4)]
        out = (
            node.info(a).max_mailbox,
            node.info(b).max_mailbox,
            node.info(c).max_mailbox,
            node.info(sup).max_mailbox,
            node.info(procreg.self()).max_mailbox,
            node.stats().max_mailbox,
            sent,
        )
        for pid in (a, b, c):
            procreg.exit(pid, "kill")
        return out

    a, b, c, sup, me, default, sent = procreg.run(main, max_mailbox=2)
    assert (a, b, c, sup, me, default) == (2, None, 7, None, 2, 2)
    assert sent == [True, True, False, False]


def test_node_default_overflow_exit():
    async def idle():
        await procreg.receive(match=lambda m: m == "never")

    async def main():
        pid, ref = procreg.spawn_monitor(idle)
        await _turns()
        procreg.send(pid, 1)
        procreg.send(pid, 2)
        return await procreg.receive(timeout=5), ref

    down, ref = procreg.run(main, max_mailbox=1, overflow="exit")
    assert down.ref == ref and down.reason == "overload"


def test_server_class_attributes_bound_every_start_path():
    class Bounded(Gate):
        max_mailbox = 5
        overflow = "exit"

    async def main():
        node = _node()
        gate = asyncio.get_running_loop().create_future()
        a = Bounded.start(gate)
        b = await procreg.get_or_spawn("bounded", Bounded, gate)
        c = Bounded.start(gate, max_mailbox=9, overflow="drop")  # the call's own win
        d = await Bounded.start_ready(gate, max_mailbox=0)
        out = [(node.info(p).max_mailbox, node.info(p).overflow) for p in (a, b, c, d)]
        gate.set_result(None)
        return out

    assert procreg.run(main) == [(5, "exit"), (5, "exit"), (9, "drop"), (None, "exit")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_mailbox": -1}, "max_mailbox"),
        ({"max_mailbox": 2.5}, "max_mailbox"),
        ({"max_mailbox": True}, "max_mailbox"),
        ({"overflow": "block"}, "overflow"),
    ],
)
def test_bad_bounds_are_refused_and_start_nothing(options, message):
    async def idle():
        pass

    async def main():
        node = _node()
        before = node.process_count()
        for start in (
            lambda: procreg.spawn(idle, **options),
            lambda: Gate.start(None, **options),
            lambda: procreg.child(Gate, id="x", **options),
        ):
            with pytest.raises(ValueError, match=message):
                start()
        with pytest.raises(ValueError, match=message):
            await Gate.start_ready(None, **options)
        return node.process_count() - before

    assert procreg.run(main) == 0
    with pytest.raises(ValueError, match=message):
        procreg.Node(**options)


def test_bad_class_attributes_are_refused_at_class_creation():
    with pytest.raises(ValueError, match="overflow"):

        class Bad(procreg.Server):
            overflow = "wait"


def test_a_supervisor_child_spec_takes_no_bound():
    with pytest.raises(TypeError, match="max_mailbox"):
        procreg.child(procreg.Supervisor, id="s", max_mailbox=3)


# -- publish -------------------------------------------------------------------------


def test_publish_reports_the_members_it_could_not_reach():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        full = Gate.start(gate, max_mailbox=1)
        roomy = Gate.start(gate, max_mailbox=10)
        for pid in (full, roomy):
            await procreg.join("g", pid)
        procreg.cast(full, 0)
        await _turns()
        procreg.cast(full, 1)  # full now
        first = await procreg.publish("g", "hello")
        second = await procreg.publish("g", "again")
        empty = await procreg.publish("nobody", "x")
        gate.set_result(None)
        return first, second, empty

    first, second, empty = procreg.run(main)
    assert first == 1 and first.reached == 1 and first.missed == 1 and first.members == 2
    assert isinstance(first, int) and isinstance(first, procreg.Published)
    assert second.missed == 1
    assert empty == 0 and empty.missed == 0
    assert pickle.loads(pickle.dumps(first)).missed == 1


def test_publish_to_exit_policy_members_ends_the_full_ones_and_counts_them():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        pids = [Gate.start(gate, max_mailbox=1, overflow="exit") for _ in range(3)]
        for pid in pids:
            await procreg.join("g", pid)
        procreg.cast(pids[0], 0)
        await _turns()
        procreg.cast(pids[0], 1)  # only the first is full
        result = await procreg.publish("g", "m")
        members = await procreg.members("g")
        gate.set_result(None)
        return result, members, pids

    result, members, pids = procreg.run(main)
    assert (result.reached, result.missed) == (2, 1)
    assert members == pids[1:]


# -- pi ----------------------------------------------------------------------------------


class _Slow:
    @staticmethod
    async def proc(msg: Any, p: pi.Pi) -> Any:
        if msg is pi.INIT:
            return pi.Ok(p)
        if msg == "get":
            return pi.Reply(p.state, p)
        await asyncio.shield(p.state["gate"])
        return pi.Ok(p)


def test_pi_bound_cast_returns_an_overload_error_and_send_raises():
    async def main():
        await root()
        gate = asyncio.get_running_loop().create_future()
        state = {"gate": gate}
        record = pi.Pi("slow", "pi_overload", "root", _Slow, state=state, max_mailbox=2)
        started = await pi.start(record)
        assert not isinstance(started, pi.Error)
        pid = started[0]
        assert _node().info(pid).max_mailbox == 2
        results = [pi.cast("pi_overload", "slow", i) for i in range(1)]
        await _turns()
        results += [pi.cast("pi_overload", "slow", i) for i in range(3)]
        with pytest.raises(procreg.Overloaded):
            await pi.send("pi_overload", "slow", "get")
        gate.set_result(None)
        await pi.stop("pi_overload", "slow")
        return results

    assert procreg.run(main) == [None, None, None, pi.Error("overload")]


def test_pi_record_bound_is_checked():
    async def main():
        await root()
        with pytest.raises(ValueError, match="overflow"):
            await pi.start(pi.Pi("x", "t", "root", _Slow, overflow="nope"))

    procreg.run(main)
