"""Cluster-scoped figures (issue 15): how long a graceful stop takes to hand 1,000
cluster-scoped servers (each with a little state) off to the other node, and how soon
a SIGKILLed node's cluster-scoped servers run again on a survivor.

The measuring node runs here; `bench.cluster_peer` nodes are the others. No baseline
design has cluster-scoped processes: the figures stand alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import procreg
from procreg.testing import RedisServer

from .cluster import LEASE, Peer
from .measure import Benchmark, Figure, Measurement, Sizes

__all__ = ["BENCHMARKS", "Kept"]


class Kept(procreg.Server):
    """A cluster-scoped server holding a list; its state moves with ``handoff``."""

    def init(self, key: Any) -> None:
        moved = procreg.takeover()
        self.items: list[Any] = list(moved.state) if moved and moved.state else list(range(10))

    def handle_call(self, request: Any) -> Any:
        return len(self.items)

    def handoff(self) -> Any:
        return self.items


HANDOFF = Figure(
    "cluster_handoff_1000",
    "cluster: graceful stop hands 1,000 cluster-scoped servers off to the other node",
    "ms",
    "lower",
    "1 run",
    None,
    "from the start of the handoff until every one runs on its new home with its state",
    baseline=False,
)
FAILOVER = Figure(
    "cluster_scoped_failover",
    "cluster: node holding 100 cluster-scoped servers SIGKILLed -> all run again (lease 1 s)",
    "s",
    "lower",
    "1 run",
    None,
    "target: within 2 x lease (+ init)",
    baseline=False,
)


def cluster_scoped(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 1_000
    victims = 100
    out: Measurement = {}
    with RedisServer() as redis:
        peer = Peer(redis.url, "bench-b", 0, 1)
        try:

            async def main() -> None:
                node = procreg.current_node()
                while "bench-b" not in node.nodes():
                    await asyncio.sleep(0.05)
                # this node holds n; a graceful stop hands them off to bench-b
                await asyncio.gather(
                    *(
                        procreg.get_or_spawn(f"kept-{i}", Kept, f"kept-{i}", scope="cluster")
                        for i in range(n)
                    )
                )
                await asyncio.sleep(0.2)  # their records reach the store
                t0 = time.perf_counter()
                moved = await node._cluster.scoped.handoff_all(30.0)
                out[HANDOFF.name] = (time.perf_counter() - t0) * 1000
                if moved != n:
                    raise RuntimeError(f"handed off {moved} of {n}")

                # a third node holds `victims` cluster-scoped servers; SIGKILL it
                victim = Peer(redis.url, "bench-c", 0, 0)
                try:
                    while "bench-c" not in node.nodes():
                        await asyncio.sleep(0.02)
                    await victim.ask(f"scoped {victims}")
                    t_kill = time.perf_counter()
                    os.kill(victim.proc.pid, signal.SIGKILL)
                    keys = [f"victim-{i}" for i in range(victims)]
                    while True:
                        pids = await asyncio.gather(*(procreg.whereis(k) for k in keys))
                        if all(p is not None and p[0] != "bench-c" for p in pids):
                            break
                        await asyncio.sleep(0.005)
                    out[FAILOVER.name] = time.perf_counter() - t_kill
                finally:
                    victim.proc.wait(5)

            procreg.run(main, name="bench-a", cluster=redis.url, secret="bench", lease=LEASE)
        finally:
            peer.close()
    return out


BENCHMARKS = [
    Benchmark("cluster_scoped", [HANDOFF, FAILOVER], {"procreg": cluster_scoped}, isolated=True),
]
