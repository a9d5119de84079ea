"""The example of docs/guide/testing.md (included there): tests of your own code on
a loopback cluster. Async tests need a plugin: anyio's (as here) or pytest-asyncio."""

# --8<-- [start:example]
import asyncio

import pytest

import procreg
from procreg.testing import LoopbackCluster

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Room(procreg.Server):
    def init(self):
        self.said = []

    def handle_call(self, request):
        self.said.append(request)
        return len(self.said)


async def test_a_room_is_one_process_cluster_wide():
    async with LoopbackCluster(3) as (a, b, c):  # nodes n1, n2, n3
        room = await a.run(procreg.get_or_spawn, "lobby", Room)
        assert await b.run(procreg.whereis, "lobby") == room  # one registry
        assert await c.call(room, "hi") == 1  # a call across nodes


async def test_a_monitor_sees_its_node_go_down():
    async with LoopbackCluster(2) as cluster:
        a, b = cluster
        room = await a.run(procreg.get_or_spawn, "lobby", Room)

        async def watch():
            procreg.monitor(room)
            return await procreg.receive(timeout=1)

        seen = asyncio.ensure_future(b.run(watch))
        await cluster.settle()  # the monitor is set up
        await cluster.kill(a)
        assert (await seen).reason == "noconnection"
        assert await b.run(procreg.whereis, "lobby") is None  # its key is released


# --8<-- [end:example]
