"""The exit sequence, exit signals and exit reasons."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import idle


def _make_victim(async_terminate, events):
    class Victim(procreg.Server):
        def init(self):
            self.blocked_caller = None
            # a timer the victim owns (it is also the target)
            self.timer = procreg.send_after(10, procreg.self(), "tick")

        async def handle_call(self, request):
            self.blocked_caller = procreg.caller()
            await asyncio.Event().wait()  # never answers

        def _record(self, reason):
            me = procreg.self()
            events.append(
                (
                    "terminate",
                    reason,
                    ("victim", me) in procreg.entries(),
                    procreg.answered(self.blocked_caller),
                    self.timer.active,
                )
            )

        if async_terminate:

            async def terminate(self, reason):
                await asyncio.sleep(0.01)
                self._record(reason)

        else:

            def terminate(self, reason):
                self._record(reason)

    return Victim


@pytest.mark.parametrize("async_terminate", [False, True])
def test_exit_order(async_terminate):
    events = []
    Victim = _make_victim(async_terminate, events)

    async def caller(victim, parent):
        try:
            await procreg.call(victim, "block", timeout=5)
            events.append(("caller", "answered"))
        except procreg.ProcessExited as e:
            events.append(("caller", e.reason, await procreg.whereis("victim")))
        procreg.send(parent, "caller done")

    async def watcher(victim, parent):
        ref = procreg.monitor(victim)
        procreg.send(parent, "watching")
        down = await procreg.receive(timeout=2)
        events.append(
            (
                "down",
                down.ref == ref,
                down.reason,
                await procreg.whereis("victim"),
                procreg.is_alive(victim),
            )
        )
        procreg.send(parent, "watcher done")

    async def linked(victim, parent):
        procreg.link(victim)
        procreg.send(parent, "linked")
        ex = await procreg.receive(timeout=2)
        events.append(
            (
                "exit",
                type(ex).__name__,
                ex.pid == victim,
                ex.reason,
                await procreg.whereis("victim"),
            )
        )
        procreg.send(parent, "linked done")

    async def main():
        victim = Victim.start()
        await procreg.register("victim", victim)
        me = procreg.self()
        procreg.spawn(watcher, victim, me)
        procreg.spawn(linked, victim, me, trap_exits=True)
        assert {await procreg.receive(timeout=1) for _ in range(2)} == {"watching", "linked"}
        procreg.spawn(caller, victim, me)
        await asyncio.sleep(0.01)  # the call is being handled (blocked)
        procreg.exit(victim, "boom")
        done = {await procreg.receive(timeout=1) for _ in range(3)}
        assert done == {"caller done", "watcher done", "linked done"}
        return victim, procreg.entries()

    victim, entries = procreg.run(main)
    assert events == [
        ("terminate", "boom", True, False, True),
        ("caller", "boom", None),
        ("down", True, "boom", None, False),
        ("exit", "Exit", True, "boom", None),
    ]
    assert ("victim", victim) not in entries


def test_timers_of_the_ended_process_are_cancelled_at_the_end():
    holder = {}

    class Owner(procreg.Server):
        def init(self, target):
            holder["own"] = procreg.send_after(10, procreg.self(), "self-tick")
            holder["other"] = procreg.send_interval(10, target, "other-tick")

        def terminate(self, reason):
            holder["in_terminate"] = (holder["own"].active, holder["other"].active)

    async def main():
        pid, _ = procreg.spawn_monitor(Owner, procreg.self())
        procreg.exit(pid, "bye")
        await procreg.receive(timeout=1)
        return holder["own"].active, holder["other"].active

    assert procreg.run(main) == (False, False)
    assert holder["in_terminate"] == (True, True)


def test_exit_sequence_of_a_coroutine_process():
    events = []

    async def victim():
        await procreg.receive(timeout=5, match=lambda m: m == "never")

    async def watcher(v, parent):
        procreg.monitor(v)
        procreg.send(parent, "ready")
        d = await procreg.receive(timeout=2)
        events.append(("down", d.reason, await procreg.whereis("v")))
        procreg.send(parent, "done")

    async def linked(v, parent):
        procreg.link(v)
        procreg.send(parent, "ready")
        e = await procreg.receive(timeout=2)
        events.append(("exit", e.reason))
        procreg.send(parent, "done")

    async def caller(v, parent):
        try:
            await procreg.call(v, "queued", timeout=5)
        except procreg.ProcessExited as e:
            events.append(("caller", e.reason))
        procreg.send(parent, "done")

    async def main():
        v = procreg.spawn(victim)
        await procreg.register("v", v)
        me = procreg.self()
        procreg.spawn(watcher, v, me)
        procreg.spawn(linked, v, me, trap_exits=True)
        await procreg.receive(timeout=1)
        await procreg.receive(timeout=1)
        procreg.spawn(caller, v, me)
        await asyncio.sleep(0.01)  # the call waits, unread, in the victim's mailbox
        procreg.exit(v, "boom")
        for _ in range(3):
            await procreg.receive(timeout=1)

    procreg.run(main)
    assert events == [("caller", "boom"), ("down", "boom", None), ("exit", "boom")]


def test_terminate_gets_the_reason():
    reasons = []

    class T(procreg.Server):
        def terminate(self, reason):
            reasons.append(reason)

        def handle_cast(self, msg):
            raise ValueError("crash")

    async def main():
        a, _ = procreg.spawn_monitor(T)
        b, _ = procreg.spawn_monitor(T)
        c, _ = procreg.spawn_monitor(T)
        procreg.exit(a, "custom")
        procreg.cast(b, "crash")
        procreg.exit(c, ("tuple", "reason"))
        for _ in range(3):
            await procreg.receive(timeout=1)

    procreg.run(main)
    assert reasons[0] == "custom"
    assert ("tuple", "reason") in reasons
    assert any(isinstance(r, ValueError) for r in reasons)
    assert len(reasons) == 3


def test_terminate_is_not_called_on_kill():
    called = []

    class T(procreg.Server):
        def terminate(self, reason):
            called.append(reason)

    async def main():
        pid, _ = procreg.spawn_monitor(T)
        procreg.exit(pid, "kill")
        return await procreg.receive(timeout=1)

    down = procreg.run(main)
    assert down.reason == "kill"
    assert called == []


def test_async_terminate_runs_before_down():
    events = []

    class T(procreg.Server):
        async def terminate(self, reason):
            events.append("terminate start")
            await asyncio.sleep(0.02)
            events.append("terminate end")

    async def main():
        pid, _ = procreg.spawn_monitor(T)
        procreg.exit(pid, "stop")
        assert not procreg.is_alive(pid)  # exiting: no longer alive
        with pytest.raises(procreg.NoProcess):
            await procreg.call(pid, "x")
        down = await procreg.receive(timeout=1)
        events.append(("down", down.reason))

    procreg.run(main)
    assert events == ["terminate start", "terminate end", ("down", "stop")]


def test_exit_normal_to_another_non_trapping_process_is_ignored():
    async def main():
        pid = procreg.spawn(idle)
        srv = procreg.Server.start()
        procreg.exit(pid, "normal")
        procreg.exit(srv, "normal")
        await asyncio.sleep(0.01)
        return procreg.is_alive(pid), procreg.is_alive(srv)

    assert procreg.run(main) == (True, True)


def test_exit_normal_to_oneself_ends_the_process():
    async def body():
        procreg.exit(procreg.self(), "normal")
        await asyncio.sleep(1)
        return "should not get here"

    async def main():
        procreg.spawn_monitor(body)
        return await procreg.receive(timeout=1)

    down = procreg.run(main)
    assert down.reason == "normal"


def test_exit_with_a_reason_ends_a_non_trapping_process():
    async def main():
        pid, _ = procreg.spawn_monitor(idle)
        procreg.exit(pid, "because")
        down = await procreg.receive(timeout=1)
        return down.reason, procreg.is_alive(pid)

    assert procreg.run(main) == ("because", False)


def test_exit_to_a_trapping_process_becomes_an_exit_message():
    async def trapper(parent):
        msgs = [await procreg.receive(timeout=1) for _ in range(2)]
        procreg.send(parent, msgs)

    async def main():
        me = procreg.self()
        pid = procreg.spawn(trapper, me, trap_exits=True)
        procreg.exit(pid, "please")
        procreg.exit(pid, "normal")
        msgs = await procreg.receive(timeout=1)
        return me, msgs

    me, msgs = procreg.run(main)
    assert msgs == [procreg.Exit(me, "please"), procreg.Exit(me, "normal")]
    assert all(type(m) is procreg.Exit for m in msgs)


def test_exit_from_outside_a_process_has_no_sender():
    async def scenario():
        async with procreg.Node():
            box = []

            async def trapper():
                box.append(await procreg.receive(timeout=1))

            pid = procreg.spawn(trapper, trap_exits=True)
            procreg.exit(pid, "from outside")
            for _ in range(100):
                if box:
                    break
                await asyncio.sleep(0.001)
            return box

    assert asyncio.run(scenario()) == [procreg.Exit(None, "from outside")]


def test_exit_kill_is_untrappable():
    async def trapper():
        while True:
            await procreg.receive(timeout=5)

    async def main():
        pid = procreg.spawn(trapper, trap_exits=True)
        ref = procreg.monitor(pid)
        procreg.exit(pid, "kill")
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason, procreg.is_alive(pid)

    assert procreg.run(main) == (True, "kill", False)


def test_exit_kill_is_untrappable_for_a_server():
    class Trapper(procreg.Server):
        def handle_info(self, msg):
            pass

    async def main():
        pid = Trapper.start(trap_exits=True)
        ref = procreg.monitor(pid)
        procreg.exit(pid, "other")
        await asyncio.sleep(0.01)
        alive_after_other = procreg.is_alive(pid)
        procreg.exit(pid, "kill")
        down = await procreg.receive(timeout=1)
        return alive_after_other, down.ref == ref, down.reason

    assert procreg.run(main) == (True, True, "kill")


def test_exit_to_a_dead_pid_is_ignored():
    async def main():
        pid = procreg.spawn(idle)
        procreg.exit(pid, "kill")
        procreg.exit(pid, "kill")
        procreg.exit(pid, "other")
        return procreg.is_alive(pid)

    assert procreg.run(main) is False


def test_exit_reason_of_a_returning_process_is_normal():
    async def quick():
        return 42

    async def main():
        _, ref = procreg.spawn_monitor(quick)
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason

    assert procreg.run(main) == (True, "normal")


def test_exit_reason_of_a_crash_is_the_exception_object():
    err = ValueError("specific")

    async def crasher():
        raise err

    async def main():
        procreg.spawn_monitor(crasher)
        return (await procreg.receive(timeout=1)).reason

    assert procreg.run(main) is err


def test_process_count_drops_after_exits():
    async def quick():
        return None

    async def main():
        node = procreg.current_node()
        for _ in range(100):
            procreg.spawn(quick)
        for _ in range(100):
            procreg.exit(procreg.Server.start(), "kill")
        await asyncio.sleep(0.01)
        return node.process_count(), node.processes()

    count, pids = procreg.run(main)
    assert count == 1
    assert len(pids) == 1
