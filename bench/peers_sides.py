"""The measuring sides of ``procreg bench --peers`` (`bench.peers`), one per system,
each run in a fresh interpreter against the run's Redis:

    python -m bench.peers_sides SIDE URL QUICK        # prints one JSON line

``redis`` (redis-py ``GET`` round trips: the raw-Redis baseline), ``procreg``,
``channels`` (Django Channels' ``channels_redis`` layer) and ``xoscar``. The
cross-process figures need a second process: ``procreg-remote`` and
``channels-remote`` are that other node, driven by lines on stdin (one JSON answer per
line on stdout), like `bench.cluster_peer`.

One-hop latency is measured one way: the sender stamps each message with
``time.perf_counter_ns()`` (``CLOCK_MONOTONIC``, shared by every process of the
machine) and the receiver records its arrival time minus the stamp, then acknowledges
by the cheapest direct path (a ``send`` to the sender's pid, a ``layer.send`` to its
channel) so that the next message leaves only once the previous one arrived.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.0
MEMBERS = 200  # group members on each of the two processes (fan-out)


def sizes(quick: bool) -> dict[str, int]:
    """How much work each side does."""
    if quick:
        return {"rounds": 10, "hops": 200, "calls": 500, "keys": 200, "gets": 1_000}
    return {"rounds": 100, "hops": 3_000, "calls": 5_000, "keys": 2_000, "gets": 10_000}


def say(**answer: Any) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def stats(samples_ns: list[int]) -> dict[str, float]:
    """Median and p99 in µs."""
    if not samples_ns:
        return {"median": float("nan"), "p99": float("nan")}
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median": statistics.median(ordered) / 1000, "p99": p99 / 1000}


class Other:
    """The other process of a cross-process measurement (``SIDE-remote``)."""

    def __init__(self, side: str, url: str) -> None:
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peers_sides", f"{side}-remote", url, "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the other process died")
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
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


async def commands(handlers: dict[str, Any]) -> None:
    """Answer lines from stdin with ``handlers[cmd](*args)`` until ``quit``."""
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        cmd, *args = line.split()
        if cmd == "quit":
            say(bye=True)
            return
        say(**await handlers[cmd](*args))


# -- redis-py: the raw-Redis baseline ---------------------------------------------------


def side_redis(url: str, quick: bool) -> dict[str, float]:
    import redis.asyncio as aioredis

    n = sizes(quick)["gets"]

    async def main() -> dict[str, float]:
        r = aioredis.from_url(url)
        await r.set("peers:k", "v")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await r.get("peers:k")
            samples.append(time.perf_counter_ns() - t0)
        await r.aclose()
        s = stats(samples)
        return {"get_median": s["median"], "get_p99": s["p99"]}

    return asyncio.run(main())


# -- procreg ------------------------------------------------------------------------------


def _procreg_classes() -> tuple[Any, Any, Any]:
    import procreg

    class Member(procreg.Server):
        count = 0

        def handle_info(self, msg: Any) -> None:
            Member.count += 1

    class Hop(procreg.Server):
        latencies: ClassVar[list[int]] = []

        def handle_info(self, msg: Any) -> None:
            Hop.latencies.append(time.perf_counter_ns() - msg[0])
            procreg.send(msg[1], "ack")

    class Echo(procreg.Server):
        def handle_call(self, request: Any) -> Any:
            return request

    return Member, Hop, Echo


def side_procreg_remote(url: str) -> None:
    import procreg

    Member, Hop, Echo = _procreg_classes()

    async def main() -> None:
        for _ in range(MEMBERS):
            await procreg.join("fan", Member.start())
        hop = Hop.start()
        await procreg.join("hop", hop)
        await procreg.register("hop", hop)
        await procreg.register("echo", Echo.start())
        for i in range(sizes(False)["keys"]):
            await procreg.get_or_spawn(f"held-{i}", Echo)
        say(ready=True)

        async def count() -> dict[str, Any]:
            return {"count": Member.count}

        async def hops() -> dict[str, Any]:
            s = stats(Hop.latencies)
            Hop.latencies.clear()
            return s

        await commands({"count": count, "hops": hops})

    procreg.run(main, name="peers-b", cluster=url, secret="bench", lease=LEASE)


def side_procreg(url: str, quick: bool) -> dict[str, float]:
    import procreg

    Member, _, Echo = _procreg_classes()
    n = sizes(quick)
    out: dict[str, float] = {}
    other = Other("procreg", url)

    async def main() -> None:
        node = procreg.current_node()
        while "peers-b" not in node.nodes():
            await asyncio.sleep(0.05)
        # fan-out to MEMBERS members here and MEMBERS on the other node
        for _ in range(MEMBERS):
            await procreg.join("fan", Member.start())
        before = (await other.ask("count"))["count"]
        t0 = time.perf_counter()
        for r in range(n["rounds"]):
            await procreg.publish("fan", r)
        want = n["rounds"] * MEMBERS
        while Member.count < want or (await other.ask("count"))["count"] - before < want:
            await asyncio.sleep(0.001)
        out["fanout_rate"] = 2 * want / (time.perf_counter() - t0)
        # one hop: publish to a group whose one member is on the other node; then
        # the same through a send to that member's pid (the cheapest remote hop)
        me = procreg.self()
        for what in ("publish", "send"):
            hop = await procreg.whereis("hop")
            assert hop is not None
            for _ in range(n["hops"]):
                if what == "publish":
                    await procreg.publish("hop", (time.perf_counter_ns(), me))
                else:
                    procreg.send(hop, (time.perf_counter_ns(), me))
                await procreg.receive(timeout=5)
            s = await other.ask("hops")
            out[f"hop_{what}_median"], out[f"hop_{what}_p99"] = s["median"], s["p99"]
        # get-or-create of a keyed actor: a new key (created here), a key held by the
        # other node (not cached here); then calls to one held there
        for what, prefix in (("new", "fresh"), ("existing", "held")):
            samples = []
            for i in range(n["keys"]):
                t0 = time.perf_counter_ns()
                await procreg.get_or_spawn(f"{prefix}-{i}", Echo)
                samples.append(time.perf_counter_ns() - t0)
            s = stats(samples)
            out[f"goc_{what}_median"], out[f"goc_{what}_p99"] = s["median"], s["p99"]
        echo = await procreg.whereis("echo")
        assert echo is not None
        samples = []
        for i in range(n["calls"]):
            t0 = time.perf_counter_ns()
            await procreg.call(echo, i)
            samples.append(time.perf_counter_ns() - t0)
        s = stats(samples)
        out["call_median"], out["call_p99"] = s["median"], s["p99"]

    try:
        procreg.run(main, name="peers-a", cluster=url, secret="bench", lease=LEASE)
    finally:
        other.close()
    return out


# -- channels_redis -------------------------------------------------------------------


def _layer(url: str) -> Any:
    from channels_redis.core import RedisChannelLayer

    # a capacity that never drops a message of the run (the default is 100 a channel)
    return RedisChannelLayer(hosts=[url], prefix="peers", capacity=1_000_000, expiry=600)


def side_channels_remote(url: str) -> None:
    async def main() -> None:
        layer = _layer(url)
        count = 0
        latencies: ClassVar[list[int]] = []

        async def member(channel: str) -> None:
            nonlocal count
            while True:
                await layer.receive(channel)
                count += 1

        async def hop(channel: str) -> None:
            while True:
                msg = await layer.receive(channel)
                latencies.append(time.perf_counter_ns() - msg["t0"])
                await layer.send(msg["reply"], {"type": "ack"})

        tasks = []
        for _ in range(MEMBERS):
            channel = await layer.new_channel()
            await layer.group_add("fan", channel)
            tasks.append(asyncio.create_task(member(channel)))
        hop_channel = await layer.new_channel()
        await layer.group_add("hop", hop_channel)
        tasks.append(asyncio.create_task(hop(hop_channel)))
        say(ready=True, hop=hop_channel)

        async def counted() -> dict[str, Any]:
            return {"count": count}

        async def hops() -> dict[str, Any]:
            s = stats(latencies)
            latencies.clear()
            return s

        await commands({"count": counted, "hops": hops})
        for task in tasks:
            task.cancel()
        await layer.flush()

    asyncio.run(main())


def side_channels(url: str, quick: bool) -> dict[str, float]:
    n = sizes(quick)
    out: dict[str, float] = {}
    other = Other("channels", url)

    async def main() -> None:
        layer = _layer(url)
        count = 0

        async def member(channel: str) -> None:
            nonlocal count
            while True:
                await layer.receive(channel)
                count += 1

        tasks = []
        for _ in range(MEMBERS):
            channel = await layer.new_channel()
            await layer.group_add("fan", channel)
            tasks.append(asyncio.create_task(member(channel)))
        before = (await other.ask("count"))["count"]
        t0 = time.perf_counter()
        for r in range(n["rounds"]):
            await layer.group_send("fan", {"type": "m", "n": r})
        want = n["rounds"] * MEMBERS
        while count < want or (await other.ask("count"))["count"] - before < want:
            await asyncio.sleep(0.001)
        out["fanout_rate"] = 2 * want / (time.perf_counter() - t0)
        for task in tasks:
            task.cancel()
        me = await layer.new_channel()
        for what in ("publish", "send"):
            for _ in range(n["hops"]):
                msg = {"type": "hop", "t0": time.perf_counter_ns(), "reply": me}
                if what == "publish":
                    await layer.group_send("hop", msg)
                else:
                    await layer.send(other.hello["hop"], msg)
                await layer.receive(me)
            s = await other.ask("hops")
            out[f"hop_{what}_median"], out[f"hop_{what}_p99"] = s["median"], s["p99"]
        await layer.flush()

    try:
        asyncio.run(main())
    finally:
        other.close()
    return out


# -- xoscar ---------------------------------------------------------------------------


def side_xoscar(url: str, quick: bool) -> dict[str, float]:
    """xoscar's actors live in an actor pool; the keyed actor lives in a sub-pool (its
    own process) and is reached from the main pool's process over xoscar's direct
    connection. Redis is not involved (the figure's peer is a direct path)."""
    import xoscar as xo

    n = sizes(quick)
    out: dict[str, float] = {}

    class Echo(xo.Actor):  # type: ignore[misc]
        def echo(self, value: Any) -> Any:
            return value

    async def get_or_create(address: str, uid: str) -> Any:
        try:
            return await xo.actor_ref(address, uid)
        except xo.ActorNotExist:
            try:
                return await xo.create_actor(Echo, address=address, uid=uid)
            except xo.ActorAlreadyExist:
                return await xo.actor_ref(address, uid)

    async def main() -> None:
        pool = await xo.create_actor_pool("127.0.0.1", n_process=1)
        async with pool:
            sub = next(iter(pool._sub_processes))  # the sub-pool's address
            for what in ("new", "existing"):
                samples = []
                for i in range(n["keys"]):
                    t0 = time.perf_counter_ns()
                    await get_or_create(sub, f"key-{i}")
                    samples.append(time.perf_counter_ns() - t0)
                s = stats(samples)
                out[f"goc_{what}_median"], out[f"goc_{what}_p99"] = s["median"], s["p99"]
            ref = await get_or_create(sub, "echo")
            samples = []
            for i in range(n["calls"]):
                t0 = time.perf_counter_ns()
                await ref.echo(i)
                samples.append(time.perf_counter_ns() - t0)
            s = stats(samples)
            out["call_median"], out["call_p99"] = s["median"], s["p99"]

    asyncio.run(main())
    return out


def side_procreg_direct(url: str, quick: bool) -> dict[str, float]:
    """procreg with direct connections between the nodes (``listen=``), its own prefix."""
    return side_procreg(url + "?prefix=direct&listen=127.0.0.1:0", quick)


SIDES = {
    "redis": side_redis,
    "procreg": side_procreg,
    "procreg-direct": side_procreg_direct,
    "channels": side_channels,
    "xoscar": side_xoscar,
}
REMOTES = {"procreg-remote": side_procreg_remote, "channels-remote": side_channels_remote}


if __name__ == "__main__":
    side, url, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    if side in REMOTES:
        REMOTES[side](url)
    else:
        say(values=SIDES[side](url, quick))
