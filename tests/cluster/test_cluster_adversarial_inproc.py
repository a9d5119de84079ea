"""Adversarial tests (break-10) with the node in the test process.

1. Re-registering many keys blocks the event loop: `backend.reconcile` walks the
   owned set without yielding and `backend.reregister` starts one task per key in a
   single `gather` (100,000 keys: the loop is blocked ~1.7 s in one stretch), so no
   renewal runs and the node fences itself, ending every registered process. A
   primary change that a renewal notices also runs it under the membership step's
   lock (`Membership._step` awaits `Cluster.primary_changed`). Both must go.
2. Bad input: a ``wait_timeout=`` at or above the socket timeout makes an
   unconfirmed claim fail as a store failure (store marked down) instead of
   `NotReplicated`; ``wait_timeout=inf`` and garbled Sentinel host lists parse.
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

N_KEYS = 100_000  # (30,000: reconcile 0.57 s, no fence; 100,000: 1.68 s, fenced)


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
            await asyncio.gather(
                *(procreg.get_or_spawn(k, Idle) for k in keys[start : start + 2000])
            )
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
        stalls = [0.0]

        async def lag_probe() -> None:  # the longest the loop was blocked
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                stalls[0] = max(stalls[0], time.monotonic() - t - 0.01)

        probe = asyncio.ensure_future(lag_probe())
        try:
            cluster.store.run_id = "0" * 40  # the next renewal sees "another" primary
            deadline = time.monotonic() + 15
            while not timings and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
        finally:
            RedisBackend.reconcile = original
            probe.cancel()
        out.update(
            longest_loop_stall=round(stalls[0], 3),
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


# -- bad input: wait_timeout= against the socket timeout --------------------------------

from procreg.cluster.devserver import RedisServer  # noqa: E402
from procreg.cluster.store import NotReplicated  # noqa: E402
from procreg.testing import FaultProxy  # noqa: E402


@pytest.fixture
def lagging_replica(redis, redis_binary, tmp_path):
    """A replica of the test's `redis` through a fault proxy (blackhole it to make
    every ``WAIT 1`` time out)."""
    proxy = FaultProxy(redis.port).start()
    workdir = tmp_path / "replica"
    workdir.mkdir()
    replica = RedisServer(
        binary=redis_binary, workdir=workdir, args=["--replicaof", "127.0.0.1", str(proxy.port)]
    ).start()
    try:
        import redis as redis_py

        client = redis_py.Redis(port=redis.port)
        deadline = time.monotonic() + 15
        while client.info("replication").get("connected_slaves", 0) < 1:
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.1)
        client.close()
        yield proxy
    finally:
        replica.kill()
        proxy.stop()


@pytest.mark.parametrize("wait_timeout", ["0.1", "0.5"])
def test_a_claim_the_replicas_do_not_confirm_fails_with_not_replicated(
    redis, lagging_replica, wait_timeout
) -> None:
    """wait=1, lease 1 s (socket timeout 1/3 s): with the replica cut off, a claim is
    not granted and says why (`NotReplicated`), and the store is not taken for down.
    A wait_timeout at or above the socket timeout must be refused up front (or
    clamped): otherwise the socket times out first."""
    out: dict = {}

    async def main() -> None:
        cluster = procreg.current_node()._cluster
        lagging_replica.blackhole()
        t = time.monotonic()
        try:
            await procreg.get_or_spawn("k", Idle)
            out["error"] = None
        except Exception as exc:
            out["error"] = type(exc).__name__
            out["message"] = str(exc)[:160]
            out["not_replicated"] = isinstance(exc, NotReplicated)
        out["elapsed"] = round(time.monotonic() - t, 3)
        out["store_failures"] = cluster.store.failures
        lagging_replica.heal()

    url = f"{redis.url}?wait=1&wait_timeout={wait_timeout}"
    try:
        procreg.run(main, name="a", cluster=url, secret=SECRET, lease=1.0)
    except Exception as exc:
        out["start"] = f"{type(exc).__name__}: {exc}"[:200]
    print(f"MEASURED wait_timeout={wait_timeout}:", json.dumps(out))
    assert "start" in out or (out.get("not_replicated") and out["store_failures"] == 0), out


def test_an_infinite_wait_timeout_is_refused_when_parsed() -> None:
    from procreg.cluster.url import parse_url

    with pytest.raises(ValueError):
        parse_url("redis://127.0.0.1:6379/0?wait=1&wait_timeout=inf")


def test_a_sentinel_url_with_an_empty_host_is_refused() -> None:
    from procreg.cluster.url import parse_url

    for url in (
        "redis+sentinel:///main",
        "redis+sentinel://h:1,,h2:2/main",
        "redis+sentinel://::1/main",
        "redis+sentinel://h:99999/main",
    ):
        with pytest.raises(ValueError):
            print(url, "->", parse_url(url).sentinels)
