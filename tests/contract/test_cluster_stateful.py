"""A hypothesis state machine drives the registry of a two-node cluster against a plain
Python model, on every backend with more than one node (Redis, loopback).

Rules: spawn a process on a node, register it (on its own node), get_or_spawn from any
node, unregister from any node (only the owner's node may: `NotOwner` elsewhere), end
a process from any node, join and leave groups. After every rule the views of both
nodes converge to the model (a store-backed backend learns of other nodes' changes a
little later: the check waits for them): whereis and lookup of every key, every
node's own entries, the members of every group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Hashable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import procreg

from .conftest import Backend, NodeHandle

T = TypeVar("T")

KEYS = st.sampled_from(["a", "b", ("t", 2)])
GROUPS = st.sampled_from(["g1", ("pool", 3)])
NODE = st.integers(min_value=0, max_value=1)
INDEX = st.integers(min_value=0, max_value=1_000)


async def body() -> None:
    while True:
        await procreg.receive()


class Member(procreg.Server):
    pass


class ClusterMachine(RuleBasedStateMachine):
    backend: Backend  # set by the test, per backend

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self._cluster = self.backend.cluster(2)
        self.nodes: list[NodeHandle] = self.run(self._cluster.__aenter__())
        self.pids: list[procreg.Pid] = []
        self.alive: set[procreg.Pid] = set()
        self.keys: dict[Hashable, procreg.Pid] = {}
        self.groups: dict[Hashable, set[procreg.Pid]] = {}

    # -- plumbing -----------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def on(self, pid: procreg.Pid) -> NodeHandle:
        return next(n for n in self.nodes if n.name == pid[0])

    def pick(self, i: int) -> procreg.Pid:
        return self.pids[i % len(self.pids)]

    def teardown(self) -> None:
        async def stop() -> None:
            await self._cluster.__aexit__(None, None, None)
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.run(stop())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def forget(self, pid: procreg.Pid) -> None:
        self.alive.discard(pid)
        for key in [k for k, p in self.keys.items() if p == pid]:
            del self.keys[key]
        for members in self.groups.values():
            members.discard(pid)

    # -- rules --------------------------------------------------------------------
    @rule(n=NODE, server=st.booleans())
    def spawn(self, n: int, server: bool) -> None:
        pid = self.nodes[n].spawn(Member if server else body)
        self.pids.append(pid)
        self.alive.add(pid)

    @precondition(lambda self: self.pids)
    @rule(key=KEYS, i=INDEX)
    def register(self, key: Hashable, i: int) -> None:
        pid = self.pick(i)
        holder = self.keys.get(key)

        async def go() -> BaseException | None:
            try:
                await procreg.register(key, pid)
            except (procreg.NoProcess, procreg.AlreadyRegistered) as exc:
                return exc
            return None

        err = self.run(self.on(pid).run(go))
        if pid not in self.alive:
            assert isinstance(err, procreg.NoProcess), err
        elif holder is not None and holder != pid:
            assert isinstance(err, procreg.AlreadyRegistered), err
            assert err.pid == holder
        else:
            assert err is None, err
            self.keys[key] = pid

    @rule(key=KEYS, n=NODE)
    def get_or_spawn(self, key: Hashable, n: int) -> None:
        holder = self.keys.get(key)
        pid, started = self.run(self.nodes[n].run(procreg.spawn_unique, key, Member))
        if holder is not None:
            assert (pid, started) == (holder, False)
        else:
            assert started and pid[0] == self.nodes[n].name
            self.pids.append(pid)
            self.alive.add(pid)
            self.keys[key] = pid

    @rule(key=KEYS, n=NODE)
    def unregister(self, key: Hashable, n: int) -> None:
        holder = self.keys.get(key)

        async def go() -> bool | BaseException:
            try:
                return await procreg.unregister(key, pid=holder)
            except procreg.NotOwner as exc:
                return exc

        result = self.run(self.nodes[n].run(go))
        if holder is None:
            assert result is False
        elif holder[0] != self.nodes[n].name:
            assert isinstance(result, procreg.NotOwner), result
        else:
            assert result is True
            del self.keys[key]

    @precondition(lambda self: self.pids)
    @rule(i=INDEX, n=NODE)
    def end(self, i: int, n: int) -> None:
        pid = self.pick(i)
        self.nodes[n].node.exit(pid, "kill")  # from either node
        owner = self.on(pid).node

        async def gone() -> None:
            while owner.is_alive(pid):
                await asyncio.sleep(0.001)

        self.run(asyncio.wait_for(gone(), 5))
        self.forget(pid)

    @precondition(lambda self: self.pids)
    @rule(group=GROUPS, i=INDEX)
    def join(self, group: Hashable, i: int) -> None:
        pid = self.pick(i)

        async def go() -> bool | BaseException:
            try:
                return await procreg.join(group, pid)
            except procreg.NoProcess as exc:
                return exc

        result = self.run(self.on(pid).run(go))
        members = self.groups.setdefault(group, set())
        if pid not in self.alive:
            assert isinstance(result, procreg.NoProcess), result
        else:
            assert result is (pid not in members)
            members.add(pid)

    @precondition(lambda self: self.pids)
    @rule(group=GROUPS, i=INDEX)
    def leave(self, group: Hashable, i: int) -> None:
        pid = self.pick(i)
        result = self.run(self.on(pid).run(procreg.leave, group, pid))
        members = self.groups.setdefault(group, set())
        assert result is (pid in members)
        members.discard(pid)

    # -- invariants ---------------------------------------------------------------
    def views(self) -> list[Any]:
        async def one(handle: NodeHandle) -> Any:
            async def look() -> Any:
                return (
                    {k: await procreg.whereis(k) for k in ["a", "b", ("t", 2)]},
                    sorted(procreg.entries(), key=repr),
                    {g: await procreg.members(g) for g in ["g1", ("pool", 3)]},
                )

            return await handle.run(look)

        return [self.run(one(h)) for h in self.nodes]

    def expected(self, handle: NodeHandle) -> Any:
        return (
            {k: self.keys.get(k) for k in ["a", "b", ("t", 2)]},
            sorted(((k, p) for k, p in self.keys.items() if p[0] == handle.name), key=repr),
            {g: sorted(self.groups.get(g, ())) for g in ["g1", ("pool", 3)]},
        )

    @invariant()
    def every_node_converges_to_the_model(self) -> None:
        # (loopback: a loop turn or two; Redis: invalidations over pub/sub, releases
        # at the end of the owner's turn; the bound keeps a failure's shrinking short)
        deadline = time.monotonic() + (5.0 if self.backend.id == "redis" else 0.5)
        while True:
            views = self.views()
            wanted = [self.expected(h) for h in self.nodes]
            if views == wanted:
                return
            assert time.monotonic() < deadline, (views, wanted)
            self.run(asyncio.sleep(0.01))


EXAMPLES = {"loopback": 40, "redis": 8}  # (two nodes join Redis per example)


def test_cluster_registry_machine(cluster_backend: Backend) -> None:
    backend = cluster_backend
    machine = type(f"ClusterMachine_{backend.id}", (ClusterMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES[backend.id],
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
