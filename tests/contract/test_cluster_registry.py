"""The registry contract across nodes (unique keys and groups cluster-wide), on every
backend that has more than one node: Redis (nodes in this process) and loopback.

tests/cluster/test_cluster_registry.py holds the Redis-only side (node processes,
traces of every start, caches racing with invalidations)."""

from __future__ import annotations

import asyncio
import collections
from functools import partial
from typing import Any

import pytest

import procreg
from conftest import wait_until
from procreg.cluster.backend import home_node

from .conftest import Backend

pytestmark = pytest.mark.timeout(60)

INITS: collections.Counter[Any] = collections.Counter()  # key -> inits, in this process


class Keyed(procreg.Server):
    """Counts its inits by key (every node runs in this process); answers calls with
    its node's name."""

    def init(self, key: Any) -> None:
        INITS[key] += 1

    def handle_call(self, request: Any) -> Any:
        if request == "node":
            return procreg.current_node().name
        return request


class SlowKeyed(Keyed):
    async def init(self, key: Any) -> None:  # type: ignore[override]
        INITS[key] += 1
        await asyncio.sleep(0.001)


class Failing(procreg.Server):
    def init(self, key: Any) -> None:
        raise ValueError("init failed on purpose")


async def idle() -> None:
    await procreg.receive()


async def log_body(log: list[Any]) -> None:
    while True:
        log.append(await procreg.receive())


def test_nodes_register_and_find_each_others_keys(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(3) as nodes:
            n1, n2, n3 = nodes
            pids = {}
            for node in nodes:
                pid = node.spawn(Keyed, f"key-{node.name}")
                await node.run(procreg.register, f"key-{node.name}", pid)
                pids[node.name] = pid
            for node in nodes:
                for owner, pid in pids.items():
                    assert await node.run(procreg.whereis, f"key-{owner}") == pid
                assert await node.run(procreg.whereis, "nobody") is None
                # entries() is this node's own view
                assert await node.run(_entries) == [(f"key-{node.name}", pids[node.name])]

            # a key held on another node cannot be registered; the error names the holder
            other = n2.spawn(idle)
            with pytest.raises(procreg.AlreadyRegistered) as info:
                await n2.run(procreg.register, f"key-{n1.name}", other)
            assert info.value.pid == pids[n1.name]

            # a pid found on another node answers a call
            found = await n3.run(procreg.whereis, f"key-{n1.name}")
            assert await n3.node.call(found, "node") == n1.name

            # only the owner's node unregisters it
            async def unregister_theirs() -> Any:
                return await procreg.unregister(f"key-{n1.name}")

            with pytest.raises(procreg.NotOwner):
                await n2.run(unregister_theirs)

            async def unregister_ours() -> bool:
                return await procreg.unregister(f"key-{n1.name}", pid=pids[n1.name])

            assert await n1.run(unregister_ours) is True
            for node in nodes:
                await wait_until(lambda n=node: _gone(n, f"key-{n1.name}"))

    asyncio.run(main())


async def _entries() -> list[Any]:
    return procreg.entries()


async def _gone(node: Any, key: Any, table: str = "default") -> bool:
    return await node.run(procreg.whereis, key, table) is None


def test_a_key_is_free_everywhere_once_its_holder_ends_on_another_node(
    cluster_backend: Backend,
) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(3) as (n1, n2, n3):
            pid = await n1.run(procreg.get_or_spawn, "k", Keyed, "k")
            assert await n2.run(procreg.whereis, "k") == pid
            n2.node.exit(pid, "kill")  # an exit signal from another node
            for node in (n1, n2, n3):
                await wait_until(lambda n=node: _gone(n, "k"))
            again, started = await n3.run(procreg.spawn_unique, "k", Keyed, "k")
            assert started and again[0] == n3.name
            for node in (n1, n2, n3):
                await wait_until(lambda n=node: _found(n, "k", again))

    asyncio.run(main())


async def _found(node: Any, key: Any, pid: Any) -> bool:
    return await node.run(procreg.whereis, key) == pid


@pytest.mark.parametrize("factory", [Keyed, SlowKeyed], ids=["sync-init", "async-init"])
def test_concurrent_get_or_spawn_from_every_node_starts_one_process_per_key(
    cluster_backend: Backend, factory: type
) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(3) as nodes:
            keys = [(factory.__name__, backend.id, i) for i in range(60)]

            async def race(offset: int) -> list[Any]:
                order = keys[offset:] + keys[:offset]
                pids = await asyncio.gather(
                    *(procreg.get_or_spawn(k, factory, k, table="race") for k in order)
                )
                by_key = dict(zip(order, pids, strict=True))
                return [by_key[k] for k in keys]

            answers = await asyncio.gather(
                *(node.run(race, 20 * n) for n, node in enumerate(nodes))
            )
            for i, key in enumerate(keys):
                assert len({a[i] for a in answers}) == 1, key
                assert INITS[key] == 1, key
            for node in nodes:
                assert [await node.run(procreg.whereis, k, "race") for k in keys] == answers[0]

    asyncio.run(main())


def test_hash_placement_starts_each_key_on_its_home_node(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(3) as nodes:
            names = sorted(n.name for n in nodes)
            keys = [("home", backend.id, i) for i in range(30)]

            async def ask() -> list[Any]:
                return [
                    await procreg.get_or_spawn(k, Keyed, k, table="homes", placement="hash")
                    for k in keys
                ]

            answers = await asyncio.gather(*(node.run(ask) for node in nodes))
            homes = collections.Counter()
            for i, key in enumerate(keys):
                home = home_node(key, names)
                homes[home] += 1
                assert {a[i] for a in answers} == {answers[0][i]}
                assert answers[0][i][0] == home
                assert INITS[key] == 1
            assert len(homes) == 3, homes

    asyncio.run(main())


def test_hash_placement_raises_the_home_nodes_error_and_leaves_the_key_free(
    cluster_backend: Backend,
) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(2) as (n1, n2):
            names = sorted([n1.name, n2.name])
            key = next(("f", i) for i in range(100) if home_node(("f", i), names) == n2.name)

            async def ask() -> Any:
                return await procreg.get_or_spawn(key, Failing, key, placement="hash")

            with pytest.raises(ValueError, match="on purpose"):
                await n1.run(ask)
            assert await n1.run(procreg.whereis, key) is None
            assert await n2.run(procreg.whereis, key) is None

    asyncio.run(main())


def test_groups_span_nodes_and_publish_reaches_every_member(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(3) as nodes:
            logs: dict[str, list[Any]] = {n.name: [] for n in nodes}
            members = {}
            for node in nodes:
                pid = node.spawn(log_body, logs[node.name])
                assert await node.run(procreg.join, "room", pid) is True
                members[node.name] = pid
            expected = sorted(members.values())
            for node in nodes:
                assert await node.run(procreg.members, "room") == expected
            assert await nodes[0].run(procreg.publish, "room", ("hello", 1)) == 3
            await wait_until(lambda: all(("hello", 1) in log for log in logs.values()))

            # leave on one node, a member killed from another: both drop out everywhere
            n1, n2, n3 = nodes
            assert await n2.run(procreg.leave, "room", members[n2.name]) is True
            n1.node.exit(members[n3.name], "kill")

            async def shrunk(node: Any) -> bool:
                return await node.run(procreg.members, "room") == [members[n1.name]]

            for node in nodes:
                await wait_until(lambda n=node: shrunk(n))
            assert await n3.run(procreg.publish, "room", "again") == 1
            await wait_until(lambda: "again" in logs[n1.name])
            assert logs[n2.name] == [("hello", 1)]

    asyncio.run(main())


def test_a_remote_lookup_gets_the_metadata_as_json(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(2) as (n1, n2):
            pid = n1.spawn(idle)
            await n1.run(partial(procreg.register, meta={"pair": (1, 2)}), "k", pid)
            assert await n1.run(procreg.lookup, "k") == (pid, {"pair": (1, 2)})
            assert await n2.run(procreg.lookup, "k") == (pid, {"pair": [1, 2]})

    asyncio.run(main())


def test_keys_and_pids_that_cannot_cross_the_cluster_are_refused(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(2) as (n1, n2):
            with pytest.raises(TypeError):
                await n1.run(procreg.get_or_spawn, frozenset({1}), Keyed, 1)
            pid = n1.spawn(idle)
            with pytest.raises(ValueError):  # only on the pid's own node
                await n2.run(procreg.register, "k", pid)
            with pytest.raises(ValueError):
                await n2.run(procreg.join, "g", pid)
            with pytest.raises(TypeError):  # metadata must be JSON
                await n1.run(partial(procreg.register, meta={"x": object()}), "k", pid)
            assert await n1.run(procreg.whereis, "k") is None

    asyncio.run(main())


def test_key_monitors_hear_of_changes_made_on_other_nodes(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(2) as (n1, n2):
            events: list[Any] = []
            ready = asyncio.Event()

            async def watch() -> None:
                await procreg.monitor_key("watched")
                ready.set()
                while True:
                    msg = await procreg.receive()
                    events.append((msg.event, msg.pid))

            n2.spawn(watch)
            await ready.wait()
            pid = n1.spawn(idle)
            await n1.run(procreg.register, "watched", pid)
            await wait_until(lambda: events == [("registered", pid)])
            n1.node.exit(pid, "kill")
            await wait_until(lambda: events == [("registered", pid), ("ended", pid)])

    asyncio.run(main())


def test_a_stopped_nodes_keys_and_members_are_released(cluster_backend: Backend) -> None:
    async def main() -> None:
        backend = cluster_backend
        async with backend.cluster(3) as (n1, n2, n3):
            pid = await n3.run(procreg.get_or_spawn, "k", Keyed, "k")
            await n3.run(procreg.join, "g", pid)
            assert await n1.run(procreg.whereis, "k") == pid
            await n3.node.stop()
            for node in (n1, n2):
                await wait_until(lambda n=node: _gone(n, "k"))
                assert await node.run(procreg.members, "g") == []
            again, started = await n1.run(procreg.spawn_unique, "k", Keyed, "k2")
            assert started and again[0] == n1.name

    asyncio.run(main())
