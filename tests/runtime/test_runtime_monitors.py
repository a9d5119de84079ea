"""Monitors: monitor/demonitor, Down reasons, spawn(monitor=True), spawn_monitor."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import idle


class Crash(Exception):
    pass


async def _down_for(make_it_end):
    """Monitor a fresh idle process, end it with `make_it_end(pid)`, return the Down."""
    pid = procreg.spawn(idle)
    ref = procreg.monitor(pid)
    make_it_end(pid)
    down = await procreg.receive(timeout=1)
    assert type(down) is procreg.Down
    assert down.ref == ref
    assert down.pid == pid
    return down


def test_down_reason_normal():
    async def quick():
        await asyncio.sleep(0)

    async def main():
        pid = procreg.spawn(quick)
        ref = procreg.monitor(pid)
        return pid, ref, await procreg.receive(timeout=1)

    pid, ref, down = procreg.run(main)
    assert down == procreg.Down(ref, pid, "normal")


def test_down_reason_crash_is_the_exception_object():
    err = Crash("the one")

    async def crasher():
        await asyncio.sleep(0)
        raise err

    async def main():
        pid = procreg.spawn(crasher)
        ref = procreg.monitor(pid)
        return pid, ref, await procreg.receive(timeout=1)

    pid, ref, down = procreg.run(main)
    assert down.ref == ref and down.pid == pid
    assert down.reason is err


@pytest.mark.parametrize("reason", ["kill", "shutdown", "custom", ("tuple", 1)])
def test_down_reason_for_exit_signals(reason):
    async def main():
        down = await _down_for(lambda pid: procreg.exit(pid, reason))
        return down.reason

    assert procreg.run(main) == reason


def test_down_reason_for_a_server_crash():
    class Bomb(procreg.Server):
        def handle_info(self, msg):
            raise Crash(msg)

    async def main():
        pid = Bomb.start()
        ref = procreg.monitor(pid)
        procreg.send(pid, "bang")
        return ref, await procreg.receive(timeout=1)

    ref, down = procreg.run(main)
    assert down.ref == ref
    assert isinstance(down.reason, Crash) and down.reason.args == ("bang",)


def test_monitor_of_a_dead_pid_gives_noproc_at_once():
    async def quick():
        return None

    async def main():
        pid = procreg.spawn(quick)
        await asyncio.sleep(0.01)
        ref = procreg.monitor(pid)
        down = await procreg.receive(timeout=0)  # already in the mailbox
        return pid, ref, down

    pid, ref, down = procreg.run(main)
    assert down == procreg.Down(ref, pid, "noproc")


def test_monitor_of_a_never_existing_pid_gives_noproc():
    async def main():
        node = procreg.current_node()
        ghost = procreg.Pid(node.name, node.creation, 777_777)
        ref = procreg.monitor(ghost)
        return ghost, ref, await procreg.receive(timeout=0)

    ghost, ref, down = procreg.run(main)
    assert down == procreg.Down(ref, ghost, "noproc")


def test_monitor_of_a_pid_from_an_older_node_gives_noproc():
    async def first():
        return procreg.self()

    stale = procreg.run(first)

    async def main():
        ref = procreg.monitor(stale)
        return ref, await procreg.receive(timeout=0)

    ref, down = procreg.run(main)
    assert down == procreg.Down(ref, stale, "noproc")


def test_demonitor_stops_the_monitor():
    async def main():
        pid = procreg.spawn(idle)
        ref = procreg.monitor(pid)
        first = procreg.demonitor(ref)
        second = procreg.demonitor(ref)
        procreg.exit(pid, "boom")
        try:
            msg = await procreg.receive(timeout=0.03)
        except TimeoutError:
            msg = None
        return first, second, msg

    assert procreg.run(main) == (True, False, None)


def test_demonitor_one_of_two_monitors():
    async def main():
        pid = procreg.spawn(idle)
        r1 = procreg.monitor(pid)
        r2 = procreg.monitor(pid)
        procreg.demonitor(r1)
        procreg.exit(pid, "boom")
        down = await procreg.receive(timeout=1)
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0.02)
        return down.ref == r2

    assert procreg.run(main)


def test_demonitor_flush_removes_an_already_delivered_down():
    async def main():
        pid = procreg.spawn(idle)
        ref = procreg.monitor(pid)
        procreg.send(procreg.self(), "before")
        procreg.exit(pid, "boom")
        procreg.send(procreg.self(), "after")
        await asyncio.sleep(0.01)
        active = procreg.demonitor(ref, flush=True)
        rest = []
        while True:
            try:
                rest.append(await procreg.receive(timeout=0))
            except TimeoutError:
                break
        return active, rest

    active, rest = procreg.run(main)
    assert active is False
    assert rest == ["before", "after"]


def test_demonitor_without_flush_keeps_a_delivered_down():
    async def main():
        pid = procreg.spawn(idle)
        ref = procreg.monitor(pid)
        procreg.exit(pid, "boom")
        await asyncio.sleep(0.01)
        active = procreg.demonitor(ref)
        return active, ref, await procreg.receive(timeout=0)

    active, ref, down = procreg.run(main)
    assert active is False
    assert down.ref == ref and down.reason == "boom"


def test_demonitor_flush_only_removes_its_own_down():
    async def main():
        a = procreg.spawn(idle)
        b = procreg.spawn(idle)
        ra = procreg.monitor(a)
        rb = procreg.monitor(b)
        procreg.exit(a, "a")
        procreg.exit(b, "b")
        await asyncio.sleep(0.01)
        procreg.demonitor(ra, flush=True)
        down = await procreg.receive(timeout=0)
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0)
        return down.ref == rb, down.reason

    assert procreg.run(main) == (True, "b")


def test_server_demonitor_flush_removes_a_queued_down():
    class Watcher(procreg.Server):
        def init(self):
            self.got = []

        def handle_call(self, request):
            if request == "got":
                return self.got
            kind, pid = request
            if kind == "watch":
                self.ref = procreg.monitor(pid)
                return "ok"
            # kill the target and flush its Down in the same handler
            procreg.exit(pid, "gone")
            return procreg.demonitor(self.ref, flush=True)

        def handle_info(self, msg):
            self.got.append(msg)

    async def main():
        w = Watcher.start()
        target = procreg.spawn(idle)
        await procreg.call(w, ("watch", target))
        flushed = await procreg.call(w, ("kill", target))
        await asyncio.sleep(0.01)
        return flushed, await procreg.call(w, "got")

    assert procreg.run(main) == (False, [])


def test_spawn_with_monitor_true():
    async def crasher():
        raise Crash("x")

    async def main():
        pid = procreg.spawn(crasher, monitor=True)
        return pid, await procreg.receive(timeout=1)

    pid, down = procreg.run(main)
    assert type(down) is procreg.Down
    assert down.pid == pid
    assert isinstance(down.reason, Crash)


def test_server_start_with_monitor_true():
    async def main():
        pid = procreg.Server.start(monitor=True)
        procreg.exit(pid, "stop")
        return pid, await procreg.receive(timeout=1)

    pid, down = procreg.run(main)
    assert down.pid == pid and down.reason == "stop"


def test_spawn_monitor_returns_pid_and_ref():
    async def quick():
        return None

    async def main():
        pid, ref = procreg.spawn_monitor(quick)
        assert isinstance(ref, procreg.Ref)
        return pid, ref, await procreg.receive(timeout=1)

    pid, ref, down = procreg.run(main)
    assert down == procreg.Down(ref, pid, "normal")


def test_spawn_monitor_of_a_server_class():
    class S(procreg.Server):
        def init(self, x):
            self.x = x

        def handle_call(self, request):
            return self.x

    async def main():
        pid, ref = procreg.spawn_monitor(S, 5)
        value = await procreg.call(pid, "get")
        procreg.exit(pid, "done")
        return value, ref, await procreg.receive(timeout=1)

    value, ref, down = procreg.run(main)
    assert value == 5
    assert down.ref == ref and down.reason == "done"


def test_server_monitors_a_process_and_gets_down_in_handle_info():
    class Watcher(procreg.Server):
        def init(self, parent):
            self.parent = parent

        def handle_call(self, pid):
            return procreg.monitor(pid)

        def handle_info(self, msg):
            procreg.send(self.parent, ("watcher got", msg))

    async def main():
        w = Watcher.start(procreg.self())
        target = procreg.spawn(idle)
        ref = await procreg.call(w, target)
        procreg.exit(target, "bye")
        return target, ref, await procreg.receive(timeout=1)

    target, ref, msg = procreg.run(main)
    assert msg == ("watcher got", procreg.Down(ref, target, "bye"))


def test_process_monitors_a_server():
    async def main():
        srv = procreg.Server.start()
        ref = procreg.monitor(srv)
        procreg.exit(srv, "bye")
        return srv, ref, await procreg.receive(timeout=1)

    srv, ref, down = procreg.run(main)
    assert down == procreg.Down(ref, srv, "bye")


def test_several_watchers_each_get_their_down():
    async def watcher(target, parent):
        ref = procreg.monitor(target)
        procreg.send(parent, "ready")
        down = await procreg.receive(timeout=1)
        procreg.send(parent, down.ref == ref and down.reason)

    async def main():
        target = procreg.spawn(idle)
        for _ in range(20):
            procreg.spawn(watcher, target, procreg.self())
        for _ in range(20):
            await procreg.receive(timeout=1)
        procreg.exit(target, "r")
        return [await procreg.receive(timeout=1) for _ in range(20)]

    assert procreg.run(main) == ["r"] * 20


def test_watcher_ending_first_is_harmless():
    async def watcher(target, parent):
        procreg.monitor(target)
        procreg.send(parent, "ready")

    async def main():
        target = procreg.spawn(idle)
        procreg.spawn(watcher, target, procreg.self())
        await procreg.receive(timeout=1)
        await asyncio.sleep(0.01)
        ref = procreg.monitor(target)
        procreg.exit(target, "later")
        return ref, await procreg.receive(timeout=1)

    ref, down = procreg.run(main)
    assert down.ref == ref and down.reason == "later"


def test_monitor_does_not_link():
    async def crasher(parent):
        await procreg.receive(timeout=1)
        raise Crash("only me")

    async def main():
        pid = procreg.spawn(crasher, procreg.self())
        ref = procreg.monitor(pid)
        procreg.send(pid, "go")
        down = await procreg.receive(timeout=1)
        return down.ref == ref, isinstance(down.reason, Crash), procreg.is_alive(procreg.self())

    assert procreg.run(main) == (True, True, True)


def test_monitor_outside_a_process_raises_not_in_process():
    async def scenario():
        async with procreg.Node():
            pid = procreg.spawn(idle)
            with pytest.raises(procreg.NotInProcess):
                procreg.monitor(pid)
            with pytest.raises(procreg.NotInProcess):
                procreg.spawn(idle, monitor=True)
            return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_spawn_monitor_outside_a_process_raises_and_leaves_no_process():
    async def scenario():
        async with procreg.Node() as node:
            with pytest.raises(procreg.NotInProcess):
                procreg.spawn_monitor(idle)
            return node.process_count()

    assert asyncio.run(scenario()) == 0
