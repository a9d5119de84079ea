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
