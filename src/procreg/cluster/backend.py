"""The registry across nodes, kept in Redis.

Each node keeps its own processes' registrations in the structures of `LocalBackend`
(so `entries`, exit cleanup and read-your-writes stay local and synchronous) and
mirrors them into the store:

- **Claims** are one script (`store.CLAIM`): it refuses if the epoch changed, if our
  own lease is gone (a fenced node cannot claim), or — for new claims — during a
  grace period after a data loss; it treats an entry whose owner's lease lapsed as
  free; and it publishes the change on the ``inval`` channel.
- **get_or_spawn** allocates the pid *first*, claims the key for it in one round
  trip, and starts the process only if the claim won; a losing caller gets the
  holder's pid and no duplicate ever runs its ``init``. Concurrent callers on one node
  share one attempt.
- **Lookups** of other nodes' keys go to the store (`store.LOOKUP`, which checks the
  owner's lease) and are cached; the cache drops an entry when an invalidation for
  its key arrives or its node goes down, and a lookup that raced with an
  invalidation is not cached.
- **Releases** (a process ended, `unregister`) update the local view at once and the
  store at the end of the loop turn, `RELEASE_BATCH` to a script call.
- **Groups** are sets of pids; `publish` reads the live members once and sends one
  transport item per node.
- **Key monitors** of this node's processes hear of other nodes' changes through
  `keywatch.KeyWatch` (watched keys recorded in the store, key events on ``kev``).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
from collections.abc import Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyRegistered, ClusterUnavailable, NoProcess
from ..pid import Pid, Ref
from ..process import _Proc
from ..registry import DEFAULT_TABLE, MISS, LocalBackend, NotOwner, Published, _Miss
from .codec import canon, pid_from_str, pid_str, uncanon
from .keywatch import KeyWatch
from .remote import factory_name
from .store import NotReplicated

if TYPE_CHECKING:
    from ..node import Node
    from . import Cluster

__all__ = ["RedisBackend", "home_node"]

log = logging.getLogger("procreg.cluster")

SEP = "\x1f"


CLAIM_BATCH = 512  # keys per claim script call
CLAIM_CALLS = 4  # claim script calls in flight at most (more wait their turn)
RELEASE_BATCH = 500  # releases per script call


_Answer = Callable[[Any, BaseException | None], None]  # (result, error) of one claim


class _Refused(Exception):
    """The store refused a whole claim call: "epoch", "fenced" or "grace"."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def home_node(key: Hashable, nodes: list[str]) -> str:
    """Rendezvous hashing: the node with the highest score for `key`."""
    ckey = canon(key).encode()

    def score(node: str) -> bytes:
        return hashlib.blake2b(node.encode() + b"\0" + ckey, digest_size=8).digest()

    return max(sorted(nodes), key=score)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Spawn:
    """One `get_or_spawn` attempt without a task of its own (the common case: local
    placement, no async init): claim the key for a fresh pid; the claim's answer, in
    a callback, starts the process or names the holder, and settles each caller's
    future (`waiters`). The rare outcomes (a grace period, a stale entry of our own)
    go on in a task, on the general path (`RedisBackend._spawn`)."""

    __slots__ = (
        "args",
        "backend",
        "ckey",
        "ctx",
        "factory",
        "fences",
        "gen",
        "idle_timeout",
        "key",
        "meta",
        "pid",
        "table",
        "waiters",
    )

    def __init__(
        self,
        backend: RedisBackend,
        key: Hashable,
        ckey: str,
        table: str,
        factory: Any,
        args: tuple[Any, ...],
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
    ) -> None:
        self.backend = backend
        self.key = key
        self.ckey = ckey
        self.table = table
        self.factory = factory
        self.args = args
        self.meta = meta
        self.idle_timeout = idle_timeout
        # one future per caller: a cancelled caller cancels only its own
        self.waiters: list[asyncio.Future[tuple[Pid, bool]]] = []

    def wait(self) -> asyncio.Future[tuple[Pid, bool]]:
        """A future for one more caller."""
        fut: asyncio.Future[tuple[Pid, bool]] = self.backend.runtime.loop.create_future()
        self.waiters.append(fut)
        return fut

    def claim(self) -> None:
        """Queue the claim (raises at once if this node is being fenced)."""
        b = self.backend
        self.pid = pid = b.runtime.new_pid()
        fenced = b._fenced_error(self.key, pid)
        if fenced is not None:
            raise fenced
        self.gen = b._gen
        self.fences = b.cluster.fenced  # a fence while the claim is in flight voids it
        b._parked[pid] = []
        # the process starts in the answer's callback, but under its caller's context
        # variables, as it would locally (request ids, tenants, tracing)
        self.ctx = contextvars.copy_context()
        b._queue_claim("new", b._triple(self.table, self.ckey, pid, self.meta), self.answer)

    def answer(self, result: Any, error: BaseException | None) -> None:
        """The claim's answer: every outcome settles every waiter, even an error
        raised while handling it (a malformed holder entry, say)."""
        try:
            self._answer(result, error)
        except BaseException as exc:
            self._settle(None, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise

    def _answer(self, result: Any, error: BaseException | None) -> None:
        b = self.backend
        key = self.key
        if error is not None:
            if isinstance(error, _Refused):
                if error.status == "grace":
                    self._general()
                    return
                error = ClusterUnavailable(f"cannot claim {key!r}: {error.status}")
            self._settle(None, error)
            return
        if result:  # held by another live process
            holder = pid_from_str(_text(result))
            if holder in b._dead:
                self._general()  # it ended: its owner's release is on its way
                return
            if holder[0] == b.node.name:
                if not b.runtime.alive(holder):
                    self._general()  # one of ours that ended: its release may be queued
                    return
            elif self.gen == b._gen:
                b._cache[(self.table, key)] = holder
            self._settle((holder, False), None)
            return
        pid = self.pid
        b.cluster.membership.check()  # past our lease deadline: fence first
        if b.cluster.fenced != self.fences:
            # won while our lease still held, but we were fenced since: the others may
            # have started the key again; give it back
            b._queue_release(self.table, key, pid, False)
            self._settle(None, ClusterUnavailable(f"cannot claim {key!r}: this node was fenced"))
            return
        try:
            proc = self.ctx.run(b.node.start_now, pid, self.factory, self.args, self.idle_timeout)
        except BaseException:
            b._queue_release(self.table, key, pid, False)
            raise  # settled by `answer`
        b._adopt(self.table, key, proc, self.meta, "ended right after it started")
        self._settle((pid, True), None)

    def _settle(self, outcome: tuple[Pid, bool] | None, error: BaseException | None) -> None:
        claims = self.backend._claims
        key = (self.table, self.key)
        if claims.get(key) is self:
            del claims[key]
        self.backend.unpark(self.pid)
        for fut in self.waiters:
            if fut.done():  # that caller was cancelled
                continue
            if error is None:
                assert outcome is not None
                fut.set_result(outcome)
            elif isinstance(error, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(error)

    def _general(self) -> None:
        b = self.backend
        task = b.runtime.loop.create_task(
            b._spawn(
                self.key, self.factory, self.args, self.table, "local", self.meta, self.idle_timeout
            ),
            context=self.ctx,  # the caller's, not the claim task's
        )
        task.add_done_callback(self._general_done)

    def _general_done(self, task: asyncio.Task[tuple[Pid, bool]]) -> None:
        if task.cancelled():
            self._settle(None, asyncio.CancelledError())
            return
        error = task.exception()
        self._settle(None if error is not None else task.result(), error)


class RedisBackend(LocalBackend):
    """`RegistryBackend` over the cluster store."""

    def __init__(self, node: Node, cluster: Cluster) -> None:
        super().__init__(node)
        self.runtime = node.runtime
        self.cluster = cluster
        self._membership = cluster.membership
        self.store = cluster.store
        self._cache: dict[tuple[str, Hashable], Pid] = {}
        self._gen = 0  # bumped on every invalidation
        # (table, key, pid, kind): kind "t" (ended), "u" (unregistered) or "g" (group)
        self._releases: list[tuple[str, Hashable, Pid, str]] = []
        self._release_pending = False
        self._release_lock = asyncio.Lock()
        # get_or_spawn attempts under way: joined by later callers of the same key
        self._claims: dict[tuple[str, Hashable], _Spawn | asyncio.Task[tuple[Pid, bool]]] = {}
        self.conflicts = 0
        self.unreplicated = 0  # claims not granted: too few replicas confirmed them
        # remote pids this node has learned are dead (a Down, an exit signal, a
        # noproc), with when: no lookup hands them out, even before the owner's
        # release reaches the store (causality: Down, then whereis, never the dead pid)
        self._dead: dict[Pid, float] = {}
        # tables of node-local names (`register_now`: a node's supervisors): kept in
        # this node's view only, never claimed in the store, never fenced
        self._node_local: set[str] = set()
        # pids allocated for a claim whose process does not exist yet: what other
        # nodes send them meanwhile (they may have found the pid in the store before
        # our claim's answer came back) waits here, and is delivered once the process
        # has started, or answered noproc if it never does
        self._parked: dict[Pid, list[tuple[str, int, Any]]] = {}
        self._tkeys: dict[str, tuple[str, str]] = {}
        # claims waiting for a script call, by mode ("new", "resync")
        self._pending_claims: dict[str, list[tuple[tuple[str, str, str], _Answer]]] = {}
        self._claims_scheduled = False
        self._claims_in_flight = 0
        self.keywatch = KeyWatch(self)

    # -- names in the store -----------------------------------------------------------
    def _tkey(self, table: str) -> tuple[str, str]:
        """``(hash key, canonical name)`` of a table."""
        found = self._tkeys.get(table)
        if found is None:
            ctable = canon(table)
            found = self._tkeys[table] = (self.store.key("t", ctable), ctable)
        return found

    def _owned(self) -> str:
        return self.store.key("owned", self.node.name, str(self.cluster.creation))

    # -- lookups ------------------------------------------------------------------------
    def peek(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | _Miss | None:  # type: ignore[override]
        m = self._membership
        if m.time() >= m.deadline and not m.check():
            return None  # fenced (or past our lease deadline): we hand out nothing
        proc = self._holder(key, table)
        if proc is not None:
            return proc.pid
        if self._node_local and table in self._node_local:
            return None  # node-local names live in this node's view only
        pid = self._cache.get((table, key))
        if pid is not None:
            if self.cluster.is_live(pid) and pid not in self._dead:
                self.cluster.counters.cache_hits += 1  # (metrics)
                return pid
            del self._cache[(table, key)]
        return MISS

    async def _fetch(self, key: Hashable, table: str) -> tuple[Pid, Any] | None:
        tkey, _ = self._tkey(table)
        gen = self._gen
        self.cluster.counters.store_lookups += 1  # (metrics)
        value = await self.store.batched_script(
            "lookup", [tkey], [canon(key), self.store.key("lease", "")]
        )
        if value is None:
            return None
        text = _text(value)
        pid = pid_from_str(text)
        if pid in self._dead:
            return None  # its owner's release has not reached the store yet
        meta_text = text.split("\t", 3)[3] if text.count("\t") >= 3 else ""
        if gen == self._gen and pid[0] != self.node.name:
            self._cache[(table, key)] = pid
        return pid, (json.loads(meta_text) if meta_text else None)

    async def whereis(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        pid = self.peek(key, table)
        if not isinstance(pid, _Miss):
            return pid
        found = await self._fetch(key, table)
        if found is None or found[0][0] == self.node.name or not self.cluster.membership.check():
            return None  # our own keys are all in the local view
        return found[0]

    async def lookup(
        self, key: Hashable, table: str = DEFAULT_TABLE
    ) -> tuple[Pid, dict[str, Any] | None] | None:
        if not self.cluster.membership.check():
            return None  # fenced: we hand out nothing
        local = await super().lookup(key, table)
        if local is not None or table in self._node_local:
            return local
        found = await self._fetch(key, table)
        if found is None or found[0][0] == self.node.name or not self.cluster.membership.check():
            return None
        return found

    # -- claims ------------------------------------------------------------------------
    async def _claim(
        self, key: Hashable, table: str, pid: Pid, meta: dict[str, Any] | None, mode: str = "new"
    ) -> Pid | None:
        """Claim `key` for `pid`; None if it won, else the live holder's pid."""
        fenced = self._fenced_error(key, pid)
        if fenced is not None:
            raise fenced
        fences = self.cluster.fenced  # a fence while the claim is in flight voids it
        triple = self._triple(table, canon(key), pid, meta)
        stale_tries = 0
        while True:
            gen = self._gen
            try:
                result = await self._claims_batched(mode, triple)
            except _Refused as refused:
                if refused.status == "grace":
                    await asyncio.sleep(0.05)
                    continue
                raise ClusterUnavailable(f"cannot claim {key!r}: {refused.status}") from None
            if not result:
                self.cluster.membership.check()  # past our lease deadline: fence first
                if self.cluster.fenced != fences:
                    # won while our lease still held, but we were fenced since: the
                    # others may have started the key again; give it back
                    self._queue_release(table, key, pid, False)
                    raise ClusterUnavailable(f"cannot claim {key!r}: this node was fenced")
                return None
            holder = pid_from_str(_text(result))
            if holder in self._dead and stale_tries < 200:
                # we know it ended (a Down came first): its owner's release is on its
                # way to the store; do not hand out a dead pid, wait for it
                stale_tries += 1
                await asyncio.sleep(0.005)
                continue
            if holder[0] == self.node.name:
                if not self.runtime.alive(holder) and stale_tries < 3:
                    # one of ours that ended: its release may still be queued
                    stale_tries += 1
                    self._queue_release(table, key, holder, False)
                    await self._flush_releases()
                    continue
            elif gen == self._gen:
                self._cache[(table, key)] = holder
            return holder

    async def _claims_batched(self, mode: str, triple: tuple[str, str, str]) -> Any:
        """Claim one key (see `_queue_claim`) and wait for the answer."""
        fut: asyncio.Future[Any] = self.runtime.loop.create_future()

        def answer(result: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self._queue_claim(mode, triple, answer)
        return await fut

    def _queue_claim(self, mode: str, triple: tuple[str, str, str], answer: _Answer) -> None:
        """Claim one key; `answer(result, error)` is called with the script's answer
        for it. With no claim in flight it goes at once; claims made while others are
        in flight go together, one script call per loop turn (up to `CLAIM_BATCH`
        keys each), at most `CLAIM_CALLS` calls at a time: a burst (say, re-registering
        a million keys) neither exhausts the connection pool nor holds the server up
        for others, and every call answers well within the socket timeout."""
        pending = self._pending_claims
        if not pending and not self._claims_in_flight:
            self._claims_in_flight += 1
            self.node._loop.create_task(self._run_claims(mode, [(triple, answer)]))
            return
        queue = pending.get(mode)
        if queue is None:
            queue = pending[mode] = []
        queue.append((triple, answer))
        self._schedule_claims()

    def _schedule_claims(self) -> None:
        if not self._claims_scheduled and self._claims_in_flight < CLAIM_CALLS:
            self._claims_scheduled = True
            self.node._loop.call_soon(self._send_claims)

    def _send_claims(self) -> None:
        self._claims_scheduled = False
        pending = self._pending_claims
        for mode in list(pending):
            queue = pending[mode]
            while queue and self._claims_in_flight < CLAIM_CALLS:
                chunk = queue[:CLAIM_BATCH]
                del queue[:CLAIM_BATCH]
                self._claims_in_flight += 1
                self.node._loop.create_task(self._run_claims(mode, chunk))
            if not queue:
                del pending[mode]

    async def _run_claims(
        self, mode: str, chunk: list[tuple[tuple[str, str, str], _Answer]]
    ) -> None:
        results: list[Any] | None = None
        error: BaseException | None = None
        try:
            results = await self._claim_script(mode, [triple for triple, _ in chunk])
        except BaseException as exc:  # every caller in the chunk gets the failure
            error = exc
        finally:
            self._claims_in_flight -= 1
            if self._pending_claims:
                self._schedule_claims()
        self.cluster.counters.claimed(len(chunk), results)  # (metrics)
        fatal: BaseException | None = None
        for i, (_, answer) in enumerate(chunk):  # every claim of the chunk is answered
            try:
                answer(None if results is None else results[i], error)
            except (KeyboardInterrupt, SystemExit) as exc:
                fatal = fatal or exc
            except BaseException:
                log.exception("handling a claim's answer failed")
        if fatal is not None:
            raise fatal
        if error is not None and not isinstance(error, Exception):
            raise error  # cancelled: the callers were told

    async def _claim_script(self, mode: str, triples: list[tuple[str, str, str]]) -> list[Any]:
        store = self.store
        args: list[Any] = [
            self.cluster.membership.epoch,
            self.cluster.creation,
            store.key("lease", ""),
            mode,
            store.key("inval"),
            store.key("t", ""),
        ]
        for triple in triples:
            args.extend(triple)
        owned = self._owned()
        result, acked, _ = await store.durable_script(
            "claim",
            [
                owned,
                store.key("epoch"),
                store.key("lease", self.node.name),
                store.key("grace"),
                store.key("kw"),
                store.key("kev"),
            ],
            args,
        )
        if not isinstance(result, list):
            raise _Refused(_text(result))
        if len(result) != len(triples):
            raise ClusterUnavailable(f"{len(result)} answers to {len(triples)} claims")
        if acked < store.wait:
            # not confirmed by the replicas asked for: a failover could lose it, so it
            # is not granted; what it won is given back (best effort)
            self.unreplicated += len(triples)
            won = [t for t, r in zip(triples, result, strict=True) if not r]
            if won:
                quads: list[Any] = [store.key("inval"), store.prefix]
                for ctable, ckey, value in won:
                    quads += ("t", ctable, ckey, "\t".join(value.split("\t", 3)[:3]))
                try:
                    await store.script("release", [owned], quads)
                except ClusterUnavailable:
                    pass  # reconciled from the owned set on reconnect
            raise NotReplicated(
                f"{len(triples)} claim(s) reached {acked} of {store.wait} replica(s) within "
                f"{store.wait_timeout} s (Redis WAIT; wait= in the cluster URL): not granted"
            )
        return result

    async def register(
        self,
        key: Hashable,
        pid: Pid,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        canon(key)
        if pid[0] != self.node.name:
            raise ValueError(f"register {pid!r} on its own node ({pid[0]!r})")
        proc = self.node._lookup(pid)
        if proc is None or not self.runtime.alive(pid):
            raise NoProcess(f"cannot register {key!r}: {pid!r} is not alive")
        holder = self._holder(key, table)
        if holder is not None and holder is not proc:
            raise AlreadyRegistered(key, holder.pid)
        other = await self._claim(key, table, pid, meta)
        if other is not None:
            raise AlreadyRegistered(key, other)
        self._adopt(table, key, proc, meta, f"ended while registering {key!r}")

    async def unregister(
        self, key: Hashable, table: str = DEFAULT_TABLE, pid: Pid | None = None
    ) -> bool:
        tab = self._tables.get(table)
        # our own entry, even if its process is exiting (an async `terminate` that
        # unregisters its key), as on the embedded node
        holder = tab.get(key) if tab is not None else None
        if holder is not None:
            removed = await super().unregister(key, table, pid)
            if table in self._node_local:
                return removed
            self._queue_release(table, key, holder._procreg_pid, False, unregistered=True)
            await self._flush_releases()
            return removed
        if table in self._node_local:
            return False
        found = await self._fetch(key, table)
        if found is None:
            return False
        if pid is not None and found[0] != pid:
            raise NotOwner(f"{key!r} in table {table!r} is held by {found[0]!r}, not {pid!r}")
        # Removing it here would leave its process serving the key on its own node
        # while another could be started: the owner's node must do it.
        raise NotOwner(
            f"{key!r} in table {table!r} is held by {found[0]!r} on node {found[0][0]!r}: "
            "unregister it there (or end the process)"
        )

    async def get_or_spawn(
        self,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str = DEFAULT_TABLE,
        placement: str = "local",
        meta: dict[str, Any] | None = None,
        idle_timeout: float | None = None,
    ) -> tuple[Pid, bool]:
        ckey = canon(key)
        pid = self.peek(key, table)
        if isinstance(pid, Pid):
            return pid, False
        if self.cluster.fencing:
            raise ClusterUnavailable(
                f"cannot get_or_spawn {key!r}: this node fenced itself and has not rejoined"
            )
        flight = self._claims.get((table, key))
        if flight is not None:
            if isinstance(flight, _Spawn):
                found, _ = await flight.wait()
            else:
                found, _ = await asyncio.shield(flight)
            return found, False
        node = self.node
        if placement == "local" and node.starts_now(factory) and not self.cluster.fencing:
            # the common case, without a task: the claim's answer starts the process
            # (or fails) in a callback, so a cancelled caller orphans nothing
            attempt = _Spawn(self, key, ckey, table, factory, args, meta, idle_timeout)
            attempt.claim()
            self._claims[(table, key)] = attempt
            return await attempt.wait()
        task = self.runtime.loop.create_task(
            self._spawn(key, factory, args, table, placement, meta, idle_timeout)
        )
        self._claims[(table, key)] = task
        task.add_done_callback(partial(self._claim_done, (table, key)))
        return await asyncio.shield(task)

    def _claim_done(self, key: tuple[str, Hashable], task: asyncio.Task[tuple[Pid, bool]]) -> None:
        if self._claims.get(key) is task:
            del self._claims[key]

    async def _spawn(
        self,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str,
        placement: str,
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
    ) -> tuple[Pid, bool]:
        node = self.node
        if placement == "hash":
            factory_name(factory)  # importable by name on every node, wherever home is
            home = home_node(key, self.cluster.live_nodes())
            if home != node.name:
                gen = self._gen
                result: tuple[Pid, bool] = await self.cluster.remote.spawn(
                    home, key, factory, args, table, meta, idle_timeout
                )
                # not cached if an invalidation overtook the reply (it may be dead already)
                if result[0][0] != node.name and gen == self._gen:
                    self._cache[(table, key)] = result[0]
                return result
        pid = self.runtime.new_pid()
        self._parked[pid] = []
        try:
            holder = await self._claim(key, table, pid, meta)
            if holder is not None:
                return holder, False
            fences = self.cluster.fenced
            try:
                proc = await node.start_with_pid(pid, factory, args, idle_timeout, key=(table, key))
            except BaseException:
                self._queue_release(table, key, pid, False)
                raise
        finally:
            self.unpark(pid)
        self.cluster.membership.check()  # past our lease deadline: fence first
        if self.cluster.fenced != fences:  # fenced during an async init: it must not live on
            self.runtime.end(pid, "fenced")
            self._queue_release(table, key, pid, False)
            raise ClusterUnavailable(f"cannot start {key!r}: this node was fenced")
        self._adopt(table, key, proc, meta, "ended right after it started")
        return pid, True

    def _adopt(
        self, table: str, key: Hashable, proc: _Proc, meta: dict[str, Any] | None, why: str
    ) -> None:
        """Add a process whose claim on `key` won to the local view; if it has ended
        meanwhile, give the key back and raise `NoProcess` (`why` it is not alive)."""
        if not self.runtime.alive(proc.pid):
            self._queue_release(table, key, proc.pid, False)
            raise NoProcess(f"{proc.pid!r} {why}")
        self._add(table, key, proc, meta)

    def _triple(
        self, table: str, ckey: str, pid: Pid, meta: dict[str, Any] | None
    ) -> tuple[str, str, str]:
        """What `CLAIM` takes for one key: canonical table, canonical key, value."""
        return (
            self._tkey(table)[1],
            ckey,
            pid_str(pid) + "\t" + (json.dumps(meta) if meta else ""),
        )

    def _fenced_error(self, key: Hashable, pid: Pid) -> ClusterUnavailable | None:
        """Why `pid` must not claim `key` now, if it must not: a pid of an incarnation
        the cluster has declared dead must never be claimed."""
        if not self.cluster.membership.check() or pid[1] != self.cluster.creation:
            return ClusterUnavailable(
                f"cannot claim {key!r} for {pid!r}: this node fenced itself (its lease may "
                "have lapsed) and has not rejoined the cluster yet"
            )
        return None

    # -- releases ------------------------------------------------------------------------
    def _queue_release(
        self, table: str, key: Hashable, pid: Pid, group: bool, unregistered: bool = False
    ) -> None:
        kind = "g" if group else "u" if unregistered else "t"
        self._releases.append((table, key, pid, kind))
        if not self._release_pending:
            self._release_pending = True
            self.node._loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self.node._loop.create_task(self._flush_releases())

    async def _flush_releases(self) -> None:
        """Send the queued releases, `RELEASE_BATCH` to a script call. Returns once
        every release queued before the call has reached the store (or the store is
        down: they are reconciled from the owned set on reconnect)."""
        self._release_pending = False
        async with self._release_lock:  # an earlier flush may hold some of ours
            batch, self._releases = self._releases, []
            if not batch or not self.store.up:
                return
            store = self.store
            owned = self._owned()
            head = [store.key("inval"), store.prefix]
            for start in range(0, len(batch), RELEASE_BATCH):
                args = list(head)
                for table, key, pid, kind in batch[start : start + RELEASE_BATCH]:
                    if kind == "g":
                        args += ("g", canon(key), "", pid_str(pid))
                    else:
                        args += (kind, self._tkey(table)[1], canon(key), pid_str(pid))
                try:
                    await store.script("release", [owned], args)
                except ClusterUnavailable:
                    return

    def process_ended(self, proc: _Proc) -> None:
        reg = proc._procreg_reg
        pid = proc._procreg_pid
        if reg is not None:
            for table, key in reg if type(reg) is set else (reg,):
                tab = self._tables.get(table)
                if tab is not None and tab.get(key) is proc and table not in self._node_local:
                    self._queue_release(table, key, pid, False)
        ext = proc._procreg_ext
        if ext is not None and ext.groups:
            for group in ext.groups:
                self._queue_release("", group, pid, True)
        super().process_ended(proc)

    # -- key monitors ------------------------------------------------------------------------
    async def monitor_key(self, key: Hashable, table: str, watcher: Pid) -> Ref:
        canon(key)  # a key that cannot cross the cluster: TypeError before anything
        self._tkey(table)
        ref = await super().monitor_key(key, table, watcher)
        try:
            await self.keywatch.watch(table, key)
        except BaseException:
            self.demonitor_key(ref, watcher)
            raise
        return ref

    def _drop_key_monitor(self, ref: Ref, entry: tuple[str, Hashable]) -> None:
        super()._drop_key_monitor(ref, entry)
        if entry not in self._key_monitors:  # its last local watcher is gone
            self.keywatch.unwatch(entry)

    def notify_key(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        self.keywatch.local(table, key, event, pid)
        super().notify_key(table, key, event, pid)

    # -- groups ----------------------------------------------------------------------------
    async def join(self, group: Hashable, pid: Pid) -> bool:
        cgroup = canon(group)
        if pid[0] != self.node.name:
            raise ValueError(f"join {pid!r} to a group on its own node ({pid[0]!r})")
        added = await super().join(group, pid)
        if added:
            member = pid_str(pid)
            try:
                await self._sadd2(
                    self.store.key("g", cgroup),
                    member,
                    self._owned(),
                    f"g{SEP}{cgroup}{SEP}{member}",
                )
            except BaseException:
                await super().leave(group, pid)
                raise
        return added

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        canon(group)
        left = await super().leave(group, pid)
        if left:
            self._queue_release("", group, pid, True)
            await self._flush_releases()
        return left

    async def members(self, group: Hashable) -> list[Pid]:
        store = self.store
        raw = await store.script(
            "members", [store.key("g", canon(group))], [store.key("lease", "")]
        )
        return sorted(pid_from_str(_text(m)) for m in raw)

    async def publish(self, group: Hashable, msg: Any) -> int:  # a Published
        pids = await self.members(group)
        by_node: dict[str, list[Pid]] = {}
        for pid in pids:
            by_node.setdefault(pid[0], []).append(pid)
        reached = 0
        missed = 0  # local members the message could not be queued to
        for name, members in by_node.items():
            if name == self.node.name:
                for pid in members:
                    if self.runtime.deliver(pid, msg, "send"):
                        reached += 1
                    else:  # mailbox full, ending, or already gone
                        missed += 1
            else:
                self.cluster.remote.group_send(name, members, msg)
                reached += len(members)
        return Published(reached, missed)

    # -- cache and recovery ---------------------------------------------------------------
    def invalidated(self, ctable: str, field: str) -> None:
        """A registry change on any node (from the ``inval`` channel)."""
        self._gen += 1
        self.cluster.counters.invalidations += 1  # (metrics)
        if not self._cache:
            return
        try:
            table = uncanon(ctable)
            key = uncanon(field)
        except (ValueError, IndexError):
            return
        if isinstance(table, str):
            self._cache.pop((table, key), None)

    def pid_ended(self, pid: Pid) -> None:
        """A remote process is known to have ended (we delivered its Down, its exit
        signal, or a noproc for it): lookups on this node never return it again
        (for 2 x lease: by then its owner's release has surely reached the store)."""
        now = self.runtime.loop.time()
        dead = self._dead
        horizon = now - 2 * self.cluster.lease
        while dead:  # oldest first (insertion order)
            first = next(iter(dead))
            if dead[first] >= horizon:
                break
            del dead[first]
        dead.pop(pid, None)
        dead[pid] = now  # (`peek` drops a cache entry that names it)

    def pid_answered(self, pid: Pid) -> None:
        """A remote process answered a call: it is alive."""
        if self._dead:
            self._dead.pop(pid, None)

    def park(self, sender: str, creation: int, item: Any, pid: Pid) -> bool:
        """Keep an item for one of our pids whose claim is in flight (True), to
        deliver once its process has started (`unpark`)."""
        parked = self._parked.get(pid)
        if parked is None:
            return False
        parked.append((sender, creation, item))
        return True

    def unpark(self, pid: Pid) -> None:
        """The claim for `pid` settled: deliver what waited for it, in order (to the
        process, or answered noproc if it never started)."""
        parked = self._parked.pop(pid, None)
        if parked:
            deliver = self.cluster.remote.deliver
            for sender, creation, item in parked:
                deliver(sender, creation, item)

    def node_down(self, name: str) -> None:
        """Forget cached entries of a node that went down."""
        self._gen += 1
        for k in [k for k, pid in self._cache.items() if pid[0] == name]:
            del self._cache[k]

    def clear_cache(self) -> None:
        self._gen += 1
        self._cache.clear()

    def register_now(
        self,
        key: Hashable,
        proc: _Proc,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """A node-local name (a node's supervisors): this node's view only."""
        self._node_local.add(table)
        super().register_now(key, proc, table, meta)

    def local_entries(self) -> list[tuple[str, Hashable, _Proc]]:
        """Every (table, key, process) this node holds in the store (node-local
        names left out)."""
        local = self._node_local
        return [
            (t, k, p) for t, tab in self._tables.items() if t not in local for k, p in tab.items()
        ]

    async def reregister(self, mode: str) -> int:
        """Claim again every local registration and group membership (after a data
        loss or on rejoining); a key now held by another live process is a conflict:
        `Cluster.conflict` decides. Returns how many conflicts there were."""
        entries = [(t, k, p) for t, k, p in self.local_entries() if self.runtime.alive(p.pid)]

        async def one(table: str, key: Hashable, proc: _Proc) -> Pid | None:
            meta = self._meta.get(table, {}).get(key)
            return await self._claim(key, table, proc._procreg_pid, meta, mode=mode)

        # concurrently, so that the claims go in batches (one script call per loop
        # turn), a bounded number at a time: a million at once would stall the event
        # loop for seconds (creating the tasks) and the node would miss its renewals
        holders: list[Pid | None] = []
        step = CLAIM_BATCH * CLAIM_CALLS
        for start in range(0, len(entries), step):
            holders += await asyncio.gather(
                *(one(t, k, p) for t, k, p in entries[start : start + step])
            )
        conflicts = 0
        for (table, key, proc), holder in zip(entries, holders, strict=True):
            if holder is not None and holder != proc.pid:
                conflicts += 1
                self.conflicts += 1
                await self.cluster.conflict(table, key, proc, holder)
            elif not self.runtime.alive(proc.pid):  # ended while we claimed: give it back
                self._queue_release(table, key, proc._procreg_pid, False)
        store = self.store
        owned = self._owned()
        for group, members in list(self._groups.items()):
            cgroup = canon(group)
            for pid in list(members):
                member = pid_str(pid)
                await self._sadd2(
                    store.key("g", cgroup), member, owned, f"g{SEP}{cgroup}{SEP}{member}"
                )
        return conflicts

    async def _sadd2(self, key1: str, member1: str, key2: str, member2: str) -> None:
        async def run(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.sadd(key1, member1)
            pipe.sadd(key2, member2)
            await pipe.execute()

        await self.store.run(run)

    async def reconcile(self) -> int:
        """After a reconnect: release store entries of ours that the local view no
        longer has (their processes ended while the store was unreachable), and claim
        again the ones the store lost. Returns how many conflicts there were."""
        store = self.store
        owned = await store.run(lambda r: r.smembers(self._owned()))
        mine = {(canon(t), canon(k)) for t, k, _ in self.local_entries()}
        joined = {
            (canon(g), pid_str(pid)) for g, members in self._groups.items() for pid in members
        }
        for i, raw in enumerate(owned):
            if i % 2048 == 2047:
                await asyncio.sleep(0)  # a large owned set: let renewals run
            kind, ckey, field = _text(raw).split(SEP, 2)
            try:
                name, item = uncanon(ckey), uncanon(field) if kind == "t" else field
            except ValueError:
                continue
            if kind == "g" and (ckey, field) not in joined:
                # left (or ended) while the store was unreachable
                self._queue_release("", name, pid_from_str(field), True)
            elif kind == "t" and (ckey, field) not in mine and isinstance(name, str):
                cur = await self._fetch(item, name)
                ours = cur is not None and cur[0][0] == self.node.name
                if cur is not None and ours and self.node._lookup(cur[0]) is None:
                    self._queue_release(name, item, cur[0], False)
        await self._flush_releases()
        return await self.reregister("resync")
