"""Supervision figures (issue 4): ``pi.start`` per second and supervisor restarts per
second (a crash, then the restarted child found again under its key).

The asyncio baseline is the same work done by hand: a process is a task reading a
queue, registered in a dict; a "supervisor" is a task that awaits its child and, when
it ends with an exception, starts a new one and registers it again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import procreg
from procreg import pi

from .measure import Benchmark, Figure, Measurement, Sizes, rate, run_loop
from .runtime import BEST, _reps

__all__ = ["BENCHMARKS"]

PI_START = Figure(
    "pi_start_rate",
    "pi.start of new names under the root supervisor",
    "/s",
    "higher",
    BEST,
    None,
    "baseline: task + queue + dict entry + watcher task",
)
RESTARTS = Figure(
    "supervisor_restart_rate",
    "supervisor restarts: crash -> restarted and re-registered",
    "/s",
    "higher",
    BEST,
    None,
    "one child crashed again and again",
)


class Module:
    """A pi module that keeps a counter."""

    @staticmethod
    def proc(msg: Any, p: pi.Pi) -> pi.Ok | pi.Reply:
        if msg == "get":
            return pi.Reply(p.state, p)
        return pi.Ok(p)


class Worker(procreg.Server):
    """A supervised child that crashes when told."""

    def handle_cast(self, msg: Any) -> None:
        raise RuntimeError("crash on purpose")


def pi_start_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 2_000 if sizes.quick else 20_000

    async def once() -> float:
        await procreg.supervisor.root()
        t0 = time.perf_counter()
        for i in range(n):
            await pi.start(pi.Pi(f"p{i}", "bench", "root", Module, state=0))
        return rate(n, time.perf_counter() - t0)

    return {PI_START.name: max(_reps(sizes, lambda: procreg.run(once, uvloop=uvloop)))}


def restarts_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 500 if sizes.quick else 5_000

    async def once() -> float:
        import logging

        logging.getLogger("procreg").setLevel(logging.CRITICAL)  # the crashes are on purpose
        await procreg.Supervisor.start(
            [procreg.child(Worker, id="w", key="worker")], intensity=10 * n, period=3600
        )
        pid = await procreg.whereis("worker")
        t0 = time.perf_counter()
        for _ in range(n):
            assert pid is not None
            procreg.cast(pid, "crash")
            while True:
                new = await procreg.whereis("worker")
                if new is not None and new != pid:
                    pid = new
                    break
                await asyncio.sleep(0)
        return rate(n, time.perf_counter() - t0)

    return {RESTARTS.name: max(_reps(sizes, lambda: procreg.run(once, uvloop=uvloop)))}


async def _queue_body(queue: asyncio.Queue[Any]) -> None:
    while True:
        if await queue.get() == "crash":
            raise RuntimeError("crash on purpose")


def pi_start_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 2_000 if sizes.quick else 20_000

    async def main() -> list[float]:
        out = []
        for _ in range(sizes.reps):
            registry: dict[Any, Any] = {}
            watchers = []
            t0 = time.perf_counter()
            for i in range(n):
                queue: asyncio.Queue[Any] = asyncio.Queue()
                task = asyncio.ensure_future(_queue_body(queue))
                registry[("bench", f"p{i}")] = (task, queue)
                watchers.append(asyncio.ensure_future(asyncio.wait([task])))
                await asyncio.sleep(0) if i % 512 == 0 else None
            out.append(rate(n, time.perf_counter() - t0))
            for task, _ in registry.values():
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        return out

    return {PI_START.name: max(run_loop(main, uvloop))}


def restarts_asyncio(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 500 if sizes.quick else 5_000

    async def main() -> list[float]:
        out = []
        for _ in range(sizes.reps):
            registry: dict[str, Any] = {}
            restarted = asyncio.Event()

            async def supervisor(registry: dict[str, Any], restarted: asyncio.Event) -> None:
                while True:
                    queue: asyncio.Queue[Any] = asyncio.Queue()
                    task = asyncio.ensure_future(_queue_body(queue))
                    registry["worker"] = (task, queue)
                    restarted.set()
                    try:
                        await task
                    except RuntimeError:
                        continue

            sup = asyncio.ensure_future(supervisor(registry, restarted))
            await restarted.wait()
            t0 = time.perf_counter()
            for _ in range(n):
                restarted.clear()
                registry["worker"][1].put_nowait("crash")
                await restarted.wait()
            out.append(rate(n, time.perf_counter() - t0))
            sup.cancel()
            registry["worker"][0].cancel()
        return out

    return {RESTARTS.name: max(run_loop(main, uvloop))}


BENCHMARKS = [
    Benchmark("pi_start", [PI_START], {"procreg": pi_start_procreg, "asyncio": pi_start_asyncio}),
    Benchmark(
        "supervisor_restarts",
        [RESTARTS],
        {"procreg": restarts_procreg, "asyncio": restarts_asyncio},
    ),
]
