"""Shared pieces of the benchmarks: sizes, figure descriptions, timing and memory.

A `Benchmark` measures one or more `Figure`s; it has one function per
implementation (``procreg``, ``asyncio``, ``pykka``), each returning a dict
``figure name -> value`` (extra keys become details in the JSON). Each function
starts its own event loop (and node), so implementations never share one.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "IMPLS",
    "Benchmark",
    "Figure",
    "Measurement",
    "Sizes",
    "Target",
    "Tally",
    "latency_stats",
    "rate",
    "rss_bytes",
    "run_loop",
    "settle",
    "traced_bytes",
]

T = TypeVar("T")
Measurement = dict[str, float]
IMPLS = ("procreg", "asyncio", "pykka")


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does. `full` is the default run, `quick` the
    smoke-test run (seconds in all)."""

    quick: bool
    reps: int
    spawn: int  # processes spawned per repetition (procreg, asyncio)
    pykka_actors: int  # actors for Pykka's spawn, memory and stop figures
    memory: int  # idle processes measured for memory per process
    calls: int  # timed calls per repetition
    pykka_calls: int
    casts: int  # casts per repetition, to one process and to many
    pykka_tells: int
    many: int  # "many" processes for cast throughput
    pykka_many: int
    exits: int  # processes ended per repetition
    million: int  # idle processes alive for the big call-latency figure
    million_calls: int
    keys: int  # keys created per repetition (get_or_spawn, exit -> removed)
    whereis_keys: int  # distinct registered keys looked up
    lookups: int  # whereis calls per repetition
    members: int  # group members for publish fan-out
    publishes: int  # publishes per repetition
    web_clients: int  # WebSocket clients in the fan-out pool
    web_messages: int  # messages published to them
    web_requests: int  # HTTP requests for the session figure
    web_lookups: int  # in-process session lookups

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            quick=False,
            reps=3,
            spawn=50_000,
            pykka_actors=2_000,
            memory=50_000,
            calls=20_000,
            pykka_calls=3_000,
            casts=1_000_000,
            pykka_tells=20_000,
            many=1_000,
            pykka_many=200,
            exits=50_000,
            million=1_000_000,
            million_calls=100_000,
            keys=50_000,
            whereis_keys=10_000,
            lookups=1_000_000,
            members=10_000,
            publishes=20,
            web_clients=1_000,
            web_messages=20,
            web_requests=4_000,
            web_lookups=200_000,
        )

    @classmethod
    def quick_sizes(cls) -> Sizes:
        return cls(
            quick=True,
            reps=3,
            spawn=2_000,
            pykka_actors=100,
            memory=10_000,
            calls=1_000,
            pykka_calls=200,
            casts=20_000,
            pykka_tells=1_000,
            many=100,
            pykka_many=20,
            exits=2_000,
            million=10_000,
            million_calls=1_000,
            keys=2_000,
            whereis_keys=1_000,
            lookups=20_000,
            members=1_000,
            publishes=3,
            web_clients=50,
            web_messages=5,
            web_requests=300,
            web_lookups=5_000,
        )


@dataclass(frozen=True)
class Target:
    """A performance target: ``value`` with ``op`` (``">="`` or ``"<="``). `implied`
    marks a target set for a stricter figure (a registered process, say)
    that this one must meet a fortiori."""

    op: str
    value: float
    implied: bool = False

    def met(self, value: float) -> bool:
        return value >= self.value if self.op == ">=" else value <= self.value


@dataclass(frozen=True)
class Figure:
    """One row of the table."""

    name: str
    title: str
    unit: str
    better: str  # "higher" or "lower"
    stat: str  # how the value is chosen among repetitions
    target: Target | None = None
    note: str = ""
    baseline: bool = True  # False: no baseline design measures this (said in the note)


@dataclass(frozen=True)
class Benchmark:
    """A measurement that yields `figures`, with one function per implementation."""

    name: str
    figures: Sequence[Figure]
    impls: dict[str, Callable[[Sizes, bool], Measurement]] = field(default_factory=dict)
    needs_uvloop: bool = False  # measured on uvloop whatever the --uvloop option says
    isolated: bool = False  # always in a fresh interpreter (RSS figures), even in-process
    requires: tuple[str, ...] = ()  # modules it needs; skipped (and said so) without them


# -- running ---------------------------------------------------------------------


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], uvloop: bool) -> T:
    """Run `main()` on a fresh asyncio (or uvloop) event loop."""
    if uvloop:
        import uvloop as _uvloop

        return _uvloop.run(main())
    return asyncio.run(main())


async def settle(done: Callable[[], bool], spins: int = 1_000_000) -> None:
    """Yield to the loop until `done()` is true."""
    while not done():
        spins -= 1
        if spins < 0:
            raise RuntimeError("benchmark did not settle")
        await asyncio.sleep(0)


def rate(count: int, seconds: float) -> float:
    """Operations per second."""
    return count / seconds if seconds > 0 else float("inf")


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    """Seconds taken by ``await work()``."""
    t0 = time.perf_counter()
    await work()
    return time.perf_counter() - t0


def latency_stats(samples_ns: list[int]) -> dict[str, float]:
    """Median, p90, p99, mean and max, in microseconds, of per-operation samples
    in nanoseconds (p99 by nearest rank)."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "median": statistics.median(ordered) / 1000.0,
        "p90": ordered[min(n - 1, int(0.90 * n))] / 1000.0,
        "p99": ordered[min(n - 1, int(0.99 * n))] / 1000.0,
        "mean": statistics.fmean(ordered) / 1000.0,
        "max": ordered[-1] / 1000.0,
    }


# -- memory ----------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The resident set size of this process now (Linux), or its peak elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def traced_bytes() -> int:
    """Bytes currently allocated by Python, as tracemalloc counts them (after a
    full collection); tracemalloc must be tracing."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


class Tally:
    """A shared counter the handlers of a throughput benchmark bump; `finish` is
    called once `target` messages were handled."""

    __slots__ = ("finish", "n", "target")

    def __init__(self, target: int, finish: Callable[[], Any]) -> None:
        self.n = 0
        self.target = target
        self.finish = finish

    def reset(self, target: int, finish: Callable[[], Any]) -> None:
        self.n = 0
        self.target = target
        self.finish = finish
