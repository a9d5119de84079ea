"""idle_timeout: a process ends with reason "idle" after that long without a message."""

from __future__ import annotations

import asyncio

import pytest

import procreg


class Quiet(procreg.Server):
    def init(self):
        self.n = 0

    def handle_info(self, msg):
        self.n += 1

    def handle_call(self, request):
        return self.n


async def _loop_receive():
    while True:
        await procreg.receive()


def test_idle_server_ends_with_reason_idle():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pid = Quiet.start(idle_timeout=0.05)
        ref = procreg.monitor(pid)
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason, loop.time() - t0, procreg.is_alive(pid)

    same, reason, elapsed, alive = procreg.run(main)
    assert same
    assert reason == "idle"
    assert elapsed >= 0.04
    assert alive is False


def test_idle_coroutine_process_ends_with_reason_idle():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pid = procreg.spawn(_loop_receive, idle_timeout=0.05)
        ref = procreg.monitor(pid)
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason, loop.time() - t0

    same, reason, elapsed = procreg.run(main)
    assert same
    assert reason == "idle"
    assert elapsed >= 0.04


def test_spawn_of_a_server_with_idle_timeout():
    async def main():
        pid = procreg.spawn(Quiet, idle_timeout=0.03, monitor=True)
        down = await procreg.receive(timeout=1)
        return down.pid == pid, down.reason

    assert procreg.run(main) == (True, "idle")


def test_idle_terminate_gets_reason_idle():
    reasons = []

    class T(procreg.Server):
        def terminate(self, reason):
            reasons.append(reason)

    async def main():
        T.start(idle_timeout=0.02, monitor=True)
        return (await procreg.receive(timeout=1)).reason

    assert procreg.run(main) == "idle"
    assert reasons == ["idle"]


@pytest.mark.parametrize("kind", ["server", "process"])
def test_a_trickle_of_messages_keeps_it_alive(kind):
    async def main():
        if kind == "server":
            pid = Quiet.start(idle_timeout=0.05)
        else:
            pid = procreg.spawn(_loop_receive, idle_timeout=0.05)
        ref = procreg.monitor(pid)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < 0.25:  # five timeouts' worth
            procreg.send(pid, "ping")
            await asyncio.sleep(0.01)
        alive = procreg.is_alive(pid)
        down = await procreg.receive(timeout=1)  # now let it go idle
        return alive, down.ref == ref, down.reason, loop.time() - t0

    alive, same, reason, elapsed = procreg.run(main)
    assert alive is True
    assert same and reason == "idle"
    assert elapsed >= 0.25


def test_calls_keep_a_server_alive():
    async def main():
        pid = Quiet.start(idle_timeout=0.05)
        for _ in range(15):
            await procreg.call(pid, "n")
            await asyncio.sleep(0.01)
        return procreg.is_alive(pid)

    assert procreg.run(main) is True


def test_busy_async_handler_is_not_idle():
    class Busy(procreg.Server):
        async def handle_cast(self, msg):
            await asyncio.sleep(0.12)

    async def main():
        pid = Busy.start(idle_timeout=0.03)
        ref = procreg.monitor(pid)
        procreg.cast(pid, "work")
        await asyncio.sleep(0.1)
        alive_while_busy = procreg.is_alive(pid)
        down = await procreg.receive(timeout=1)
        return alive_while_busy, down.ref == ref, down.reason

    assert procreg.run(main) == (True, True, "idle")


def test_busy_coroutine_process_is_not_idle():
    async def busy(parent):
        await asyncio.sleep(0.12)
        procreg.send(parent, "finished work")
        await _loop_receive()

    async def main():
        pid = procreg.spawn(busy, procreg.self(), idle_timeout=0.03)
        ref = procreg.monitor(pid)
        msg = await procreg.receive(timeout=1)
        down = await procreg.receive(timeout=1)
        return msg, down.ref == ref, down.reason

    assert procreg.run(main) == ("finished work", True, "idle")


def test_idle_timeout_is_cancelled_when_the_process_ends_first():
    async def quick():
        return None

    async def main():
        pid, ref = procreg.spawn_monitor(quick)
        down = await procreg.receive(timeout=1)
        assert down.ref == ref and down.pid == pid
        await asyncio.sleep(0.05)
        return down.reason

    assert procreg.run(main) == "normal"


def test_no_idle_timeout_by_default():
    async def main():
        pid = Quiet.start()
        p2 = procreg.spawn(_loop_receive)
        await asyncio.sleep(0.05)
        return procreg.is_alive(pid), procreg.is_alive(p2)

    assert procreg.run(main) == (True, True)


@pytest.mark.parametrize(("bad", "exc"), [(-1, ValueError), ("1", TypeError)])
def test_bad_idle_timeout(bad, exc):
    async def main():
        node = procreg.current_node()
        with pytest.raises(exc):
            procreg.spawn(_loop_receive, idle_timeout=bad)
        with pytest.raises(exc):
            Quiet.start(idle_timeout=bad)
        return node.process_count()

    assert procreg.run(main) == 1
