"""Claims: keys claimed in the store for pids, in batches (`ClaimBatcher`), and the
task-free `get_or_spawn` attempt built on them (`SpawnAttempt`).

A claim is one `scripts.CLAIM` script call for many keys: it refuses if the epoch
changed, if our own lease is gone (a fenced node cannot claim), or, for new claims,
during a grace period after a data loss; it treats an entry whose owner's lease
lapsed as free; and it publishes the change on the ``inval`` channel.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import importlib
import json
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from ..pid import Pid
from .codec import as_text, canon, pid_from_str
from .store import NotReplicated

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = [
    "CLAIM_BATCH",
    "CLAIM_CALLS",
    "Claim",
    "ClaimBatcher",
    "Refused",
    "SpawnAttempt",
    "factory_name",
    "home_node",
    "resolve_factory",
]

log = logging.getLogger("procreg.cluster")

CLAIM_BATCH = 512  # keys per claim script call
CLAIM_CALLS = 4  # claim script calls in flight at most (more wait their turn)


class Claim:
    """One key's claim, as `ClaimBatcher.queue` takes it: `triple` is what `CLAIM`
    takes for it (canonical table, canonical key, value); `answer(result, error)` is
    called once with the script's answer for it (subclasses say what it does). The
    claim itself is the queue's item: no tuple or bound method per key."""

    __slots__ = ("triple",)

    triple: tuple[str, str, str]

    def answer(self, result: Any, error: BaseException | None) -> None:
        raise NotImplementedError


class _Awaited(Claim):
    """A claim a coroutine awaits (`ClaimBatcher.claim`)."""

    __slots__ = ("fut",)

    def __init__(self, triple: tuple[str, str, str], fut: asyncio.Future[Any]) -> None:
        self.triple = triple
        self.fut = fut

    def answer(self, result: Any, error: BaseException | None) -> None:
        fut = self.fut
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


def home_node(key: Hashable, nodes: list[str]) -> str:
    """Rendezvous hashing: the node with the highest score for `key` (where
    ``placement="hash"`` starts it)."""
    ckey = canon(key).encode()

    def score(node: str) -> bytes:
        return hashlib.blake2b(node.encode() + b"\0" + ckey, digest_size=8).digest()

    return max(sorted(nodes), key=score)


def factory_name(factory: Any) -> str:
    """``module:qualname`` of a factory that every node can import by that name."""
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        try:
            if resolve_factory(f"{module}:{qualname}") is factory:
                return f"{module}:{qualname}"
        except (ImportError, AttributeError):
            pass
    raise TypeError(
        f"placement='hash' needs a factory importable by name on every node, got {factory!r} "
        "(define it at module level in an importable module)"
    )


def resolve_factory(name: str) -> Any:
    """The object `factory_name` named."""
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Refused(Exception):
    """The store refused a whole claim call: "epoch", "fenced" or "grace"."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class ClaimBatcher:
    """The claims of one node's `RedisBackend`, sent in batches."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.store = backend.store
        self.cluster = backend.cluster
        self.loop = self._loop = backend.runtime.loop
        # claims waiting for a script call, by mode ("new", "resync")
        self._pending: dict[str, list[Claim]] = {}
        self._scheduled = False
        self.in_flight = 0
        self.unreplicated = 0  # claims not granted: too few replicas confirmed them

    async def claim(self, mode: str, triple: tuple[str, str, str]) -> Any:
        """Claim one key (see `queue`) and wait for the answer."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.queue(mode, _Awaited(triple, fut))
        return await fut

    def queue(self, mode: str, claim: Claim) -> None:
        """Claim one key; ``claim.answer(result, error)`` is called with the script's
        answer for it. With no claim in flight it goes at once; claims made while others are
        in flight go together, one script call per loop turn (up to `CLAIM_BATCH`
        keys each), at most `CLAIM_CALLS` calls at a time: a burst (say, re-registering
        a million keys) neither exhausts the connection pool nor holds the server up
        for others, and every call answers well within the socket timeout."""
        pending = self._pending
        if not pending and not self.in_flight:
            self.in_flight += 1
            self.store.tasks.spawn(self._run(mode, [claim]), self._loop)
            return
        queue = pending.get(mode)
        if queue is None:
            queue = pending[mode] = []
        queue.append(claim)
        if not self._scheduled and self.in_flight < CLAIM_CALLS:
            self._scheduled = True
            self._loop.call_soon(self._send)

    def _schedule(self) -> None:
        if not self._scheduled and self.in_flight < CLAIM_CALLS:
            self._scheduled = True
            self._loop.call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        pending = self._pending
        for mode in list(pending):
            queue = pending[mode]
            while queue and self.in_flight < CLAIM_CALLS:
                chunk = queue[:CLAIM_BATCH]
                del queue[:CLAIM_BATCH]
                self.in_flight += 1
                self.store.tasks.spawn(self._run(mode, chunk), self._loop)
            if not queue:
                del pending[mode]

    async def _run(self, mode: str, chunk: list[Claim]) -> None:
        results: list[Any] | None = None
        error: BaseException | None = None
        try:
            results = await self.script(mode, [claim.triple for claim in chunk])
        except BaseException as exc:  # every caller in the chunk gets the failure
            error = exc
        finally:
            self.in_flight -= 1
            if self._pending:
                self._schedule()
        self.cluster.counters.claimed(len(chunk), results)  # (metrics)
        fatal: BaseException | None = None
        answers = results if results is not None else [None] * len(chunk)
        for claim, result in zip(chunk, answers, strict=True):  # every claim is answered
            try:
                claim.answer(result, error)
            except (KeyboardInterrupt, SystemExit) as exc:
                fatal = fatal or exc
            except BaseException:
                log.exception("handling a claim's answer failed")
        if fatal is not None:
            raise fatal
        if error is not None and not isinstance(error, Exception):
            raise error  # cancelled: the callers were told

    async def script(self, mode: str, triples: list[tuple[str, str, str]]) -> list[Any]:
        store = self.store
        args: list[Any] = [
            self.cluster.membership.epoch,
            self.cluster.creation,
            store.key("lease", ""),
            mode,
            store.key("inval"),
            store.key("t", ""),
        ]
        args += [part for triple in triples for part in triple]
        owned = self.backend.owned()
        result, acked, _ = await store.durable_script(
            "claim",
            [
                owned,
                store.key("epoch"),
                store.key("lease", self.backend.node.name),
                store.key("grace"),
                store.key("kw"),
                store.key("kev"),
            ],
            args,
        )
        if not isinstance(result, list):
            raise Refused(as_text(result))
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


class SpawnAttempt(Claim):
    """One `get_or_spawn` attempt without a task of its own (the common case: local
    placement, no async init): claim the key for a fresh pid; the claim's answer, in
    a callback, starts the process or names the holder, and settles each caller's
    future (`wait`). The rare outcomes (a grace period, a stale entry of our own)
    go on in a task, on the general path (`RedisBackend.spawn_general`).

    It is its own queue item (`Claim`), and keeps its first caller's future in a
    slot (more callers of the same key in a list made only for them): an attempt
    in flight holds as few objects as it can, since a burst keeps thousands in
    flight and every one of them is scanned by each young garbage collection."""

    __slots__ = (
        "args",
        "backend",
        "ckey",
        "ctx",
        "factory",
        "fences",
        "first",
        "gen",
        "idle_timeout",
        "key",
        "meta",
        "more",
        "pid",
        "table",
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
        self.first: asyncio.Future[tuple[Pid, bool]] | None = None
        self.more: list[asyncio.Future[tuple[Pid, bool]]] | None = None

    def wait(self) -> asyncio.Future[tuple[Pid, bool]]:
        """A future for one more caller."""
        fut: asyncio.Future[tuple[Pid, bool]] = self.backend.runtime.loop.create_future()
        if self.first is None:
            self.first = fut
        elif self.more is None:
            self.more = [fut]
        else:
            self.more.append(fut)
        return fut

    def claim(self) -> asyncio.Future[tuple[Pid, bool]]:
        """Queue the claim and return the first caller's future (raises at once if
        this node is being fenced)."""
        b = self.backend
        cluster = b.cluster
        self.pid = pid = b.runtime.new_pid()
        m = cluster.membership
        # `fenced_error`'s checks, its fast path inline (`Membership.check`'s own)
        if not (m.time() < m.deadline and pid[1] == m.creation):
            fenced = b.fenced_error(self.key, pid)
            if fenced is not None:
                raise fenced
        self.gen = b.keys.gen
        self.fences = cluster.fenced  # a fence while the claim is in flight voids it
        b.parked[pid] = ()  # (a list once something is parked: `RedisBackend.park`)
        # the process starts in the answer's callback, but under its caller's context
        # variables, as it would locally (request ids, tenants, tracing)
        self.ctx = contextvars.copy_context()
        meta = self.meta
        self.triple = (
            b.tkey(self.table)[1],
            self.ckey,
            f"{pid[0]}\t{pid[1]}\t{pid[2]}\t" + (json.dumps(meta) if meta else ""),
        )  # (`RedisBackend.triple`, inline)
        claims = b.claims
        claims.queue("new", self)
        self.first = fut = claims.loop.create_future()
        return fut

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
            if isinstance(error, Refused):
                if error.status == "grace":
                    self._general()
                    return
                error = ClusterUnavailable(f"cannot claim {key!r}: {error.status}")
            self._settle(None, error)
            return
        if result:  # held by another live process
            holder = pid_from_str(as_text(result))
            if holder in b.keys.dead:
                self._general()  # it ended: its owner's release is on its way
                return
            if holder[0] == b.node.name:
                if not b.runtime.alive(holder):
                    self._general()  # one of ours that ended: its release may be queued
                    return
            elif self.gen == b.keys.gen:
                b.keys.entries[(self.table, key)] = holder
            self._settle((holder, False), None)
            return
        pid = self.pid
        cluster = b.cluster
        m = cluster.membership
        if m.time() >= m.deadline:  # (`Membership.check`'s fast path, inline)
            m.check()  # past our lease deadline: fence first
        if cluster.fenced != self.fences:
            # won while our lease still held, but we were fenced since: the others may
            # have started the key again; give it back
            b.releases.queue(self.table, key, pid, False)
            self._settle(None, ClusterUnavailable(f"cannot claim {key!r}: this node was fenced"))
            return
        try:
            proc = self.ctx.run(b.node.start_now, pid, self.factory, self.args, self.idle_timeout)
        except BaseException:
            b.releases.queue(self.table, key, pid, False)
            raise  # settled by `answer`
        b.adopt(self.table, key, proc, self.meta, "ended right after it started")
        self._settle((pid, True), None)

    def _settle(self, outcome: tuple[Pid, bool] | None, error: BaseException | None) -> None:
        b = self.backend
        attempts = b.attempts
        key = (self.table, self.key)
        if attempts.get(key) is self:
            del attempts[key]
        parked = b.parked.pop(self.pid, None)
        if parked:
            b.deliver_parked(parked)
        fut = self.first
        if fut is not None:
            self.first = None
            if outcome is not None and error is None and not fut.done():
                fut.set_result(outcome)
            else:
                _settle_one(fut, outcome, error)
        more, self.more = self.more, None
        if more is not None:
            for fut in more:
                _settle_one(fut, outcome, error)

    def _general(self) -> None:
        b = self.backend
        task = b.store.tasks.spawn(
            b.spawn_general(
                self.key, self.factory, self.args, self.table, "local", self.meta, self.idle_timeout
            ),
            b.runtime.loop,
            context=self.ctx,  # the caller's, not the claim task's
        )
        task.add_done_callback(self._general_done)

    def _general_done(self, task: asyncio.Task[tuple[Pid, bool]]) -> None:
        if task.cancelled():
            self._settle(None, asyncio.CancelledError())
            return
        error = task.exception()
        self._settle(None if error is not None else task.result(), error)


def _settle_one(
    fut: asyncio.Future[tuple[Pid, bool]],
    outcome: tuple[Pid, bool] | None,
    error: BaseException | None,
) -> None:
    if fut.done():  # that caller was cancelled
        return
    if error is None:
        assert outcome is not None
        fut.set_result(outcome)
    elif isinstance(error, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(error)
