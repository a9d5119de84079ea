"""Runtime figures (issue 2): spawn, memory, call, cast, exit, a million processes.

Each ``*_procreg`` / ``*_asyncio`` / ``*_pykka`` function measures one
implementation on its own event loop (or threads) and returns ``figure -> value``.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import threading
import time
import tracemalloc
from functools import partial
from typing import Any

import procreg

from .baselines import QueueNode, QueueServer
from .measure import (
    Benchmark,
    Figure,
    Measurement,
    Sizes,
    Tally,
    Target,
    latency_stats,
    rate,
    rss_bytes,
    run_loop,
    settle,
    traced_bytes,
)

__all__ = ["BENCHMARKS", "Counter", "Echo", "Idle"]

BEST = "best of 3"
MEDIAN = "median of 3"
ONCE = "1 run"


# -- the procreg servers ------------------------------------------------------------


class Idle(procreg.Server):
    """A server with no state, as a user would write it (no ``__slots__``)."""


class Echo(procreg.Server):
    """Answers a call with the request."""

    def handle_call(self, request: Any) -> Any:
        return request


class Counter(procreg.Server):
    """Counts casts and plain messages in a shared `Tally`."""

    def init(self, tally: Tally) -> None:
        self.tally = tally

    def handle_cast(self, msg: Any) -> None:
        t = self.tally
        t.n += 1
        if t.n == t.target:
            t.finish()

    handle_info = handle_cast


def _noop() -> None:
    pass


def _kill_all_but_me() -> None:
    me = procreg.self()
    for pid in procreg.current_node().processes():
        if pid != me:
            procreg.exit(pid, "kill")


def _reps(sizes: Sizes, once: Any) -> list[float]:
    out = []
    for _ in range(sizes.reps):
        gc.collect()
        out.append(once())
    return out


# -- spawn rate -------------------------------------------------------------------

SPAWN = Figure(
    "spawn_rate",
    "spawn a Server process",
    "/s",
    "higher",
    BEST,
    Target(">=", 200_000, implied=True),
    "asyncio: until every task has run to its first await",
)


def spawn_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(n: int) -> float:
        start = Idle.start
        for _ in range(min(1_000, n)):
            start()
        _kill_all_but_me()
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(n):
            start()
        return rate(n, time.perf_counter() - t0)

    return {SPAWN.name: max(_reps(sizes, lambda: procreg.run(once, sizes.spawn, uvloop=uvloop)))}


def spawn_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(n: int) -> float:
        node = QueueNode()
        for _ in range(min(1_000, n)):
            node.spawn(QueueServer)
        await node.shutdown()
        gc.collect()
        spawn = node.spawn
        t0 = time.perf_counter()
        for _ in range(n):
            spawn(QueueServer)
        await asyncio.sleep(0)  # every task runs to its first `await queue.get()`
        r = rate(n, time.perf_counter() - t0)
        await node.shutdown()
        return r

    return {SPAWN.name: max(_reps(sizes, lambda: run_loop(lambda: once(sizes.spawn), uvloop)))}


def spawn_pykka(sizes: Sizes, uvloop: bool) -> Measurement:
    from .actors import PykkaIdle, stop_all

    def once(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            PykkaIdle.start()
        r = rate(n, time.perf_counter() - t0)
        stop_all()
        return r

    once(min(100, sizes.pykka_actors))
    return {SPAWN.name: max(_reps(sizes, lambda: once(sizes.pykka_actors)))}


# -- memory per idle process ----------------------------------------------------------

MEM_TRACED = Figure(
    "memory_idle_traced",
    "memory per idle Server process (tracemalloc)",
    "B",
    "lower",
    ONCE,
    Target("<=", 600, implied=True),
    "Python allocations / N, node table included",
)
MEM_RSS = Figure(
    "memory_idle_rss",
    "memory per idle Server process (RSS)",
    "B",
    "lower",
    ONCE,
    Target("<=", 600, implied=True),
    "RSS delta / N in a fresh interpreter",
)


async def _procreg_idle_delta(n: int, measure: Any) -> float:
    start = Idle.start
    for _ in range(min(100, n)):
        start()
    _kill_all_but_me()
    before = measure()
    for _ in range(n):
        start()
    return float(measure() - before) / n


def _rss_now() -> int:
    gc.collect()
    return rss_bytes()


def memory_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    rss = procreg.run(_procreg_idle_delta, sizes.memory, _rss_now, uvloop=uvloop)
    tracemalloc.start()
    try:
        traced = procreg.run(_procreg_idle_delta, sizes.memory, traced_bytes, uvloop=uvloop)
    finally:
        tracemalloc.stop()
    return {MEM_RSS.name: rss, MEM_TRACED.name: traced}


async def _asyncio_idle_delta(n: int, measure: Any) -> float:
    node = QueueNode()
    for _ in range(min(100, n)):
        node.spawn(QueueServer)
    await node.shutdown()
    before = measure()
    for _ in range(n):
        node.spawn(QueueServer)
    await asyncio.sleep(0)
    after = measure()
    await node.shutdown()
    return float(after - before) / n


def memory_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    rss = run_loop(lambda: _asyncio_idle_delta(sizes.memory, _rss_now), uvloop)
    tracemalloc.start()
    try:
        traced = run_loop(lambda: _asyncio_idle_delta(sizes.memory, traced_bytes), uvloop)
    finally:
        tracemalloc.stop()
    return {MEM_RSS.name: rss, MEM_TRACED.name: traced}


def _pykka_idle_delta(n: int, measure: Any) -> float:
    from .actors import PykkaIdle, stop_all

    refs = [PykkaIdle.start() for _ in range(min(20, n))]
    stop_all()
    del refs
    before = measure()
    for _ in range(n):
        PykkaIdle.start()
    time.sleep(0.2)  # let the threads reach their idle wait
    after = measure()
    stop_all()
    return float(after - before) / n


def memory_pykka(sizes: Sizes, uvloop: bool) -> Measurement:
    rss = _pykka_idle_delta(sizes.pykka_actors, _rss_now)
    tracemalloc.start()
    try:
        traced = _pykka_idle_delta(sizes.pykka_actors, traced_bytes)
    finally:
        tracemalloc.stop()
    return {MEM_RSS.name: rss, MEM_TRACED.name: traced}


# -- call round trip ------------------------------------------------------------------


def _call_figures(suffix: str, loop_name: str, target: float | None) -> tuple[Figure, Figure]:
    return (
        Figure(
            f"call_median{suffix}",
            f"local call round trip, median ({loop_name})",
            "µs",
            "lower",
            MEDIAN,
            Target("<=", target) if target is not None else None,
            "per-call perf_counter_ns samples",
        ),
        Figure(
            f"call_p99{suffix}",
            f"local call round trip, p99 ({loop_name})",
            "µs",
            "lower",
            MEDIAN,
        ),
    )


CALL_MEDIAN, CALL_P99 = _call_figures("", "default loop", 4.0)
CALL_MEDIAN_UV, CALL_P99_UV = _call_figures("_uvloop", "uvloop", 2.5)


def _latencies(stats: list[dict[str, float]], median: Figure, p99: Figure) -> Measurement:
    """The median over repetitions of each statistic; median and p99 are figures,
    the others (mean, p90, max) details."""
    out = {
        f"{median.name.replace('median', key)}": statistics.median(s[key] for s in stats)
        for key in ("mean", "p90", "max")
    }
    out[median.name] = statistics.median(s["median"] for s in stats)
    out[p99.name] = statistics.median(s["p99"] for s in stats)
    return out


def _call_procreg(sizes: Sizes, uvloop: bool, median: Figure, p99: Figure) -> Measurement:
    async def main() -> list[dict[str, float]]:
        pid = Echo.start()
        call = procreg.call
        pc = time.perf_counter_ns
        for i in range(min(1_000, sizes.calls)):
            await call(pid, i)
        stats = []
        for _ in range(sizes.reps):
            gc.collect()
            samples = [0] * sizes.calls
            for i in range(sizes.calls):
                t0 = pc()
                await call(pid, i)
                samples[i] = pc() - t0
            stats.append(latency_stats(samples))
        return stats

    return _latencies(procreg.run(main, uvloop=uvloop), median, p99)


def _call_asyncio(sizes: Sizes, uvloop: bool, median: Figure, p99: Figure) -> Measurement:
    async def main() -> list[dict[str, float]]:
        node = QueueNode()
        h = node.spawn(QueueServer)
        call = node.call
        pc = time.perf_counter_ns
        for i in range(min(1_000, sizes.calls)):
            await call(h, i)
        stats = []
        for _ in range(sizes.reps):
            gc.collect()
            samples = [0] * sizes.calls
            for i in range(sizes.calls):
                t0 = pc()
                await call(h, i)
                samples[i] = pc() - t0
            stats.append(latency_stats(samples))
        await node.shutdown()
        return stats

    return _latencies(run_loop(main, uvloop), median, p99)


def call_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    return _call_procreg(sizes, uvloop, CALL_MEDIAN, CALL_P99)


def call_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    return _call_asyncio(sizes, uvloop, CALL_MEDIAN, CALL_P99)


def call_pykka(sizes: Sizes, uvloop: bool) -> Measurement:
    from .actors import PykkaEcho, stop_all

    ref = PykkaEcho.start()
    pc = time.perf_counter_ns
    n = sizes.pykka_calls
    try:
        for i in range(min(200, n)):
            ref.ask(i)
        stats = []
        for _ in range(sizes.reps):
            gc.collect()
            samples = [0] * n
            for i in range(n):
                t0 = pc()
                ref.ask(i)
                samples[i] = pc() - t0
            stats.append(latency_stats(samples))
    finally:
        stop_all()
    return _latencies(stats, CALL_MEDIAN, CALL_P99)


def call_uvloop_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    return _call_procreg(sizes, True, CALL_MEDIAN_UV, CALL_P99_UV)


def call_uvloop_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    return _call_asyncio(sizes, True, CALL_MEDIAN_UV, CALL_P99_UV)


# -- cast throughput ------------------------------------------------------------------

CAST_ONE = Figure(
    "cast_one",
    "cast to one process, handled",
    "msg/s",
    "higher",
    BEST,
    Target(">=", 2_000_000),
    "N casts back to back, then wait until the handler counted N",
)
CAST_ONE_BOUNDED = Figure(
    "cast_one_bounded",
    "cast to one process with a mailbox bound, handled",
    "msg/s",
    "higher",
    BEST,
    None,
    "as cast_one, max_mailbox=N (never full: the cost of the check); "
    "asyncio: Queue(maxsize=N); Pykka has no bound",
)
CAST_MANY = Figure(
    "cast_many",
    "cast round-robin to many processes, handled",
    "msg/s",
    "higher",
    BEST,
    None,
    "1,000 processes (Pykka: 200 actors, threads)",
)


def _cast_procreg(
    sizes: Sizes, uvloop: bool, nprocs: int, figure: Figure, bounded: bool = False
) -> Measurement:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        tally = Tally(0, _noop)
        rounds = max(1, sizes.casts // nprocs)
        total = rounds * nprocs
        bound = {"max_mailbox": rounds} if bounded else {}
        pids = [Counter.start(tally, **bound) for _ in range(nprocs)]
        cast = procreg.cast
        out = []
        for rep in range(sizes.reps + 1):  # the first round is the warmup
            done = loop.create_future()
            tally.reset(total, partial(done.set_result, None))
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(rounds):
                for pid in pids:
                    cast(pid, rep)
            await done
            if rep:
                out.append(rate(total, time.perf_counter() - t0))
        return out

    return {figure.name: max(procreg.run(main, uvloop=uvloop))}


def _cast_asyncio(
    sizes: Sizes, uvloop: bool, nprocs: int, figure: Figure, bounded: bool = False
) -> Measurement:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        node = QueueNode()
        tally = Tally(0, _noop)
        rounds = max(1, sizes.casts // nprocs)
        total = rounds * nprocs
        maxsize = rounds if bounded else 0
        handles = [node.spawn(QueueServer, tally, maxsize=maxsize) for _ in range(nprocs)]
        cast = node.cast
        out = []
        for rep in range(sizes.reps + 1):
            done = loop.create_future()
            tally.reset(total, partial(done.set_result, None))
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(rounds):
                for h in handles:
                    cast(h, rep)
            await done
            if rep:
                out.append(rate(total, time.perf_counter() - t0))
        await node.shutdown()
        return out

    return {figure.name: max(run_loop(main, uvloop))}


def _cast_pykka(sizes: Sizes, nactors: int, figure: Figure) -> Measurement:
    from .actors import PykkaCounter, stop_all

    tally = Tally(0, _noop)
    refs = [PykkaCounter.start(tally) for _ in range(nactors)]
    rounds = max(1, sizes.pykka_tells // nactors)
    total = rounds * nactors
    out = []
    try:
        for rep in range(sizes.reps + 1):
            done = threading.Event()
            tally.reset(total, done.set)
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(rounds):
                for ref in refs:
                    ref.tell(rep)
            if not done.wait(120):
                raise RuntimeError("pykka actors did not handle every message")
            if rep:
                out.append(rate(total, time.perf_counter() - t0))
    finally:
        stop_all()
    return {figure.name: max(out)}


def cast_one_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_procreg(sizes, uvloop, 1, CAST_ONE)


def cast_one_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_asyncio(sizes, uvloop, 1, CAST_ONE)


def cast_one_pykka(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_pykka(sizes, 1, CAST_ONE)


def cast_one_bounded_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_procreg(sizes, uvloop, 1, CAST_ONE_BOUNDED, bounded=True)


def cast_one_bounded_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_asyncio(sizes, uvloop, 1, CAST_ONE_BOUNDED, bounded=True)


def cast_many_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_procreg(sizes, uvloop, sizes.many, CAST_MANY)


def cast_many_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_asyncio(sizes, uvloop, sizes.many, CAST_MANY)


def cast_many_pykka(sizes: Sizes, uvloop: bool) -> Measurement:
    return _cast_pykka(sizes, sizes.pykka_many, CAST_MANY)


# -- exit rate ------------------------------------------------------------------------

EXIT = Figure(
    "exit_rate",
    'exit(pid, "kill") of N processes, all gone',
    "/s",
    "higher",
    BEST,
    Target(">=", 300_000, implied=True),
    "asyncio: task.cancel(); Pykka: stop()",
)


def exit_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(n: int) -> float:
        node = procreg.current_node()
        pids = [Idle.start() for _ in range(n)]
        base = node.process_count() - n
        gc.collect()
        exit = procreg.exit
        t0 = time.perf_counter()
        for pid in pids:
            exit(pid, "kill")
        await settle(lambda: node.process_count() == base)
        return rate(n, time.perf_counter() - t0)

    procreg.run(once, min(1_000, sizes.exits), uvloop=uvloop)
    return {EXIT.name: max(_reps(sizes, lambda: procreg.run(once, sizes.exits, uvloop=uvloop)))}


def exit_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    async def once(n: int) -> float:
        node = QueueNode()
        handles = [node.spawn(QueueServer) for _ in range(n)]
        await asyncio.sleep(0)
        gc.collect()
        t0 = time.perf_counter()
        for h in handles:
            h[0].cancel()
        await settle(lambda: node.count() == 0)
        return rate(n, time.perf_counter() - t0)

    run_loop(lambda: once(min(1_000, sizes.exits)), uvloop)
    return {EXIT.name: max(_reps(sizes, lambda: run_loop(lambda: once(sizes.exits), uvloop)))}


def exit_pykka(sizes: Sizes, uvloop: bool) -> Measurement:
    from .actors import PykkaIdle

    def once(n: int) -> float:
        refs = [PykkaIdle.start() for _ in range(n)]
        gc.collect()
        t0 = time.perf_counter()
        futures = [ref.stop(block=False) for ref in refs]
        for f in futures:
            f.get()
        return rate(n, time.perf_counter() - t0)

    return {EXIT.name: max(_reps(sizes, lambda: once(sizes.pykka_actors)))}


# -- a million idle processes ---------------------------------------------------------

M_P99 = Figure(
    "call_p99_1m",
    "call p99 with 1,000,000 idle processes alive",
    "µs",
    "lower",
    ONCE,
    Target("<=", 2_000),
    "calls to random processes; --quick: 10,000 processes",
)
M_MEDIAN = Figure(
    "call_median_1m", "call median with 1,000,000 idle processes alive", "µs", "lower", ONCE
)
M_SPAWN = Figure(
    "spawn_rate_1m", "spawn rate while filling to 1,000,000 processes", "/s", "higher", ONCE
)
M_RSS = Figure(
    "memory_1m_rss",
    "RSS per process with 1,000,000 idle processes",
    "B",
    "lower",
    ONCE,
    Target("<=", 600, implied=True),
)
M_GC = Figure("gc_full_1m", "gc.collect() with 1,000,000 processes alive", "ms", "lower", ONCE)


def _million(spawn_s: float, gc_s: float, rss: int, n: int, samples: list[int]) -> Measurement:
    stats = latency_stats(samples)
    return {
        M_P99.name: stats["p99"],
        M_MEDIAN.name: stats["median"],
        M_SPAWN.name: rate(n, spawn_s),
        M_RSS.name: rss / n,
        M_GC.name: gc_s * 1000.0,
        "processes": float(n),
        "calls": float(len(samples)),
        "call_mean_1m": stats["mean"],
        "call_max_1m": stats["max"],
    }


def million_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    async def main() -> Measurement:
        n = sizes.million
        start = Echo.start
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        for _ in range(n):
            start()
        spawn_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gc.collect()
        gc_s = time.perf_counter() - t0
        rss = rss_bytes() - rss0
        me = procreg.self()
        pids = [p for p in procreg.current_node().processes() if p != me]
        rng = random.Random(42)
        call = procreg.call
        pc = time.perf_counter_ns
        for i in range(200):
            await call(pids[rng.randrange(n)], i)
        samples = [0] * sizes.million_calls
        for i in range(sizes.million_calls):
            pid = pids[rng.randrange(n)]
            t = pc()
            await call(pid, i)
            samples[i] = pc() - t
        return _million(spawn_s, gc_s, rss, n, samples)

    return procreg.run(main, uvloop=uvloop)


def million_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    async def main() -> Measurement:
        n = sizes.million
        node = QueueNode()
        spawn = node.spawn
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        for _ in range(n):
            spawn(QueueServer)
        await asyncio.sleep(0)
        spawn_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gc.collect()
        gc_s = time.perf_counter() - t0
        rss = rss_bytes() - rss0
        handles = list(node.procs.values())
        rng = random.Random(42)
        call = node.call
        pc = time.perf_counter_ns
        for i in range(200):
            await call(handles[rng.randrange(n)], i)
        samples = [0] * sizes.million_calls
        for i in range(sizes.million_calls):
            h = handles[rng.randrange(n)]
            t = pc()
            await call(h, i)
            samples[i] = pc() - t
        result = _million(spawn_s, gc_s, rss, n, samples)
        del handles
        await node.shutdown()
        return result

    return run_loop(main, uvloop)


BENCHMARKS = [
    Benchmark(
        "spawn",
        [SPAWN],
        {"procreg": spawn_procreg, "asyncio": spawn_asyncio, "pykka": spawn_pykka},
    ),
    Benchmark(
        "memory",
        [MEM_TRACED, MEM_RSS],
        {"procreg": memory_procreg, "asyncio": memory_asyncio, "pykka": memory_pykka},
        isolated=True,
    ),
    Benchmark(
        "call",
        [CALL_MEDIAN, CALL_P99],
        {"procreg": call_procreg, "asyncio": call_asyncio, "pykka": call_pykka},
    ),
    Benchmark(
        "call_uvloop",
        [CALL_MEDIAN_UV, CALL_P99_UV],
        {"procreg": call_uvloop_procreg, "asyncio": call_uvloop_asyncio},
        needs_uvloop=True,
    ),
    Benchmark(
        "cast_one",
        [CAST_ONE],
        {"procreg": cast_one_procreg, "asyncio": cast_one_asyncio, "pykka": cast_one_pykka},
    ),
    Benchmark(
        "cast_one_bounded",
        [CAST_ONE_BOUNDED],
        {"procreg": cast_one_bounded_procreg, "asyncio": cast_one_bounded_asyncio},
    ),
    Benchmark(
        "cast_many",
        [CAST_MANY],
        {"procreg": cast_many_procreg, "asyncio": cast_many_asyncio, "pykka": cast_many_pykka},
    ),
    Benchmark(
        "exit",
        [EXIT],
        {"procreg": exit_procreg, "asyncio": exit_asyncio, "pykka": exit_pykka},
    ),
    Benchmark(
        "million",
        [M_P99, M_MEDIAN, M_SPAWN, M_RSS, M_GC],
        {"procreg": million_procreg, "asyncio": million_asyncio},
        isolated=True,
    ),
]
