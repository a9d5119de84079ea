"""Per-peer state of a node is pruned as other nodes come and go: a long-running
node must not keep something for every incarnation of every node that ever talked
to it."""

from __future__ import annotations

import asyncio

import pytest

import procreg

from .conftest import SECRET

pytestmark = pytest.mark.timeout(120)


class Echo(procreg.Server):
    def handle_call(self, request: object) -> object:
        return request


def test_sequence_numbers_of_dead_incarnations_are_forgotten(redis) -> None:
    async def main() -> tuple[list[tuple[str, int]], int]:
        a = procreg.Node("a", cluster=redis.url, secret=SECRET, lease=1.0)
        async with a:
            echo = Echo.start()
            for _ in range(4):  # node "b" restarts: a new incarnation each time
                b = procreg.Node("b", cluster=redis.url, secret=SECRET, lease=1.0)
                async with b:
                    task = asyncio.create_task(b_calls(b, echo))
                    assert await task == "hi"
                while "b" in a.nodes():
                    await asyncio.sleep(0.02)
            transport = a._cluster.transport
            return sorted(transport._last_seq), transport.received_frames

    async def b_calls(b: procreg.Node, pid: procreg.Pid) -> object:
        return await b.call(pid, "hi", 10.0)

    seqs, received = asyncio.run(main())
    assert received >= 4  # b's calls reached a
    # one sequence number for b at most (its newest incarnation: a may not have
    # polled it down yet), not one per incarnation that ever sent a frame
    assert len([s for s in seqs if s[0] == "b"]) <= 1, seqs


def test_stop_right_after_a_fence_leaves_no_task_behind(redis) -> None:
    async def main() -> list[str]:
        node = procreg.Node("a", cluster=redis.url, secret=SECRET, lease=1.0)
        await node.start()
        before = asyncio.all_tasks()
        node._cluster.fence_now("test")  # schedules the rejoin
        await node.stop()
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        names = [repr(t.get_coro()) for t in left]
        for task in left:
            task.cancel()
        return names

    assert asyncio.run(main()) == []


def test_stop_with_claims_releases_and_key_watches_in_flight_leaves_no_task_behind(
    redis,
) -> None:
    """The cluster's fire-and-forget tasks (claim batches, release flushes, key-watch
    writes) go through the store's `Tasks` set while they run, and `Node.stop` stops
    them: none outlives it."""

    async def main() -> tuple[list[str], int]:
        from procreg.naming import DEFAULT_TABLE

        node = procreg.Node("a", cluster=redis.url, secret=SECRET, lease=1.0)
        before = asyncio.all_tasks()
        async with node:
            backend = node._cluster.backend
            pids = [await procreg.get_or_spawn(f"k{i}", Echo) for i in range(50)]
            watcher = Echo.start()
            callers = [
                asyncio.ensure_future(procreg.get_or_spawn(f"new{i}", Echo)) for i in range(2000)
            ]
            await asyncio.sleep(0)  # the first claim batch is under way
            for pid in pids[:25]:
                procreg.exit(pid, "kill")  # releases queued
            watches = [
                asyncio.ensure_future(backend.monitor_key(f"k{i}", DEFAULT_TABLE, watcher))
                for i in range(25, 50)
            ]
            await asyncio.sleep(0)
            running = len(node._cluster.store.tasks)
        await asyncio.sleep(0)
        left = [
            t
            for t in asyncio.all_tasks() - before
            if not t.done() and t not in callers and t not in watches
        ]
        names = [repr(t.get_coro()) for t in left]
        for task in [*left, *callers, *watches]:
            task.cancel()
        await asyncio.gather(*callers, *watches, return_exceptions=True)
        return names, running

    names, running = asyncio.run(main())
    assert running > 0  # (they went through the set)
    assert names == []


def test_a_background_task_nothing_else_refers_to_is_kept_until_it_ends() -> None:
    """The event loop holds tasks weakly: a task waiting on a future only it refers
    to is collected by the garbage collector mid-run (never finishing) unless it is
    kept, as `Tasks.spawn` keeps it."""
    import gc

    from procreg.cluster.tasks import Tasks

    async def wait_forever(done: list[str]) -> None:
        fut = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            done.append("unwound")

    async def main() -> tuple[list[str], list[str], int]:
        plain: list[str] = []
        kept: list[str] = []
        tasks = Tasks()
        asyncio.get_running_loop().create_task(wait_forever(plain))
        tasks.spawn(wait_forever(kept))
        await asyncio.sleep(0)
        gc.collect()
        running = len(tasks)
        await tasks.stop()
        return plain, kept, running

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda *_: None)  # ("Task was destroyed but it is pending")
    try:
        plain, kept, running = loop.run_until_complete(main())
    finally:
        loop.close()
    assert plain == ["unwound"]  # collected mid-run: its coroutine was closed
    assert running == 1 and kept == ["unwound"]  # kept until `stop` cancelled it


def test_a_claim_whose_task_has_not_started_when_the_store_closes_is_answered(redis) -> None:
    """Closing the store lets the node's tasks end rather than cancelling them: a
    task cancelled before its first step never answers the callers it owns (here a
    `get_or_spawn` whose claim batch had not started: it waited for ever)."""

    async def main() -> tuple[bool, BaseException | None, int]:
        node = procreg.Node("a", cluster=redis.url, secret=SECRET, lease=1.0)
        async with node:
            backend = node._cluster.backend
            fut = backend.get_or_spawn_missed("k1", Echo, ())  # its claim task not started
            await node._cluster.store.close()
            done = fut.done()
            error = fut.exception() if done else None
            if not done:
                fut.cancel()
            return done, error, backend.claims.in_flight

    done, error, in_flight = asyncio.run(main())
    assert done and isinstance(error, procreg.ClusterUnavailable), error
    assert in_flight == 0
