"""Registry figures (issue 3): get_or_spawn, whereis, exit -> entry removed, memory
per registered process, publish fan-out.

Pykka has no keyed registry (its ``ActorRegistry`` finds actors by class or URN),
so these compare procreg with the asyncio baseline only.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from functools import partial
from typing import Any

import procreg

from .baselines import QueueNode, QueueServer
from .measure import Benchmark, Figure, Measurement, Sizes, Tally, Target, rate, run_loop, settle
from .measure import traced_bytes as _traced_bytes
from .runtime import BEST, ONCE, Counter, Idle, _noop, _reps, _rss_now

__all__ = ["BENCHMARKS"]


def _keys(n: int, prefix: str = "session") -> list[str]:
    """Keys built before the clock starts (and outside memory deltas)."""
    return [f"{prefix}-{i}" for i in range(n)]


# -- get_or_spawn of new keys ---------------------------------------------------------

GET_OR_SPAWN = Figure(
    "get_or_spawn_rate",
    "get_or_spawn of new keys, Server processes",
    "/s",
    "higher",
    BEST,
    Target(">=", 200_000),
    "str keys",
)


def get_or_spawn_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(keys: list[str]) -> float:
        gos = procreg.get_or_spawn
        for key in _keys(min(1_000, len(keys)), "warm"):
            await gos(key, Idle, table="warmup")
        gc.collect()
        t0 = time.perf_counter()
        for key in keys:
            await gos(key, Idle)
        return rate(len(keys), time.perf_counter() - t0)

    keys = _keys(sizes.keys)
    return {GET_OR_SPAWN.name: max(_reps(sizes, lambda: procreg.run(once, keys, uvloop=uvloop)))}


def get_or_spawn_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(keys: list[str]) -> float:
        node = QueueNode()
        gos = node.get_or_spawn
        for key in _keys(min(1_000, len(keys)), "warm"):
            await gos(key, QueueServer)
        await node.shutdown()
        gc.collect()
        t0 = time.perf_counter()
        for key in keys:
            await gos(key, QueueServer)
        await asyncio.sleep(0)  # every task runs to its first `await queue.get()`
        r = rate(len(keys), time.perf_counter() - t0)
        await node.shutdown()
        return r

    keys = _keys(sizes.keys)
    return {GET_OR_SPAWN.name: max(_reps(sizes, lambda: run_loop(lambda: once(keys), uvloop)))}


# -- whereis ----------------------------------------------------------------------------

WHEREIS = Figure(
    "whereis_rate",
    "whereis of a local key",
    "/s",
    "higher",
    BEST,
    Target(">=", 3_000_000),
    "await whereis(key) in a loop over registered str keys",
)


def _lookup_keys(sizes: Sizes) -> tuple[list[str], list[str]]:
    keys = _keys(sizes.whereis_keys)
    return keys, [keys[i % len(keys)] for i in range(sizes.lookups)]


def whereis_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    keys, lookups = _lookup_keys(sizes)

    async def main() -> list[float]:
        for key in keys:
            await procreg.get_or_spawn(key, Idle)
        whereis = procreg.whereis
        for key in keys:
            assert await whereis(key) is not None
        out = []
        for _ in range(sizes.reps):
            gc.collect()
            t0 = time.perf_counter()
            for key in lookups:
                await whereis(key)
            out.append(rate(len(lookups), time.perf_counter() - t0))
        return out

    return {WHEREIS.name: max(procreg.run(main, uvloop=uvloop))}


def whereis_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    keys, lookups = _lookup_keys(sizes)

    async def main() -> list[float]:
        node = QueueNode()
        for key in keys:
            await node.get_or_spawn(key, QueueServer)
        whereis = node.whereis
        for key in keys:
            assert await whereis(key) is not None
        out = []
        for _ in range(sizes.reps):
            gc.collect()
            t0 = time.perf_counter()
            for key in lookups:
                await whereis(key)
            out.append(rate(len(lookups), time.perf_counter() - t0))
        await node.shutdown()
        return out

    return {WHEREIS.name: max(run_loop(main, uvloop))}


# -- exit -> entry removed --------------------------------------------------------------

EXIT_REMOVED = Figure(
    "exit_unregister_rate",
    "process exit -> entry removed",
    "/s",
    "higher",
    BEST,
    Target(">=", 300_000),
    'exit(pid, "kill") of N registered processes until count(table) == 0',
)


def exit_unregister_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(keys: list[str]) -> float:
        for key in keys:
            await procreg.get_or_spawn(key, Idle, table="bench")
        pids = [pid for _, pid in procreg.entries("bench")]
        count = procreg.count
        exit = procreg.exit
        gc.collect()
        t0 = time.perf_counter()
        for pid in pids:
            exit(pid, "kill")
        await settle(lambda: count("bench") == 0)
        return rate(len(pids), time.perf_counter() - t0)

    keys = _keys(sizes.keys)
    procreg.run(once, keys[: min(1_000, len(keys))], uvloop=uvloop)
    return {EXIT_REMOVED.name: max(_reps(sizes, lambda: procreg.run(once, keys, uvloop=uvloop)))}


def exit_unregister_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(keys: list[str]) -> float:
        node = QueueNode()
        for key in keys:
            await node.get_or_spawn(key, QueueServer)
        await asyncio.sleep(0)
        handles = list(node.registry.values())
        registry = node.registry
        gc.collect()
        t0 = time.perf_counter()
        for h in handles:
            h[0].cancel()
        await settle(lambda: not registry)
        return rate(len(handles), time.perf_counter() - t0)

    keys = _keys(sizes.keys)
    run_loop(lambda: once(keys[: min(1_000, len(keys))]), uvloop)
    return {EXIT_REMOVED.name: max(_reps(sizes, lambda: run_loop(lambda: once(keys), uvloop)))}


# -- memory per registered process ------------------------------------------------------

MEM_REG_TRACED = Figure(
    "memory_registered_traced",
    "memory per registered idle Server process (tracemalloc)",
    "B",
    "lower",
    ONCE,
    Target("<=", 600),
    "node table + registry entry; keys built beforehand",
)
MEM_REG_RSS = Figure(
    "memory_registered_rss",
    "memory per registered idle Server process (RSS)",
    "B",
    "lower",
    ONCE,
    Target("<=", 600),
    "RSS delta / N in a fresh interpreter",
)


async def _procreg_registered_delta(keys: list[str], measure: Any) -> float:
    for key in _keys(min(100, len(keys)), "warm"):
        await procreg.get_or_spawn(key, Idle, table="warmup")
    for _, pid in procreg.entries("warmup"):
        procreg.exit(pid, "kill")
    gos = procreg.get_or_spawn
    before = measure()
    for key in keys:
        await gos(key, Idle)
    return float(measure() - before) / len(keys)


async def _asyncio_registered_delta(keys: list[str], measure: Any) -> float:
    node = QueueNode()
    for key in _keys(min(100, len(keys)), "warm"):
        await node.get_or_spawn(key, QueueServer)
    await node.shutdown()
    gos = node.get_or_spawn
    before = measure()
    for key in keys:
        await gos(key, QueueServer)
    await asyncio.sleep(0)
    after = measure()
    await node.shutdown()
    return float(after - before) / len(keys)


def memory_registered_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    keys = _keys(sizes.memory)
    rss = procreg.run(_procreg_registered_delta, keys, _rss_now, uvloop=uvloop)
    tracemalloc.start()
    try:
        traced = procreg.run(_procreg_registered_delta, keys, _traced_bytes, uvloop=uvloop)
    finally:
        tracemalloc.stop()
    return {MEM_REG_RSS.name: rss, MEM_REG_TRACED.name: traced}


def memory_registered_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    keys = _keys(sizes.memory)
    rss = run_loop(lambda: _asyncio_registered_delta(keys, _rss_now), uvloop)
    tracemalloc.start()
    try:
        traced = run_loop(lambda: _asyncio_registered_delta(keys, _traced_bytes), uvloop)
    finally:
        tracemalloc.stop()
    return {MEM_REG_RSS.name: rss, MEM_REG_TRACED.name: traced}


# -- publish fan-out --------------------------------------------------------------------

PUBLISH = Figure(
    "publish_fanout",
    "publish to 10,000 members, handled",
    "msg/s",
    "higher",
    BEST,
    None,
    "member deliveries per second; each publish waits until every member counted it",
)


def publish_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        tally = Tally(0, _noop)
        m = sizes.members
        for _ in range(m):
            await procreg.join("room", Counter.start(tally))
        publish = procreg.publish
        out = []
        for rep in range(sizes.reps + 1):  # the first round is the warmup
            gc.collect()
            t0 = time.perf_counter()
            for i in range(sizes.publishes):
                done = loop.create_future()
                tally.reset(m, partial(done.set_result, None))
                await publish("room", i)
                await done
            if rep:
                out.append(rate(m * sizes.publishes, time.perf_counter() - t0))
        return out

    return {PUBLISH.name: max(procreg.run(main, uvloop=uvloop))}


def publish_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        node = QueueNode()
        tally = Tally(0, _noop)
        m = sizes.members
        for _ in range(m):
            node.join("room", node.spawn(QueueServer, tally))
        publish = node.publish
        out = []
        for rep in range(sizes.reps + 1):
            gc.collect()
            t0 = time.perf_counter()
            for i in range(sizes.publishes):
                done = loop.create_future()
                tally.reset(m, partial(done.set_result, None))
                await publish("room", i)
                await done
            if rep:
                out.append(rate(m * sizes.publishes, time.perf_counter() - t0))
        await node.shutdown()
        return out

    return {PUBLISH.name: max(run_loop(main, uvloop))}


BENCHMARKS = [
    Benchmark(
        "get_or_spawn",
        [GET_OR_SPAWN],
        {"procreg": get_or_spawn_procreg, "asyncio": get_or_spawn_asyncio},
    ),
    Benchmark("whereis", [WHEREIS], {"procreg": whereis_procreg, "asyncio": whereis_asyncio}),
    Benchmark(
        "exit_unregister",
        [EXIT_REMOVED],
        {"procreg": exit_unregister_procreg, "asyncio": exit_unregister_asyncio},
    ),
    Benchmark(
        "memory_registered",
        [MEM_REG_TRACED, MEM_REG_RSS],
        {"procreg": memory_registered_procreg, "asyncio": memory_registered_asyncio},
        isolated=True,
    ),
    Benchmark("publish", [PUBLISH], {"procreg": publish_procreg, "asyncio": publish_asyncio}),
]
