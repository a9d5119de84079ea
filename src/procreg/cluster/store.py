"""The connection to Redis (or Valkey); the scripts the protocol runs there are in
`procreg.cluster.scripts` (re-exported here).

`Store` wraps a redis-py asyncio client. Every command goes through `Store.run`: while
the store is known to be unreachable, cluster operations fail at once with
`ClusterUnavailable` instead of waiting on a socket; a background task reconnects
with exponential backoff and, once a ping succeeds, calls the `on_reconnect` hook
(membership re-syncs there).

Key layout (prefix ``procreg:`` by default; a `?prefix=` in the URL changes it):

| key | type | holds |
|---|---|---|
| ``epoch`` | string | a random token; if it vanishes, the store lost its data |
| ``fingerprint`` | string | `codec.fingerprint` of the cluster secret (others are refused) |
| ``grace`` | string, PX | present while nodes re-register after a data loss |
| ``creation`` | counter | incarnation numbers for nodes |
| ``lease:<node>`` | string, PX | the node's creation while its lease holds |
| ``nodes`` | hash | node -> creation, for membership polling |
| ``t:<table>`` | hash | canonical key -> ``node\\tcreation\\tserial\\tmeta-json`` |
| ``g:<group>`` | set | member pids (``node\\tcreation\\tserial``) |
| ``gw:<group>`` | set | the group's watchers (``node\\tcreation\\tserial``: `groupview`) |
| ``owned:<node>:<creation>`` | set | what that incarnation registered (and watches), for cleanup |
| ``kw`` | hash | ``<table>\\n<key>`` -> how many node incarnations watch it (`keywatch`) |
| ``scoped:<what>`` | hash | cluster-scoped processes: ``pid``, ``spec``, ``state`` |
| ``ch:<node>`` | pub/sub channel | frames for that node |
| ``inval`` | pub/sub channel | ``<table>\\n<key>`` pairs (newline-separated) of registry changes |
| ``kev`` | pub/sub channel | changes of watched keys, and watch markers (`keywatch`) |
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..errors import ClusterUnavailable
from .scripts import (
    CLAIM,
    LOOKUP,
    MEMBERS,
    PURGE,
    RELEASE,
    RENEW,
    SCRIPTS,
    UNWATCH,
    WATCH,
)
from .tasks import Tasks, stop_tasks
from .url import StoreURL, parse_url

# The scripts are re-exported: they lived here.
__all__ = [
    "CLAIM",
    "LOOKUP",
    "MEMBERS",
    "PURGE",
    "RELEASE",
    "RENEW",
    "SCRIPTS",
    "UNWATCH",
    "WATCH",
    "NotReplicated",
    "Store",
    "stop_tasks",  # (from `tasks`, where it lives now)
]

log = logging.getLogger("procreg.cluster")
T = TypeVar("T")


_FAST: dict[str, Any] = {}


def _fast_connection(aioredis: Any, kind: str) -> Any:
    """redis-py's asyncio connections pack commands in Python (about 30 µs for a
    script call with a dozen arguments); with hiredis installed, pack them in C.
    `kind` is a URL scheme, or ``sentinel``/``sentinel-tls``."""
    try:
        import hiredis
    except ImportError:
        return None
    from redis.asyncio import sentinel

    base = {
        "redis": aioredis.Connection,
        "rediss": aioredis.SSLConnection,
        "unix": aioredis.UnixDomainSocketConnection,
        "sentinel": sentinel.SentinelManagedConnection,
        "sentinel-tls": sentinel.SentinelManagedSSLConnection,
    }.get(kind)
    if base is None:
        return None
    found = _FAST.get(kind)
    if found is None:

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            first = args[0]
            if isinstance(first, str) and " " in first:  # "CLIENT SETNAME" and the like
                args = (*first.split(), *args[1:])
            return [hiredis.pack_command(args)]

        found = _FAST[kind] = type(
            f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command}
        )
    return found


def _demoted(exc: BaseException) -> bool:
    """True if a reply error says the server is a replica now (READONLY, or WAIT
    refused on a replica): a primary demoted by a failover."""
    text = str(exc)
    return "READONLY" in text or "replica instance" in text


class NotReplicated(ClusterUnavailable):
    """A write reached fewer replicas than the cluster URL's ``wait=`` asks for
    within ``wait_timeout`` (Redis ``WAIT`` semantics): it may be lost in a failover,
    so it does not count (a claim is not granted, a renewal does not extend the
    node's local lease deadline)."""


class Store:
    """A redis-py asyncio client with fail-fast and reconnection.

    `url` is a cluster URL (`procreg.cluster.url`); `timeout` (seconds) bounds every
    socket read, write and connect, and redis-py's own retries are off: a command on
    a silent or half-open connection fails within `timeout` and marks the store down
    (the node's liveness rests on that bound)."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        try:
            import redis.asyncio as aioredis
            import redis.exceptions as rexc
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ImportError("the cluster needs redis-py: pip install 'procreg[cluster]'") from exc
        self.config: StoreURL = parse_url(url)
        self.url = self.config.describe()
        self.prefix = self.config.prefix
        self.wait = self.config.wait
        self.wait_timeout = self.config.wait_timeout or min(0.5, timeout / 2)
        if self.wait_timeout >= timeout:  # the socket would time out first
            raise ValueError(
                f"wait_timeout={self.wait_timeout} in the cluster URL must be below the "
                f"store's socket timeout of {timeout:.3g} s (min(1 s, lease / 3))"
            )
        self._aioredis = aioredis
        self._rexc = rexc
        self._errors: tuple[type[BaseException], ...] = (
            rexc.ConnectionError,
            rexc.TimeoutError,
            ConnectionError,
            OSError,
            asyncio.TimeoutError,
        )
        self._timeout = timeout
        self.redis: Any = None
        self._sentinel: Any = None
        self.up = False
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self.failures = 0
        self.run_id = ""  # the server's INFO run_id, as last seen
        # (old, new) run ids when the primary changed and the cluster has not yet
        # re-registered what it holds (see `note_run_id`)
        self.changed_primary: tuple[str, str] | None = None
        self._batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self._batch_pending = False
        self._in_flight = 0  # direct script calls under way
        self.pipelines = 0  # batches sent
        self.batched = 0  # script calls sent in them
        self.tasks = Tasks()  # the node's background tasks (`tasks`), stopped by `close`

    def _options(self) -> dict[str, Any]:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "decode_responses": False,
            # one retry for a connection found closed (a server closing idle clients),
            # none for a timeout: a silent connection must fail within `timeout`
            "retry": Retry(NoBackoff(), 1, supported_errors=(self._rexc.ConnectionError,)),
        }
        config = self.config
        if config.sentinel:
            kind = "sentinel-tls" if config.tls else "sentinel"
        else:
            kind = urlparse(config.url).scheme
        packer = _fast_connection(self._aioredis, kind)
        if packer is not None:
            options["connection_class"] = packer
        return options

    def _sentinel_client(self, **options: Any) -> Any:
        from redis.asyncio.sentinel import Sentinel

        config = self.config
        if self._sentinel is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            kwargs = {
                "socket_timeout": self._timeout,
                "socket_connect_timeout": self._timeout,
                "retry": Retry(NoBackoff(), 0),  # an unreachable sentinel: the next one
            }
            self._sentinel = Sentinel(config.sentinels, sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
        return self._sentinel.master_for(
            config.service,
            db=config.db,
            username=config.username,
            password=config.password,
            **options,
        )

    def client(self) -> Any:
        """A new client on the same server (the current primary, for Sentinel)."""
        if self.config.sentinel:
            return self._sentinel_client(**self._options())
        return self._aioredis.from_url(self.config.url, **self._options())

    async def raw_connection(self) -> Any:
        """A redis-py connection of its own, connected and past the handshake (for
        `wire.Wire`, which takes its socket over)."""
        if self.config.sentinel:
            pool: Any = self._sentinel_client(**self._options()).connection_pool
        else:
            pool = self._aioredis.ConnectionPool.from_url(self.config.url, **self._options())
        conn = pool.make_connection()
        await conn.connect()
        return conn

    async def connect(self, attempts: int = 5, delay: float = 0.2) -> None:
        """Connect and ping, retrying a bounded number of times; `ClusterUnavailable`
        if the store cannot be reached, or (with ``wait=N``) if the primary has fewer
        than N replicas connected."""
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                self.redis = self.client()
                await self.redis.ping()
                self.run_id = await self.server_run_id()
                replicas = await self.connected_replicas() if self.wait else 0
            except self._errors as exc:
                last = exc
                await self._close_client()
                await asyncio.sleep(delay * (2**attempt))
                continue
            if replicas < self.wait:
                await self._close_client()
                raise ClusterUnavailable(
                    f"the cluster URL asks for wait={self.wait} (claims confirmed by "
                    f"{self.wait} replica(s), Redis WAIT) but the primary at {self.url} has "
                    f"{replicas} connected replica(s): add replicas or lower wait= in the URL"
                )
            for name, source in SCRIPTS.items():
                self._scripts[name] = self.redis.register_script(source)
            self.up = True
            return
        why = f"{type(last).__name__}: {last}"
        if self.config.sentinel:
            # (redis-py's message holds the repr of a whole client)
            why = (
                f"no sentinel at {self.config.sentinels} named a reachable primary "
                f"for the service {self.config.service!r} ({type(last).__name__}): is a "
                "sentinel running there, and does it monitor a primary by that name?"
            )
        raise ClusterUnavailable(
            f"cannot reach the cluster store at {self.url} after {attempts} attempts: {why}"
        )

    async def server_run_id(self) -> str:
        """The server's ``run_id`` (INFO server): it changes when the primary changes
        (a failover, or a restart)."""
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    def note_run_id(self, run_id: str) -> bool:
        """Record the server's run id; True (and `changed_primary` set) if it is not
        the one seen before: another server answers now (a failover, or a restart),
        and writes acknowledged by the old one may be missing."""
        old = self.run_id
        self.run_id = run_id
        if old and run_id and run_id != old:
            first = self.changed_primary[0] if self.changed_primary else old
            self.changed_primary = (first, run_id)
            return True
        return False

    async def connected_replicas(self) -> int:
        """How many replicas the primary has connected (INFO replication)."""
        info = await self.redis.info("replication")
        return int(info.get("connected_slaves", 0))

    async def _close_client(self) -> None:
        if self.redis is not None:
            try:
                await self.redis.aclose()
            except Exception:
                pass
            self.redis = None

    async def close(self) -> None:
        """Stop reconnecting, close the client, and let the node's background tasks
        end (`Tasks.drain`: their store operations now fail fast, and they answer
        their callers with `ClusterUnavailable`)."""
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        self.up = False
        await self._close_client()
        await self.tasks.drain(self._timeout)
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                try:
                    await client.aclose()
                except Exception:
                    pass
            self._sentinel = None

    def key(self, *parts: str) -> str:
        """A key under the prefix."""
        return self.prefix + ":".join(parts)

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(redis)``; `ClusterUnavailable` at once while the store is down."""
        if not self.up:
            raise ClusterUnavailable(f"the cluster store at {self.url} is unreachable")
        try:
            return await fn(self.redis)
        except self._errors as exc:
            self.mark_down(exc)
            raise ClusterUnavailable(f"the cluster store at {self.url} failed: {exc}") from exc
        except self._rexc.ResponseError as exc:
            if not _demoted(exc):
                raise
            # a connection kept from before a failover reached a replica: the primary
            # moved; reconnect (through the sentinel) as for any lost connection
            self.mark_down(exc)
            raise ClusterUnavailable(
                f"the cluster store at {self.url} answered as a replica: {exc}"
            ) from exc

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of `SCRIPTS`."""
        script = self._scripts[name]
        return await self.run(lambda r: script(keys=keys, args=args, client=r))

    async def durable_script(
        self, name: str, keys: list[str], args: list[Any], *, info: bool = False
    ) -> tuple[Any, int, str | None]:
        """Run one of `SCRIPTS` and, with ``wait=N``, Redis ``WAIT N wait_timeout`` on
        the same connection right after it (one round trip): ``(result, replicas
        that confirmed it, run_id or None)``. With ``wait=0`` the count is 0 and
        nothing waits. `info` adds ``INFO server`` to the same round trip, for the
        primary's run id."""
        script = self._scripts[name]
        wait, wait_ms = self.wait, max(1, int(self.wait_timeout * 1000))
        if not wait and not info:  # the common case: no pipeline
            return await self.run(lambda r: script(keys=keys, args=args, client=r)), 0, None

        async def run(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                await script(keys=keys, args=args, client=pipe)  # queues it
                if wait:
                    pipe.execute_command("WAIT", wait, wait_ms)
                if info:
                    pipe.info("server")
                answers: list[Any] = await pipe.execute(raise_on_error=True)
                return answers

        answers = await self.run(run)
        acked = int(answers[1]) if wait else 0
        run_id = str(answers[-1].get("run_id", "")) if info else None
        return answers[0], acked, run_id

    async def batched_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of `SCRIPTS`, auto-pipelined: with nothing in flight it goes at
        once; calls made while others are in flight are sent together, one pipeline
        per loop turn, so a burst of claims costs a few round trips, not one each."""
        if not self._in_flight and not self._batch:
            self._in_flight += 1
            try:
                return await self.script(name, keys, args)
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self.up:
            raise ClusterUnavailable(f"the cluster store at {self.url} is unreachable")
        self._batch.append((name, keys, args, fut))
        if not self._batch_pending:
            self._batch_pending = True
            loop.call_soon(self._send_batch)
        return await fut

    def _send_batch(self) -> None:
        self._batch_pending = False
        batch, self._batch = self._batch, []
        if batch:
            self._in_flight += 1
            self.tasks.spawn(self._run_batch(batch))

    async def _run_batch(
        self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]
    ) -> None:
        async def run(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                for name, keys, args, _ in batch:
                    await self._scripts[name](keys=keys, args=args, client=pipe)  # queues it
                result: list[Any] = await pipe.execute(raise_on_error=False)
                return result

        try:
            try:
                results = await self.run(run)
            finally:
                self._in_flight -= 1
            if len(results) != len(batch):
                raise ClusterUnavailable(f"{len(results)} answers to {len(batch)} scripts")
        except BaseException as exc:  # every caller gets the failure
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.pipelines += 1
        self.batched += len(batch)
        for (*_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def mark_down(self, exc: BaseException | None = None) -> None:
        """Note that the store failed and start reconnecting."""
        self.failures += 1
        if self.up:
            log.warning("cluster store %s unreachable (%s): reconnecting", self.url, exc)
        self.up = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(0.1, self._timeout))  # a third of a lease
            try:
                await self.redis.ping()
                # the pool still holds connections to the server that went away: drop
                # them, or the first commands after the restart fail one by one
                await self.redis.connection_pool.disconnect()
                self.note_run_id(await self.server_run_id())
            except self._errors as exc:
                log.debug("reconnecting to %s: %r", self.url, exc)
                continue
            except Exception:
                await self._close_client()
                self.redis = self.client()
                continue
            delay = 0.05  # back in touch: a failed re-sync is retried promptly
            self.up = True
            log.warning("cluster store %s reachable again", self.url)
            if self.on_reconnect is not None:
                try:
                    await self.on_reconnect()
                except Exception:
                    log.exception("re-sync after reconnecting failed: trying again")
                    continue
            if self.up:  # (it may have failed again during the re-sync: go on trying)
                return
