"""1,000 concurrent get_or_spawn calls on 100 keys while processes crash meanwhile, on
every backend (local, Redis, loopback).

Each factory records its start and checks, at that instant, that no other process
started for the same key is still alive: two live processes for one key at any
instant would show up as a violation at the start of the second. At the end every
key maps to a live process or is absent, and no live process is left unregistered.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Hashable
from typing import Any

import pytest

import procreg

from .conftest import Backend

N_KEYS = 100
N_CALLS = 1_000


class Log:
    """What the processes report: starts per key and overlap violations."""

    def __init__(self) -> None:
        self.started: dict[Hashable, list[procreg.Pid]] = {}
        self.violations: list[tuple[Hashable, procreg.Pid, list[procreg.Pid]]] = []

    def start(self, key: Hashable) -> None:
        me = procreg.self()
        others = [p for p in self.started.get(key, []) if p != me and procreg.is_alive(p)]
        if others:
            self.violations.append((key, me, others))
        self.started.setdefault(key, []).append(me)


class SyncRacer(procreg.Server):
    def init(self, key: Hashable, log: Log) -> None:
        log.start(key)

    def handle_call(self, request: Any) -> Any:
        return request

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise RuntimeError("crash on request")


class AsyncRacer(SyncRacer):
    async def init(self, key: Hashable, log: Log) -> None:  # type: ignore[override]
        log.start(key)
        for _ in range(3):
            await asyncio.sleep(0)


async def body_racer(key: Hashable, log: Log) -> None:
    log.start(key)
    while True:
        msg = await procreg.receive()
        if msg == "crash":
            raise RuntimeError("crash on request")
        if isinstance(msg, procreg.Call):
            procreg.reply(msg.caller, msg.request)


FACTORIES = [AsyncRacer, SyncRacer, body_racer]


def factory_for(key: int) -> Any:
    return FACTORIES[key % len(FACTORIES)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concurrent_get_or_spawn_with_crashes(backend: Backend, seed: int) -> None:
    rng = random.Random(seed)
    log = Log()
    stats = {"spawn_errors": [], "handed_out": 0, "crashed_by_caller": 0, "killed": 0}
    handed: set[procreg.Pid] = set()

    spread = 0.0 if backend.id == "local" else 0.2  # (seconds: a store has round trips)

    async def caller(key: int) -> None:
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        if spread:  # so that callers keep coming while the chaos kills
            await asyncio.sleep(rng.random() * spread)
        try:
            pid = await procreg.get_or_spawn(key, factory_for(key), key, log)
        except Exception as exc:  # must not happen: nobody kills a process during init
            stats["spawn_errors"].append(exc)
            return
        stats["handed_out"] += 1
        handed.add(pid)
        roll = rng.random()
        if roll < 0.15:
            procreg.cast(pid, "crash")
            stats["crashed_by_caller"] += 1
        elif roll < 0.5:
            try:
                assert await procreg.call(pid, ("ping", key), timeout=2) == ("ping", key)
            except (procreg.NoProcess, procreg.ProcessExited):
                pass  # it crashed meanwhile: allowed

    async def chaos(done: asyncio.Event) -> None:
        while not done.is_set():
            for table in procreg.tables():
                entries = procreg.entries(table)
                if entries and rng.random() < 0.5:
                    _, pid = rng.choice(entries)
                    procreg.exit(pid, "kill")
                    stats["killed"] += 1
            await asyncio.sleep(0)

    async def main() -> Any:
        done = asyncio.Event()
        chaos_task = asyncio.ensure_future(chaos(done))
        keys = [rng.randrange(N_KEYS) for _ in range(N_CALLS - N_KEYS)] + list(range(N_KEYS))
        rng.shuffle(keys)
        await asyncio.gather(*(caller(k) for k in keys))
        done.set()
        await chaos_task
        for _ in range(10):  # let casts and crashes land
            await asyncio.sleep(0)
        final = {k: await procreg.whereis(k) for k in range(N_KEYS)}
        alive_final = {k: procreg.is_alive(p) for k, p in final.items() if p is not None}
        live_started = {
            k: [p for p in pids if procreg.is_alive(p)] for k, pids in log.started.items()
        }
        entries = [(k, p, procreg.is_alive(p)) for k, p in procreg.entries()]
        return final, alive_final, live_started, entries

    final, alive_final, live_started, entries = backend.run(main)

    assert stats["spawn_errors"] == []
    assert stats["handed_out"] == N_CALLS
    assert stats["killed"] > 0  # the chaos did happen
    assert stats["crashed_by_caller"] > 0
    # no key was ever served by two live processes at once
    assert log.violations == []
    # more processes were handed out than keys: keys were re-spawned after crashes (a
    # body killed before its first step never logs its start: count what was handed out)
    assert len(handed) > N_KEYS
    # every key maps to a live process or is absent
    assert all(alive_final.values())
    assert all(alive for _, _, alive in entries)
    # no live process is a duplicate or an orphan: each is its key's entry
    for key, live in live_started.items():
        assert len(live) <= 1, (key, live)
        if live:
            assert final[key] == live[0], (key, live, final[key])


@pytest.mark.parametrize("factory", FACTORIES, ids=["async-init", "sync-init", "body"])
def test_racers_on_one_key_while_it_is_killed_repeatedly(backend: Backend, factory: Any) -> None:
    log = Log()
    handed: list[procreg.Pid] = []

    async def caller(i: int) -> None:
        for _ in range(i // 2):
            await asyncio.sleep(0)
        pid = await procreg.get_or_spawn("hot", factory, "hot", log)
        handed.append(pid)
        if i % 10 == 0:
            procreg.exit(pid, "kill")

    async def main() -> Any:
        await asyncio.gather(*(caller(i) for i in range(200)))
        for _ in range(5):
            await asyncio.sleep(0)
        found = await procreg.whereis("hot")
        live = [p for p in log.started.get("hot", []) if procreg.is_alive(p)]
        return found, live

    found, live = backend.run(main)
    assert len(handed) == 200
    assert log.violations == []
    assert len(set(handed)) > 1  # it was restarted after kills
    assert len(live) <= 1
    assert found is None or live == [found]
