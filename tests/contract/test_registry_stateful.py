"""A hypothesis state machine drives the registry against a plain Python model, on
every backend (the contract suite's `backend` fixture: local, Redis, loopback).

Rules: spawn, register, unregister, get_or_spawn (spawn_unique), end a process
(kill / shutdown / crash / normal), join, leave, publish. After every step the
invariants check that entries(), tables(), count(), whereis(), lookup() and
members() match the model and that no key maps to a dead process.
"""

from __future__ import annotations

import asyncio
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

from .conftest import Backend

T = TypeVar("T")

KEYS = st.sampled_from(["a", "b", 1, ("t", 2)])
TABLES = st.sampled_from(["default", "t1", "t2"])
GROUPS = st.sampled_from(["g1", "g2", ("pool", 3)])
KINDS = st.sampled_from(["body", "server", "async-server"])
INDEX = st.integers(min_value=0, max_value=1_000)

Received = dict[procreg.Pid, list[Any]]


async def member_body(received: Received) -> None:
    me = procreg.self()
    while True:
        msg = await procreg.receive()
        if msg == "crash":
            raise RuntimeError("crash on request")
        if msg == "stop":
            return
        received.setdefault(me, []).append(msg)


class Member(procreg.Server):
    def init(self, received: Received) -> None:
        self.received = received

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise RuntimeError("crash on request")
        if msg == "stop":
            procreg.exit(procreg.self(), "normal")

    def handle_info(self, msg: Any) -> None:
        self.received.setdefault(self.pid, []).append(msg)


class AsyncMember(Member):
    async def init(self, received: Received) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.received = received


FACTORIES: dict[str, Any] = {"body": member_body, "server": Member, "async-server": AsyncMember}


class RegistryMachine(RuleBasedStateMachine):
    backend: Backend  # set by the test, per backend

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.node = self.backend.new_node()
        self.loop.run_until_complete(self.node.start())
        self.received: Received = {}
        # the model
        self.pids: list[procreg.Pid] = []  # every process ever started
        self.kinds: dict[procreg.Pid, str] = {}
        self.alive: set[procreg.Pid] = set()
        self.keys: dict[tuple[str, Hashable], procreg.Pid] = {}
        self.meta: dict[tuple[str, Hashable], dict[str, Any] | None] = {}
        self.groups: dict[Hashable, list[procreg.Pid]] = {}
        self.published = 0

    # -- plumbing -----------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def settle(self, until: Any = None) -> None:
        """Give the processes a few loop turns (until `until()` holds, if given)."""

        async def turns() -> None:
            if until is None:
                for _ in range(5):
                    await asyncio.sleep(0)
                return
            for _ in range(200):
                if until():
                    return
                await asyncio.sleep(0)
            assert until(), "condition never held"

        self.run(turns())

    def pick(self, i: int) -> procreg.Pid:
        return self.pids[i % len(self.pids)]

    def started(self, pid: procreg.Pid, kind: str) -> None:
        assert pid not in self.kinds, f"{pid!r} handed out twice as new"
        self.pids.append(pid)
        self.kinds[pid] = kind
        self.alive.add(pid)

    def forget(self, pid: procreg.Pid) -> None:
        self.alive.discard(pid)
        for entry in [e for e, p in self.keys.items() if p == pid]:
            del self.keys[entry]
            del self.meta[entry]
        for group in list(self.groups):
            members = self.groups[group]
            if pid in members:
                members.remove(pid)
            if not members:
                del self.groups[group]

    def teardown(self) -> None:
        async def stop() -> None:
            await self.node.stop()
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

    # -- rules --------------------------------------------------------------------
    @rule(kind=KINDS)
    def spawn(self, kind: str) -> None:
        async def go() -> procreg.Pid:
            if kind == "body":
                return procreg.spawn(member_body, self.received)
            if kind == "server":
                return Member.start(self.received)
            return await AsyncMember.start_ready(self.received)

        self.started(self.run(go()), kind)

    @precondition(lambda self: self.pids)
    @rule(key=KEYS, table=TABLES, i=INDEX, meta=st.none() | st.fixed_dictionaries({"v": INDEX}))
    def register(self, key: Hashable, table: str, i: int, meta: dict[str, Any] | None) -> None:
        pid = self.pick(i)
        entry = (table, key)
        holder = self.keys.get(entry)

        async def go() -> BaseException | None:
            try:
                await procreg.register(key, pid, table, meta=meta)
            except (procreg.NoProcess, procreg.AlreadyRegistered) as exc:
                return exc
            return None

        err = self.run(go())
        if pid not in self.alive:
            assert isinstance(err, procreg.NoProcess), err
        elif holder is not None and holder != pid:
            assert isinstance(err, procreg.AlreadyRegistered), err
            assert err.pid == holder
        else:
            assert err is None, err
            self.keys[entry] = pid
            self.meta[entry] = dict(meta) if meta is not None else None

    @precondition(lambda self: self.pids)
    @rule(key=KEYS, table=TABLES, i=st.none() | INDEX)
    def unregister(self, key: Hashable, table: str, i: int | None) -> None:
        pid = self.pick(i) if i is not None else None
        entry = (table, key)
        holder = self.keys.get(entry)

        async def go() -> bool | BaseException:
            try:
                return await procreg.unregister(key, table, pid=pid)
            except procreg.NotOwner as exc:
                return exc

        result = self.run(go())
        if holder is None:
            assert result is False
        elif pid is not None and pid != holder:
            assert isinstance(result, procreg.NotOwner), result
        else:
            assert result is True
            del self.keys[entry]
            del self.meta[entry]

    @rule(key=KEYS, table=TABLES, kind=KINDS)
    def get_or_spawn(self, key: Hashable, table: str, kind: str) -> None:
        entry = (table, key)
        holder = self.keys.get(entry)
        pid, started = self.run(
            procreg.spawn_unique(key, FACTORIES[kind], self.received, table=table)
        )
        if holder is not None:
            assert (pid, started) == (holder, False)
        else:
            assert started is True
            self.started(pid, kind)
            self.keys[entry] = pid
            self.meta[entry] = None

    @precondition(lambda self: self.pids)
    @rule(i=INDEX, how=st.sampled_from(["kill", "shutdown", "crash", "normal"]))
    def end(self, i: int, how: str) -> None:
        pid = self.pick(i)
        kind = self.kinds[pid]
        if how in ("kill", "shutdown"):
            procreg.exit(pid, how)
        elif kind == "body":
            procreg.send(pid, how if how == "crash" else "stop")
        else:
            procreg.cast(pid, how if how == "crash" else "stop")
        self.settle(until=lambda: not procreg.is_alive(pid))
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

        result = self.run(go())
        if pid not in self.alive:
            assert isinstance(result, procreg.NoProcess), result
        elif pid in self.groups.get(group, []):
            assert result is False
        else:
            assert result is True
            self.groups.setdefault(group, []).append(pid)

    @precondition(lambda self: self.pids)
    @rule(group=GROUPS, i=INDEX)
    def leave(self, group: Hashable, i: int) -> None:
        pid = self.pick(i)
        result = self.run(procreg.leave(group, pid))
        members = self.groups.get(group, [])
        assert result is (pid in members)
        if pid in members:
            members.remove(pid)
            if not members:
                del self.groups[group]

    @rule(group=GROUPS)
    def publish(self, group: Hashable) -> None:
        self.published += 1
        msg = ("pub", self.published)
        n = self.run(procreg.publish(group, msg))
        members = list(self.groups.get(group, []))
        assert n == len(members)

        def delivered() -> bool:
            return all(msg in self.received.get(p, []) for p in members)

        self.settle(until=delivered)
        self.settle()  # a few more turns: nobody else may get it
        for pid, got in self.received.items():
            assert got.count(msg) == (1 if pid in members else 0), (pid, got)

    # -- invariants ---------------------------------------------------------------
    @invariant()
    def tables_match_the_model(self) -> None:
        model_tables = {t for t, _ in self.keys}
        assert set(procreg.tables()) == model_tables
        for table in model_tables | {"default", "t1", "t2"}:
            expected = {k: p for (t, k), p in self.keys.items() if t == table}
            entries = procreg.entries(table)
            assert len(entries) == len(expected) == procreg.count(table)
            assert dict(entries) == expected

    @invariant()
    def no_key_maps_to_a_dead_process(self) -> None:
        async def check() -> None:
            for (table, key), pid in self.keys.items():
                assert procreg.is_alive(pid), (table, key, pid)
                assert await procreg.whereis(key, table) == pid
                assert await procreg.lookup(key, table) == (pid, self.meta[(table, key)])
            for table in procreg.tables():
                for _key, pid in procreg.entries(table):
                    assert procreg.is_alive(pid)

        self.run(check())

    @invariant()
    def groups_match_the_model(self) -> None:
        async def check() -> None:
            for group in set(self.groups) | {"g1", "g2", ("pool", 3)}:
                members = await procreg.members(group)
                assert members == sorted(self.groups.get(group, []))  # sorted by pid
                assert all(procreg.is_alive(p) for p in members)

        self.run(check())

    @invariant()
    def liveness_matches_the_model(self) -> None:
        for pid in self.pids:
            assert procreg.is_alive(pid) is (pid in self.alive), pid


EXAMPLES = {"local": 50, "loopback": 50, "redis": 10}  # (a node joins Redis per example)


def test_registry_machine(backend: Backend) -> None:
    machine = type(f"RegistryMachine_{backend.id}", (RegistryMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES[backend.id],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
