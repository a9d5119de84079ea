"""Key monitors (issue 12, item 9): gproc's name monitors, on every backend (local,
Redis, loopback)."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from procreg import KeyEvent

from .conftest import Backend


async def _idle():
    while True:
        await procreg.receive()


class Holder(procreg.Server):
    def handle_call(self, request):
        return "ok"


async def _events(n):
    return [await procreg.receive(timeout=1) for _ in range(n)]


def test_registered_unregistered_and_ended_are_reported_in_order(backend: Backend):
    async def main():
        ref = await procreg.monitor_key("k")
        a = procreg.spawn(_idle)
        await procreg.register("k", a)
        await procreg.register("k", a, meta={"x": 1})  # same holder: no event
        await procreg.unregister("k", pid=a)
        b = await procreg.get_or_spawn("k", Holder)
        procreg.exit(b, "kill")
        return ref, a, b, await _events(4)

    ref, a, b, events = backend.run(main)
    assert events == [
        KeyEvent(ref, "default", "k", "registered", a),
        KeyEvent(ref, "default", "k", "unregistered", a),
        KeyEvent(ref, "default", "k", "registered", b),
        KeyEvent(ref, "default", "k", "ended", b),
    ]


def test_holder_end_is_reported_as_ended(backend: Backend):
    async def main():
        pid = await procreg.get_or_spawn("k", Holder, table="t")
        ref = await procreg.monitor_key("k", table="t")
        procreg.exit(pid, "kill")
        event = await procreg.receive(timeout=1)
        return event == KeyEvent(ref, "t", "k", "ended", pid)

    assert backend.run(main)


@pytest.mark.parametrize("how", ["get_or_spawn_async_init", "supervisor_key", "async_body"])
def test_every_way_of_registering_is_reported(backend: Backend, how):
    class AsyncInit(procreg.Server):
        async def init(self):
            await asyncio.sleep(0)

    async def main():
        ref = await procreg.monitor_key("k")
        if how == "get_or_spawn_async_init":
            pid = await procreg.get_or_spawn("k", AsyncInit)
        elif how == "async_body":
            pid = await procreg.get_or_spawn("k", _idle)
        else:
            await procreg.Supervisor.start([procreg.child(Holder, id="h", key="k")])
            pid = await procreg.whereis("k")
        event = await procreg.receive(timeout=1)
        return event == KeyEvent(ref, "default", "k", "registered", pid)

    assert backend.run(main)


def test_demonitor_stops_the_events_and_flush_drops_the_delivered_ones(backend: Backend):
    async def main():
        ref = await procreg.monitor_key("k")
        other = await procreg.monitor_key("k")
        holder = procreg.spawn(_idle)
        await procreg.register("k", holder)
        await asyncio.sleep(0)
        removed = procreg.demonitor(ref, flush=True)
        again = procreg.demonitor(ref)
        await procreg.unregister("k", pid=holder)
        events = await _events(2)  # only the other monitor's two events
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0.01)
        return removed, again, [(e.ref == other, e.event) for e in events]

    removed, again, events = backend.run(main)
    assert removed is True and again is False
    assert events == [(True, "registered"), (True, "unregistered")]


def test_a_key_monitor_dies_with_the_monitoring_process(backend: Backend):
    async def watcher(started):
        await procreg.monitor_key("k")
        started.set_result(None)
        await procreg.receive()

    async def main():
        started = asyncio.get_running_loop().create_future()
        w = procreg.spawn(watcher, started)
        await started
        registry = procreg.current_node().registry
        view = getattr(registry, "local", registry)  # the Redis backend's local view
        before = len(view.key_monitors)
        procreg.exit(w, "kill")
        await asyncio.sleep(0)
        await procreg.register("k", procreg.spawn(_idle))  # nobody to tell
        return before, len(view.key_monitors)

    assert backend.run(main) == (1, 0)


def test_a_server_can_monitor_a_key_and_gets_events_in_handle_info(backend: Backend):
    class Watcher(procreg.Server):
        async def init(self):
            self.events = []
            self.ref = await procreg.monitor_key(("room", 1))

        def handle_info(self, msg):
            self.events.append((msg.ref == self.ref, msg.event))

        def handle_call(self, request):
            return self.events

    async def main():
        w = await Watcher.start_ready()
        holder = procreg.spawn(_idle)
        await procreg.register(("room", 1), holder)
        procreg.exit(holder, "kill")
        await asyncio.sleep(0.01)
        return await procreg.call(w, "events")

    assert backend.run(main) == [(True, "registered"), (True, "ended")]


def test_monitor_key_errors(backend: Backend):
    async def main():
        with pytest.raises(TypeError):
            await procreg.monitor_key(["unhashable"])
        with pytest.raises(TypeError):
            await procreg.monitor_key("k", table=1)
        return True

    assert backend.run(main)

    async def outside():
        async with backend.new_node():
            with pytest.raises(procreg.NotInProcess):
                await procreg.monitor_key("k")

    asyncio.run(outside())
