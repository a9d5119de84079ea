"""The node: lifecycle, shutdown, procreg.run, creations and the GC policy."""

from __future__ import annotations

import asyncio
import gc

import pytest

import procreg
from conftest import idle


def test_node_defaults():
    async def scenario():
        async with procreg.Node() as node:
            assert procreg.current_node() is node
            return node.name, node.process_count(), repr(node)

    name, count, text = asyncio.run(scenario())
    assert name == "local"
    assert count == 0
    assert "local" in text


class _Holder(procreg.Server):
    def init(self):
        self.seen = []

    def handle_cast(self, msg):
        self.seen.append(msg)


def test_info_stats_local_process_and_running():
    async def scenario():
        node = procreg.Node("introspect")
        before = node.running
        async with node:
            pid = _Holder.start(max_mailbox=5)
            await procreg.register("h", pid)
            procreg.cast(pid, "hi")
            await asyncio.sleep(0)
            info, stats = node.info(pid), node.stats()
            holder = node.local_process(pid)
            seen = list(holder.seen)
            procreg.exit(pid, "kill")
            await asyncio.sleep(0)
            gone = node.info(pid), node.local_process(pid)
            return before, node.running, info, stats, holder, seen, gone, pid

    before, during, info, stats, holder, seen, gone, pid = asyncio.run(scenario())
    assert (before, during) == (False, True)
    assert isinstance(info, procreg.ProcessInfo) and isinstance(stats, procreg.NodeStats)
    assert info.pid == pid and info.kind == "_Holder" and info.status == "idle"
    assert info.keys == ("('default', 'h')",) and info.groups == ()
    assert (info.mailbox, info.max_mailbox, info.overflow, info.handled) == (0, 5, "drop", 1)
    assert info.age >= 0 and info.as_dict()["keys"] == ["('default', 'h')"]
    assert set(info.as_dict()) == set(procreg.ProcessInfo.__slots__)
    assert (stats.node, stats.processes, stats.spawned, stats.max_mailbox) == (
        "introspect",
        1,  # no main process: asyncio.run, not procreg.run
        1,
        None,
    )
    assert set(stats.as_dict()) == set(procreg.NodeStats.__slots__)
    # the node's fast constructors make ordinary records
    assert type(info) is procreg.ProcessInfo and type(stats) is procreg.NodeStats
    same = {**info.as_dict(), "keys": info.keys, "groups": info.groups}
    assert procreg.ProcessInfo(**same) == info and hash(procreg.ProcessInfo(**same)) == hash(info)
    assert procreg.NodeStats(**stats.as_dict()) == stats
    assert isinstance(holder, _Holder) and seen == ["hi"]
    assert gone == (None, None)


def test_info_age_is_each_process_own():
    """A process's age counts from its own start (not from a mark shared by a
    stretch of spawns): one started later is younger by at least the time between."""

    async def scenario():
        async with procreg.Node() as node:
            old = procreg.spawn(idle)
            await asyncio.sleep(0.05)
            young = procreg.spawn(idle)
            await asyncio.sleep(0)
            return node.info(old), node.info(young), node.stats().uptime

    old, young, uptime = asyncio.run(scenario())
    assert old is not None and young is not None
    assert old.age - young.age >= 0.05 * 0.99  # (float rounding)
    assert 0 <= young.age <= uptime - 0.05 * 0.99


def test_named_node_pids():
    async def scenario():
        async with procreg.Node("web1") as node:
            pid = procreg.spawn(idle)
            return node, pid

    node, pid = asyncio.run(scenario())
    assert pid.node == "web1"
    assert pid.creation == node.creation


def test_stop_ends_processes_with_shutdown_and_calls_terminate():
    events = []

    class SyncT(procreg.Server):
        def terminate(self, reason):
            events.append(("sync", reason))

    class AsyncT(procreg.Server):
        async def terminate(self, reason):
            events.append(("async start", reason))
            await asyncio.sleep(0.01)
            events.append(("async end", reason))

    async def body():
        try:
            await idle()
        finally:
            events.append(("coroutine finally", None))

    async def scenario():
        async with procreg.Node() as node:
            a = SyncT.start()
            b = AsyncT.start()
            c = procreg.spawn(body)
            await asyncio.sleep(0.01)
            pids = (a, b, c)
        return node, pids

    node, _ = asyncio.run(scenario())
    assert ("sync", "shutdown") in events
    assert ("async start", "shutdown") in events
    assert ("async end", "shutdown") in events
    assert ("coroutine finally", None) in events
    assert node.process_count() == 0


def test_stop_fails_pending_calls_with_process_exited_shutdown():
    class Never(procreg.Server):
        def handle_call(self, request):
            return procreg.NOREPLY

    async def scenario():
        async with procreg.Node():
            pid = Never.start()
            task = asyncio.ensure_future(procreg.call(pid, "x", timeout=5))
            await asyncio.sleep(0.01)
        with pytest.raises(procreg.ProcessExited) as info:
            await task
        return info.value.reason

    assert asyncio.run(scenario()) == "shutdown"


def test_stop_ends_newest_processes_first():
    order = []

    class T(procreg.Server):
        def init(self, tag):
            self.tag = tag

        def terminate(self, reason):
            order.append(self.tag)

    async def scenario():
        async with procreg.Node():
            for tag in "abc":
                T.start(tag)

    asyncio.run(scenario())
    assert order == ["c", "b", "a"]


def test_run_ends_leftover_servers_with_shutdown():
    reasons = []

    class T(procreg.Server):
        def terminate(self, reason):
            reasons.append(reason)

    async def main():
        for _ in range(5):
            T.start()
        return "done"

    assert procreg.run(main) == "done"
    assert reasons == ["shutdown"] * 5


def test_stop_gives_up_on_a_hanging_async_terminate():
    class Hang(procreg.Server):
        async def terminate(self, reason):
            await asyncio.sleep(10)

    async def scenario():
        node = procreg.Node()
        await node.start()
        Hang.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await node.stop(timeout=0.05)
        return loop.time() - t0, node.process_count()

    elapsed, count = asyncio.run(scenario())
    assert elapsed < 2.0
    assert count == 0


def test_stop_is_idempotent_and_start_twice_raises():
    async def scenario():
        node = procreg.Node()
        await node.start()
        with pytest.raises(RuntimeError):
            await node.start()
        await node.stop()
        await node.stop()
        return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_stop_with_linked_and_trapping_processes():
    async def trapper():
        while True:
            await procreg.receive()

    async def main():
        for _ in range(10):
            procreg.spawn(trapper, link=True, trap_exits=True)
            procreg.spawn(idle, link=True)
        return "done"

    assert procreg.run(main) == "done"


def test_run_returns_mains_value_and_passes_args():
    async def main(a, b=None):
        return (a, b, procreg.self().node)

    assert procreg.run(main, 1, name="n1") == (1, None, "n1")


def test_run_reraises_mains_exception():
    err = LookupError("from main")

    async def main():
        await asyncio.sleep(0)
        raise err

    with pytest.raises(LookupError) as info:
        procreg.run(main)
    assert info.value is err


def test_run_stops_the_node_after_main():
    box = {}

    async def main():
        box["node"] = procreg.current_node()
        box["pid"] = procreg.spawn(idle)

    procreg.run(main)
    assert box["node"].process_count() == 0
    with pytest.raises(procreg.NoNode):
        procreg.current_node()


def test_run_with_uvloop():
    pytest.importorskip("uvloop")

    async def main():
        pid = procreg.Server.start()
        procreg.exit(pid, "kill")
        procreg.send(procreg.self(), "hi")
        return await procreg.receive(timeout=1)

    assert procreg.run(main, uvloop=True) == "hi"


def test_sequential_nodes_have_different_creations_and_stale_pids_are_dead():
    async def first():
        return procreg.current_node().creation, procreg.self(), procreg.spawn(idle)

    c1, main1, other1 = procreg.run(first)

    async def second():
        node = procreg.current_node()
        new = procreg.spawn(idle)
        alive = procreg.is_alive(other1), procreg.is_alive(main1)
        procreg.send(other1, "dropped")  # silently dropped
        with pytest.raises(procreg.NoProcess):
            await procreg.call(other1, "x", timeout=5)
        return node.creation, new, alive

    c2, new2, alive = procreg.run(second)
    assert c1 != c2
    assert other1.creation == c1 and new2.creation == c2
    assert alive == (False, False)
    assert new2 != other1


def test_two_nodes_running_side_by_side():
    async def one(name):
        async with procreg.Node(name) as node:
            pid = procreg.spawn(idle)
            await asyncio.sleep(0.01)
            assert procreg.current_node() is node
            return pid.node, node.process_count()

    async def scenario():
        return await asyncio.gather(one("a"), one("b"))

    assert asyncio.run(scenario()) == [("a", 1), ("b", 1)]


def test_current_node_in_a_task_that_outlives_the_node_raises_no_node():
    async def scenario():
        ev = asyncio.Event()

        async def later():
            await ev.wait()
            outcomes = []
            try:
                procreg.current_node()
                outcomes.append("returned a node")
            except procreg.NoNode:
                outcomes.append("NoNode")
            try:
                procreg.spawn(idle)
                outcomes.append("spawned")
            except procreg.NoNode:
                outcomes.append("NoNode")
            return outcomes

        async with procreg.Node():
            task = asyncio.create_task(later())
        ev.set()
        return await task

    assert asyncio.run(scenario()) == ["NoNode", "NoNode"]


def test_gc_policy_raises_thresholds_while_running_and_restores(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)
    before = gc.get_threshold()

    async def main():
        return gc.get_threshold()

    during = procreg.run(main)
    after = gc.get_threshold()
    assert during[0] > before[0]
    assert during[0] >= 20_000
    assert after == before


def test_gc_policy_restores_thresholds_after_a_crashing_main(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)
    before = gc.get_threshold()

    async def main():
        raise ValueError("x")

    with pytest.raises(ValueError):
        procreg.run(main)
    assert gc.get_threshold() == before


def test_gc_policy_off_leaves_thresholds_alone(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)
    before = gc.get_threshold()

    async def main():
        for _ in range(100):
            procreg.spawn(idle)
        return gc.get_threshold()

    during = procreg.run(main, gc_policy=False)
    assert during == before
    assert gc.get_threshold() == before


def test_gc_policy_env_off(monkeypatch):
    monkeypatch.setenv("PROCREG_GC_POLICY", "0")
    before = gc.get_threshold()

    async def main():
        return gc.get_threshold()

    assert procreg.run(main) == before


def test_gc_thresholds_restored_after_nested_nodes(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)
    before = gc.get_threshold()

    async def scenario():
        async with procreg.Node("outer"):
            inner = procreg.Node("inner")
            await inner.start()
            during_both = gc.get_threshold()
            await inner.stop()
            during_outer = gc.get_threshold()
        return during_both, during_outer

    both, outer = asyncio.run(scenario())
    assert both[0] >= 20_000 and outer[0] >= 20_000
    assert gc.get_threshold() == before


class _Idle(procreg.Server):
    pass


def test_gc_policy_freezes_many_processes_and_unfreezes_when_they_end(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)
    assert gc.get_freeze_count() == 0

    async def main():
        pids = [_Idle.start() for _ in range(25_000)]
        frozen = gc.get_freeze_count()
        for pid in pids:
            procreg.exit(pid, "kill")
        return frozen, gc.get_freeze_count()

    frozen, after_exits = procreg.run(main)
    assert frozen > 0
    assert after_exits == 0
    assert gc.get_freeze_count() == 0


def test_gc_policy_unfreezes_when_the_node_stops(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)

    async def main():
        for _ in range(25_000):
            _Idle.start()
        return gc.get_freeze_count()

    assert procreg.run(main) > 0
    assert gc.get_freeze_count() == 0


def test_gc_policy_off_never_freezes(monkeypatch):
    monkeypatch.delenv("PROCREG_GC_POLICY", raising=False)

    async def main():
        for _ in range(25_000):
            _Idle.start()
        return gc.get_freeze_count()

    assert procreg.run(main, gc_policy=False) == 0


@pytest.mark.parametrize("async_terminate", [False, True])
def test_no_process_code_runs_after_the_node_stopped(async_terminate):
    ran_after_stop = []
    stopped = {"flag": False}

    async def late_body():
        for _ in range(5):
            await asyncio.sleep(0.005)
            if stopped["flag"]:
                ran_after_stop.append(True)

    class SpawnsOnTerminate(procreg.Server):
        if async_terminate:

            async def terminate(self, reason):
                await asyncio.sleep(0)
                procreg.spawn(late_body)

        else:

            def terminate(self, reason):
                procreg.spawn(late_body)

    async def scenario():
        async with procreg.Node() as node:
            SpawnsOnTerminate.start()
        stopped["flag"] = True
        await asyncio.sleep(0.05)
        return node.process_count()

    assert asyncio.run(scenario()) == 0
    assert ran_after_stop == []
