"""Claims without a task per key (`claims.SpawnAttempt`) and the invalidations they publish.

The node runs in the test process (``procreg.run(main, cluster=redis.url, ...)``);
``main`` does the work and checks the store with its own redis-py client:

- `RedisBackend.get_or_spawn` on the task-free path: one process per key however
  many callers race, cancelled callers orphan nothing, a failing ``init`` reaches
  every caller and frees the key, and the rare outcomes (a grace period, a stale
  entry of our own) fall back to the general path (`RedisBackend.spawn_general`);
- `scripts.CLAIM` publishes on ``inval`` only for claims that replaced an entry, all
  of one script call in one message; `scripts.PURGE` names what it dropped in several
  messages of bounded size; the node's listener splits such messages and the cache
  drops every key named.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest
import redis.asyncio as aioredis

import procreg
from procreg.cluster.codec import canon, pid_from_str, pid_str
from procreg.pid import Pid

from .conftest import LEASE, SECRET

pytestmark = pytest.mark.timeout(60)

PREFIX = "procreg:"
INVAL = PREFIX + "inval"
SEP = "\x1f"


class Counted(procreg.Server):
    """Records the pid of every process whose ``init`` ran."""

    started: ClassVar[list[Pid]] = []

    def init(self, *args: Any) -> None:
        Counted.started.append(self.pid)


class Boom(Exception):
    pass


class Failing(procreg.Server):
    """An ``init`` that always fails, counting its attempts."""

    tries: ClassVar[int] = 0

    def init(self, *args: Any) -> None:
        Failing.tries += 1
        raise Boom("init failed")


@pytest.fixture(autouse=True)
def _reset_counters() -> None:
    Counted.started = []
    Failing.tries = 0


def run_node(url: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """Run `main` as the first process of node "a" on the cluster at `url`."""
    return procreg.run(main, name="a", cluster=url, secret=SECRET, lease=LEASE)


@contextlib.asynccontextmanager
async def store_client(url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


def tkey(table: str) -> str:
    return PREFIX + "t:" + canon(table)


async def stored(client: Any, table: str = "default") -> dict[str, Pid]:
    """The store's table: canonical key -> pid."""
    raw = await client.hgetall(tkey(table))
    return {k.decode(): pid_from_str(v.decode()) for k, v in raw.items()}


async def until(predicate: Callable[[], Awaitable[Any]], what: str, timeout: float = 5.0) -> Any:
    """Poll an async predicate until truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def counted_procs(node: Any) -> list[Pid]:
    return sorted(p.pid for p in node._procs.values() if isinstance(p, Counted))


# -- pub/sub on the inval channel ------------------------------------------------------


@contextlib.asynccontextmanager
async def inval_subscription(client: Any) -> AsyncIterator[Any]:
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(INVAL)
        message = await pubsub.get_message(timeout=5.0)
        assert message is not None and message["type"] == "subscribe", message
        yield pubsub
    finally:
        await pubsub.aclose()


_sentinels = iter(range(1_000_000))


async def published_so_far(client: Any, pubsub: Any) -> list[str]:
    """Every message published on ``inval`` since the last call: publishes a sentinel
    (Redis delivers a channel's messages in order) and reads up to it. A sentinel is
    one line, so the nodes' listeners find no pair in it."""
    token = f"sentinel-{next(_sentinels)}"
    await client.publish(INVAL, token)
    out: list[str] = []
    while True:
        message = await pubsub.get_message(timeout=5.0)
        assert message is not None, f"no sentinel on {INVAL}; got {out}"
        if message["type"] != "message":
            continue
        data = message["data"].decode()
        if data == token:
            return out
        out.append(data)


def pairs(message: str) -> list[tuple[str, str]]:
    parts = message.split("\n")
    assert len(parts) % 2 == 0, f"odd number of lines in {message!r}"
    return [(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]


# -- 1. many callers -------------------------------------------------------------------


def test_concurrent_callers_start_one_process_per_key(redis) -> None:
    keys = [f"k{i}" for i in range(100)]
    callers = [keys[i % len(keys)] for i in range(600)]
    random.Random(5).shuffle(callers)

    async def main() -> None:
        node = procreg.current_node()
        # two waves: the second finds some claims in flight, some keys already started
        first = [asyncio.ensure_future(procreg.get_or_spawn(k, Counted)) for k in callers[:300]]
        await asyncio.sleep(0)
        second = [asyncio.ensure_future(procreg.get_or_spawn(k, Counted)) for k in callers[300:]]
        pids = await asyncio.gather(*first, *second)

        by_key: dict[str, set[Pid]] = {}
        for key, pid in zip(callers, pids, strict=True):
            by_key.setdefault(key, set()).add(pid)
        assert {k: len(s) for k, s in by_key.items()} == dict.fromkeys(keys, 1)
        mine = {k: next(iter(s)) for k, s in by_key.items()}

        assert sorted(Counted.started) == sorted(mine.values())  # one init per key
        assert counted_procs(node) == sorted(mine.values())
        assert all(pid.node == "a" and pid.creation == node.creation for pid in mine.values())
        assert dict(procreg.entries()) == mine
        async with store_client(redis.url) as client:
            assert await stored(client) == {canon(k): pid for k, pid in mine.items()}
        # and a later caller gets the same pids without starting anything
        again = await asyncio.gather(*(procreg.get_or_spawn(k, Counted) for k in keys))
        assert again == [mine[k] for k in keys]
        assert len(Counted.started) == len(keys)

    run_node(redis.url, main)


def test_keys_held_by_a_live_node_are_not_started(redis) -> None:
    """Claims of held and free keys in one script call: each caller gets its own
    key's answer (the holder, or a new process)."""

    async def main() -> None:
        node = procreg.current_node()
        keys = ["f0", "held1", "f1", "held2", "f2", "held3"]
        held = {k: Pid("b", 3, i) for i, k in enumerate(keys) if k.startswith("held")}
        async with store_client(redis.url) as client:
            # node "b" (incarnation 3) is live as far as the store knows
            await client.set(f"{PREFIX}lease:b", "3", px=60_000)
            for key, pid in held.items():
                await client.hset(tkey("default"), canon(key), pid_str(pid) + '\t{"m":1}')
            pids = await asyncio.gather(*(procreg.get_or_spawn(k, Counted) for k in keys))
            got = dict(zip(keys, pids, strict=True))
            for key, pid in held.items():
                assert got[key] == pid
            started = {k: p for k, p in got.items() if k not in held}
            assert sorted(Counted.started) == sorted(started.values())
            assert all(p.node == "a" for p in started.values())
            assert counted_procs(node) == sorted(started.values())
            table = await stored(client)
            assert table == {canon(k): p for k, p in got.items()}
            assert (await client.hget(tkey("default"), canon("held1"))).endswith(b'\t{"m":1}')
        assert dict(procreg.entries()) == started

    run_node(redis.url, main)


# -- 2. cancelled callers --------------------------------------------------------------


def test_cancelled_caller_orphans_nothing(redis) -> None:
    """Callers cancelled while their claim is in flight: the one that made the claim
    (alone, or with another caller waiting), and one that joined it."""

    async def main() -> None:
        node = procreg.current_node()
        backend = node.registry
        alone = asyncio.ensure_future(procreg.get_or_spawn("alone", Counted))
        maker = asyncio.ensure_future(procreg.get_or_spawn("shared", Counted))
        joiner = asyncio.ensure_future(procreg.get_or_spawn("shared", Counted))
        maker2 = asyncio.ensure_future(procreg.get_or_spawn("shared2", Counted))
        joiner2 = asyncio.ensure_future(procreg.get_or_spawn("shared2", Counted))
        await asyncio.sleep(0)  # each caller has queued its claim (or joined one)
        keys = {("default", k) for k in ("alone", "shared", "shared2")}
        assert keys <= set(backend.attempts), "no claim in flight"
        # the claims' answers start the processes: none has come yet
        assert Counted.started == [] and procreg.entries() == []
        for task in (alone, maker, joiner2):
            task.cancel()

        shared = await asyncio.wait_for(joiner, 5.0)
        shared2 = await asyncio.wait_for(maker2, 5.0)
        for task in (alone, maker, joiner2):
            with pytest.raises(asyncio.CancelledError):
                await task

        async def alone_started() -> Any:
            return dict(procreg.entries()).get("alone")

        alone_pid = await until(alone_started, "the cancelled caller's process to start")
        mine = {"alone": alone_pid, "shared": shared, "shared2": shared2}
        assert sorted(Counted.started) == sorted(mine.values())
        assert counted_procs(node) == sorted(mine.values())  # nothing else runs
        assert all(procreg.is_alive(p) for p in mine.values())
        assert dict(procreg.entries()) == mine
        assert await procreg.whereis("alone") == alone_pid
        async with store_client(redis.url) as client:
            assert await stored(client) == {canon(k): p for k, p in mine.items()}
        assert not keys & set(backend.attempts)  # the attempts were settled

        for key, pid in mine.items():
            assert await procreg.get_or_spawn(key, Counted) == pid
        assert len(Counted.started) == 3

    run_node(redis.url, main)


class SlowInit(procreg.Server):
    """An ``async def init``: `get_or_spawn` takes the general path (a task)."""

    started: ClassVar[list[Pid]] = []

    async def init(self, *args: Any) -> None:
        await asyncio.sleep(0.01)
        SlowInit.started.append(self.pid)


def test_other_factories(redis) -> None:
    """An ``async def`` body goes the task-free way too; a server with an async init
    goes the general way, where a cancelled caller orphans nothing either."""
    SlowInit.started = []
    bodies: list[Any] = []

    async def body(tag: str) -> None:
        bodies.append((tag, procreg.self()))
        await procreg.receive()

    async def main() -> None:
        node = procreg.current_node()
        backend = node.registry
        pids = await asyncio.gather(*(procreg.get_or_spawn("body", body, "x") for _ in range(5)))
        assert pids == [pids[0]] * 5

        async def ran() -> bool:
            return bool(bodies)

        await until(ran, "the body to run")
        assert bodies == [("x", pids[0])]

        cancelled = asyncio.ensure_future(procreg.get_or_spawn("slow", SlowInit))
        other = asyncio.ensure_future(procreg.get_or_spawn("slow", SlowInit))
        await asyncio.sleep(0)
        assert ("default", "slow") in backend.attempts and SlowInit.started == []
        cancelled.cancel()
        slow = await asyncio.wait_for(other, 5.0)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert SlowInit.started == [slow]
        assert await procreg.get_or_spawn("slow", SlowInit) == slow
        with_meta = await procreg.get_or_spawn("meta", Counted, meta={"n": 1})
        assert await procreg.lookup("meta") == (with_meta, {"n": 1})
        assert dict(procreg.entries()) == {"body": pids[0], "slow": slow, "meta": with_meta}
        async with store_client(redis.url) as client:
            assert await stored(client) == {
                canon("body"): pids[0],
                canon("slow"): slow,
                canon("meta"): with_meta,
            }
            value = await client.hget(tkey("default"), canon("meta"))
            assert value == f'{pid_str(with_meta)}\t{{"n": 1}}'.encode()

    run_node(redis.url, main)


# -- 3. a failing init -----------------------------------------------------------------


def test_failing_init_reaches_every_caller_and_frees_the_key(redis) -> None:
    async def main() -> None:
        node = procreg.current_node()
        owned = f"{PREFIX}owned:a:{node.creation}"
        member = f"t{SEP}{canon('default')}{SEP}{canon('bad')}"
        results = await asyncio.gather(
            *(procreg.get_or_spawn("bad", Failing) for _ in range(8)), return_exceptions=True
        )
        assert [type(r) for r in results] == [Boom] * 8, results
        assert Failing.tries == 1  # the callers shared one attempt
        assert procreg.entries() == []
        assert ("default", "bad") not in node.registry.attempts

        async with store_client(redis.url) as client:

            async def freed() -> bool:
                return not await client.hexists(tkey("default"), canon("bad")) and not (
                    await client.sismember(owned, member)
                )

            await until(freed, "the failed claim to be released in the store")
            pid = await procreg.get_or_spawn("bad", Counted)
            assert Counted.started == [pid]
            assert await stored(client) == {canon("bad"): pid}
            assert await client.sismember(owned, member)
        assert dict(procreg.entries()) == {"bad": pid}

    run_node(redis.url, main)


def test_retry_right_after_a_failing_init(redis) -> None:
    """A new attempt before the failed one's release reached the store: the store may
    still name the dead pid (ours), which must not block the key."""

    async def main() -> None:
        with pytest.raises(Boom):
            await procreg.get_or_spawn("again", Failing)
        pid = await procreg.get_or_spawn("again", Counted)
        assert Counted.started == [pid]
        assert procreg.is_alive(pid)
        async with store_client(redis.url) as client:
            assert await stored(client) == {canon("again"): pid}

    run_node(redis.url, main)


# -- 4. a grace period -----------------------------------------------------------------


def test_grace_period_falls_back_to_the_general_path(redis) -> None:
    async def main() -> None:
        node = procreg.current_node()
        async with store_client(redis.url) as client:
            assert await client.set(PREFIX + "grace", 1, px=300)
            cancelled = asyncio.ensure_future(procreg.get_or_spawn("g", Counted))
            callers = [asyncio.ensure_future(procreg.get_or_spawn("g", Counted)) for _ in range(4)]
            await asyncio.sleep(0)
            cancelled.cancel()
            pids = await asyncio.wait_for(asyncio.gather(*callers), 10.0)
            # new claims are refused while the grace key exists: it must be gone now
            assert not await client.exists(PREFIX + "grace")
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            pid = pids[0]
            assert pids == [pid] * 4
            assert Counted.started == [pid]
            assert counted_procs(node) == [pid]
            assert await stored(client) == {canon("g"): pid}
        assert dict(procreg.entries()) == {"g": pid}
        assert await procreg.get_or_spawn("g", Counted) == pid
        assert len(Counted.started) == 1

    run_node(redis.url, main)


# -- 5. a stale entry of our own -------------------------------------------------------


def test_stale_entry_of_our_own_is_replaced(redis) -> None:
    async def main() -> None:
        node = procreg.current_node()
        stale = Pid("a", node.creation, 10**9)  # a serial no process of ours has
        async with store_client(redis.url) as client:
            assert await client.get(f"{PREFIX}lease:a") == str(node.creation).encode()
            await client.hset(tkey("default"), canon("s"), pid_str(stale) + "\t")
            pids = await asyncio.wait_for(
                asyncio.gather(*(procreg.get_or_spawn("s", Counted) for _ in range(3))), 10.0
            )
            pid = pids[0]
            assert pids == [pid] * 3
            assert pid != stale
            assert (pid.node, pid.creation) == ("a", node.creation)
            assert Counted.started == [pid]
            assert procreg.is_alive(pid)
            assert await stored(client) == {canon("s"): pid}
        assert dict(procreg.entries()) == {"s": pid}

    run_node(redis.url, main)


# -- 6. invalidations ------------------------------------------------------------------


def test_claims_publish_only_replaced_entries(redis) -> None:
    async def main() -> None:
        node = procreg.current_node()
        ghost = "ghost\t7\t"  # node "ghost" has no lease: its entries are free
        async with store_client(redis.url) as client, inval_subscription(client) as pubsub:
            assert not await client.exists(f"{PREFIX}lease:ghost")
            fresh = [f"fresh{i}" for i in range(50)]
            await asyncio.gather(*(procreg.get_or_spawn(k, Counted) for k in fresh))
            assert len(Counted.started) == 50
            assert await published_so_far(client, pubsub) == []

            # one replaced entry: one message naming it
            await client.hset(tkey("default"), canon("gk0"), ghost + "0\t")
            pid = await procreg.get_or_spawn("gk0", Counted)
            assert await published_so_far(client, pubsub) == [f"{canon('default')}\n{canon('gk0')}"]
            assert (await stored(client))[canon("gk0")] == pid

            # replaced and fresh keys together: only the replaced ones, each once
            ghosts = [("room", i) for i in range(1, 4)]
            for i, key in enumerate(ghosts, 1):
                await client.hset(tkey("default"), canon(key), f"{ghost}{i}\t")
            keys: list[Any] = ["more0", *ghosts, "more1", "more2"]
            pids = await asyncio.gather(*(procreg.get_or_spawn(k, Counted) for k in keys))
            named = [p for m in await published_so_far(client, pubsub) for p in pairs(m)]
            assert sorted(named) == sorted((canon("default"), canon(k)) for k in ghosts)
            table = await stored(client)
            for key, pid in zip(keys, pids, strict=True):
                assert table[canon(key)] == pid and pid.node == "a"

            # one script call, two replaced entries among fresh ones: one message
            await client.hset(tkey("direct"), canon("x1"), ghost + "11\t")
            await client.hset(tkey("direct"), canon(("x", 2)), ghost + "12\t")
            triples = [
                (canon("direct"), canon(key), pid_str(node._new_pid()) + "\t")
                for key in ["y0", "x1", "y1", ("x", 2), "y2"]
            ]
            answers = await node.registry.claims.script("new", triples)
            assert answers == [b""] * 5  # every one claimed
            assert await published_so_far(client, pubsub) == [
                f'"direct"\n{canon("x1")}\n"direct"\n{canon(("x", 2))}'
            ]

    run_node(redis.url, main)


def test_a_conflict_publishes_the_invalidation_of_its_key(redis) -> None:
    """A re-registration (after the store lost entries) that another live holder
    wins ends our process (reason ``"conflict"``). Our pid may have been handed out,
    and cached, while the store had no entry for it; its release finds the entry
    naming the winner and removes nothing, so the conflict itself publishes the key's
    invalidation, after our process has ended."""

    async def main() -> None:
        node = procreg.current_node()
        cluster = node._cluster
        async with store_client(redis.url) as client, inval_subscription(client) as pubsub:
            pid = await procreg.get_or_spawn("c", Counted)
            other = await procreg.get_or_spawn("free", Counted)
            await until(lambda: stored(client), "the entries")
            assert await published_so_far(client, pubsub) == []
            # the store lost our entry and live node b claimed the key meanwhile
            await client.set(f"{PREFIX}lease:b", "5")
            await client.hset(tkey("default"), canon("c"), "b\t5\t1\t")
            assert await cluster.backend.reconcile() == 1
            await until(lambda: asyncio.sleep(0, not procreg.is_alive(pid)), "the loser's end")
            assert procreg.is_alive(other)  # (re-claimed, no conflict)
            named = [p for m in await published_so_far(client, pubsub) for p in pairs(m)]
            assert (canon("default"), canon("c")) in named, named
            assert (await stored(client))[canon("c")] == Pid("b", 5, 1)

    run_node(redis.url, main)


def test_purge_publishes_in_several_messages(redis) -> None:
    """A purge of a dead incarnation that held thousands of keys names every key it
    dropped, once, in messages of bounded size (500 pairs each at 92789b5; up to
    `PURGE_BATCH` = 1000, one message per script call, in later versions)."""
    count = 2500

    async def main() -> None:
        cluster = procreg.current_node().registry.cluster
        table = tkey("purged")
        owned = f"{PREFIX}owned:ghost:9"
        fields = [canon(f"p{i}") for i in range(count)]
        async with store_client(redis.url) as client, inval_subscription(client) as pubsub:
            pipe = client.pipeline(transaction=False)
            for i, field in enumerate(fields):
                pipe.hset(table, field, f"ghost\t9\t{i}\t")
                pipe.sadd(owned, f"t{SEP}{canon('purged')}{SEP}{field}")
            # listed in its owned set, but held by another node since: stays, unnamed
            pipe.hset(table, canon("taken"), "b\t3\t1\t")
            pipe.sadd(owned, f"t{SEP}{canon('purged')}{SEP}{canon('taken')}")
            # a group membership goes too, the other member stays
            pipe.sadd(PREFIX + "g:" + canon("grp"), "ghost\t9\t1", "b\t3\t1")
            pipe.sadd(owned, f"g{SEP}{canon('grp')}{SEP}ghost\t9\t1")
            await pipe.execute()

            await cluster.purge("ghost", 9)
            messages = await published_so_far(client, pubsub)
            sizes = [len(pairs(m)) for m in messages]
            assert len(sizes) >= 2 and max(sizes) <= 1000, sizes
            named = [p for m in messages for p in pairs(m)]
            assert sorted(named) == sorted((canon("purged"), f) for f in fields)
            assert await stored(client, "purged") == {canon("taken"): Pid("b", 3, 1)}
            assert not await client.exists(owned)
            assert await client.smembers(PREFIX + "g:" + canon("grp")) == {b"b\t3\t1"}

            await cluster.purge("ghost", 9)  # idempotent, and nothing to say
            assert await published_so_far(client, pubsub) == []

    run_node(redis.url, main)


# -- 7. the cache and multi-pair messages ----------------------------------------------


def test_cache_drops_every_key_of_a_multi_pair_message(redis) -> None:
    async def main() -> None:
        backend = procreg.current_node().registry
        remote = Pid("remote", 5, 1)
        named = [("default", "r1"), ("other", ("room", 2)), ("default", 3)]
        kept = [("default", "r4"), ("other", "r1")]
        for entry in named + kept:
            backend.keys.entries[entry] = remote
        message = "\n".join(f"{canon(t)}\n{canon(k)}" for t, k in named)
        async with store_client(redis.url) as client:

            async def subscribed() -> bool:
                return (await client.pubsub_numsub(INVAL))[0][1] >= 1

            await until(subscribed, "the node to subscribe to the inval channel")

            async def dropped() -> bool:
                return not any(entry in backend.keys.entries for entry in named)

            assert await client.publish(INVAL, message) >= 1
            await until(dropped, "the named keys to leave the cache")
        assert {e: backend.keys.entries.get(e) for e in kept} == dict.fromkeys(kept, remote)

    run_node(redis.url, main)


# -- context variables -------------------------------------------------------------

_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


def test_processes_inherit_their_own_callers_context(redis) -> None:
    """The process starts in the claim's answer callback, yet under its own caller's
    context variables, as it would locally (a bug the first version of the task-free
    path had: every process of a batch saw the first caller's)."""
    seen: dict[str, str | None] = {}

    async def body(key: str) -> None:
        seen[key] = _request.get()
        await procreg.receive()

    class Init(procreg.Server):
        def init(self, key: str) -> None:
            seen[key] = _request.get()

    async def caller(i: int) -> None:
        _request.set(f"caller{i}")
        await procreg.get_or_spawn(f"body{i}", body, f"body{i}")
        await procreg.get_or_spawn(f"init{i}", Init, f"init{i}")

    async def grace_caller(i: int) -> None:
        _request.set(f"caller{i}")
        await procreg.get_or_spawn(f"grace{i}", Init, f"grace{i}")

    async def main() -> dict[str, str | None]:
        await asyncio.gather(*(caller(i) for i in range(4)))

        async def ran() -> bool:
            return len(seen) == 8

        await until(ran, "every process to start")
        # the same after falling back to the general path (a grace period)
        async with store_client(redis.url) as client:
            assert await client.set(PREFIX + "grace", 1, px=300)
        await asyncio.gather(*(grace_caller(i) for i in range(4)))
        return seen

    seen = run_node(redis.url, main)
    kinds = ("body", "init", "grace")
    assert seen == {f"{kind}{i}": f"caller{i}" for kind in kinds for i in range(4)}


# -- an error while handling a claim's answer --------------------------------------------


def test_an_error_handling_the_answer_reaches_every_caller(redis) -> None:
    """A malformed holder entry (a live lease, a serial that is not a number) makes
    handling the answer fail: every caller gets the error instead of waiting forever,
    and the key is not left with an attempt nobody will finish."""

    async def main() -> None:
        async with store_client(redis.url) as client:
            await client.set(PREFIX + "lease:x", "1")
            await client.hset(tkey("default"), canon("bad"), "x\t1\tnot-a-number\t")
        node = procreg.current_node()
        for _ in range(2):  # the second attempt must not join a dead first one
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(procreg.get_or_spawn("bad", Counted) for _ in range(3)),
                    return_exceptions=True,
                ),
                5.0,
            )
            assert all(isinstance(o, ValueError) for o in outcomes), outcomes
            assert ("default", "bad") not in node.registry.attempts
        assert Counted.started == []

    run_node(redis.url, main)


def test_items_for_a_pid_whose_claim_is_in_flight_wait_for_it(redis) -> None:
    """What reaches a pid whose claim is in flight (`RedisBackend.park`) waits, in
    order, and is delivered once the claim settled; no list is made for a claim that
    nothing reaches, and nothing is kept once it settled."""

    async def main() -> None:
        node = procreg.current_node()
        backend: Any = node.registry
        remote = backend.cluster.remote
        delivered: list[Any] = []
        remote.deliver = lambda sender, creation, item: delivered.append((sender, item))
        try:
            quiet = asyncio.ensure_future(procreg.get_or_spawn("quiet", Counted))
            busy = asyncio.ensure_future(procreg.get_or_spawn("busy", Counted))
            await asyncio.sleep(0)  # both attempts queued their claims
            pid_quiet = backend.attempts[("default", "quiet")].pid
            pid_busy = backend.attempts[("default", "busy")].pid
            assert backend.parked[pid_quiet] == () and backend.parked[pid_busy] == ()
            assert backend.park("b", 1, "first", pid_busy)
            assert backend.park("b", 1, "second", pid_busy)
            assert backend.parked[pid_quiet] == ()
            assert delivered == []
            assert await busy == pid_busy and await quiet == pid_quiet
            assert delivered == [("b", "first"), ("b", "second")]
            assert pid_busy not in backend.parked and pid_quiet not in backend.parked
            assert not backend.park("b", 1, "late", pid_busy)  # started: delivered directly
        finally:
            del remote.deliver

    run_node(redis.url, main)
