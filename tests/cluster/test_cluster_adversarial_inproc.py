"""Adversarial tests (break-10) with the node in the test process.

A primary change that a lease renewal notices (the renewal's ``INFO server`` shows a
new run id: a Sentinel failover that redis-py's one retry on a new connection hides
from the store's error path) runs `Cluster.primary_changed` -> `backend.reconcile`
inside the membership step, under its lock: no renewal is sent until every key has
been claimed again. With tens of thousands of keys that takes longer than the fence
point, and the node fences itself: every registered process ends, on every node,
because of a failover the design means to ride out.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import procreg
from procreg.cluster.backend import RedisBackend

from .conftest import SECRET

pytestmark = pytest.mark.timeout(120)

N_KEYS = 100_000


class Idle(procreg.Server):
    def init(self, *args):
        pass


def test_a_primary_change_seen_by_a_renewal_does_not_fence_the_node(redis) -> None:
    out: dict = {}

    async def main() -> None:
        node = procreg.current_node()
        cluster = node._cluster
        keys = [f"k{i}" for i in range(N_KEYS)]
        for start in range(0, N_KEYS, 2000):
            await asyncio.gather(*(procreg.get_or_spawn(k, Idle) for k in keys[start : start + 2000]))
        assert cluster.fenced == 0
        timings = []
        original = RedisBackend.reconcile

        async def timed(self):
            t = time.monotonic()
            try:
                await original(self)
            finally:
                timings.append(time.monotonic() - t)

        RedisBackend.reconcile = timed
        try:
            cluster.store.run_id = "0" * 40  # the next renewal sees "another" primary
            deadline = time.monotonic() + 15
            while not timings and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
        finally:
            RedisBackend.reconcile = original
        out.update(
            keys=N_KEYS,
            failovers=cluster.failovers,
            reconcile_seconds=[round(t, 3) for t in timings],
            fenced=cluster.fenced,
            registered_after=len(procreg.entries()),
        )

    procreg.run(main, name="a", cluster=redis.url, secret=SECRET, lease=1.0)
    print("MEASURED primary-change-reconcile:", json.dumps(out))
    assert out["failovers"] >= 1, out
    assert out["fenced"] == 0, out
