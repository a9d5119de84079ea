"""The registry across nodes, kept in Redis (`RedisBackend`).

Each node keeps its own processes' registrations in a `LocalBackend` view of its own
(`RedisBackend.local`: so `entries`, exit cleanup and read-your-writes stay local and
synchronous) and mirrors them into the store:

- **Claims** (`claims`): one `scripts.CLAIM` script call for many keys, refused while
  this node is fenced or, for new claims, during a grace period after a data loss.
- **get_or_spawn** allocates the pid *first*, claims the key for it in one round
  trip, and starts the process only if the claim won; a losing caller gets the
  holder's pid and no duplicate ever runs its ``init``. Concurrent callers on one node
  share one attempt (`claims.SpawnAttempt`, or a task on the general path).
- **Lookups** of other nodes' keys go to the store (`scripts.LOOKUP`, which checks the
  owner's lease) and are cached (`keycache`).
- **Releases** (`releases`): the local view changes at once, the store at the end of
  the loop turn, in batches.
- **Groups** (`groups`), **key monitors** (`keywatch`) and **recovery** after a data
  loss or a reconnect (`recovery`) each have a module of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..backends import DEFAULT_TABLE, MISS, RegistryBackend, _Miss
from ..errors import AlreadyRegistered, ClusterUnavailable, NoProcess
from ..pid import Pid, Ref
from ..process import _Proc
from ..registry import LocalBackend, NotOwner, Published
from . import recovery
from .claims import ClaimBatcher, Refused, SpawnAttempt, home_node
from .codec import as_text, canon, pid_from_str, pid_str
from .groups import ClusterGroups
from .keycache import KeyCache
from .keywatch import KeyWatch
from .placement import spawn_general
from .releases import Releases
from .store import Store

if TYPE_CHECKING:
    from ..kernel import Kernel
    from . import Cluster

__all__ = ["RedisBackend", "home_node"]

log = logging.getLogger("procreg.cluster")


class RedisBackend(RegistryBackend):
    """`RegistryBackend` over the cluster store, around a `LocalBackend` view of this
    node's own entries (`local`)."""

    def __init__(self, node: Kernel, cluster: Cluster) -> None:
        super().__init__(node)
        self.runtime = node.runtime
        self.cluster = cluster
        self._membership = cluster.membership
        self.store: Store = cluster.store
        self.local: LocalBackend = LocalBackend(node)
        local = self.local
        self.keys: KeyCache = KeyCache(self.runtime.loop, cluster.lease)
        self._cache = self.keys.entries  # (the same dicts, for `peek`)
        self._dead = self.keys.dead
        # (no bound methods kept in attributes on the hot paths: a method found in the
        # instance dict is not specialized by the interpreter, a class one is)
        # get_or_spawn attempts under way: joined by later callers of the same key
        self.attempts: dict[tuple[str, Hashable], SpawnAttempt | asyncio.Task[tuple[Pid, bool]]]
        self.attempts = {}
        self.conflicts = 0
        self.unpublished: list[str] = []  # invalidations of conflicts, to publish (`recovery`)
        # tables of node-local names (`register_now`: a node's supervisors): kept in
        # this node's view only, never claimed in the store, never fenced
        self._node_local: set[str] = set()
        # pids allocated for a claim whose process does not exist yet: what other
        # nodes send them meanwhile (they may have found the pid in the store before
        # our claim's answer came back) waits here, and is delivered once the process
        # has started, or answered noproc if it never does (an empty tuple until
        # something waits: no list per claim)
        self.parked: dict[Pid, list[tuple[str, int, Any]] | tuple[()]] = {}
        self._tkeys: dict[str, tuple[str, str]] = {}
        self.claims: ClaimBatcher = ClaimBatcher(self)
        self.releases = Releases(self)
        self.groups_ = ClusterGroups(self)
        self.keywatch = KeyWatch(self)
        local.listener = self

    @property
    def unreplicated(self) -> int:
        """Claims not granted: too few replicas confirmed them (Redis ``WAIT``)."""
        return self.claims.unreplicated

    # -- names in the store -----------------------------------------------------------
    def tkey(self, table: str) -> tuple[str, str]:
        """``(hash key, canonical name)`` of a table in the store."""
        found = self._tkeys.get(table)
        if found is None:
            ctable = canon(table)
            found = self._tkeys[table] = (self.store.key("t", ctable), ctable)
        return found

    def owned(self) -> str:
        """The store key of the set of entries this node incarnation owns."""
        return self.store.key("owned", self.node.name, str(self.cluster.creation))

    # -- lookups ------------------------------------------------------------------------
    def peek(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | _Miss | None:
        m = self._membership
        if m.time() >= m.deadline and not m.check():
            return None  # fenced (or past our lease deadline): we hand out nothing
        proc = self.local.holder(key, table)
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

    async def fetch(self, key: Hashable, table: str) -> tuple[Pid, Any] | None:
        """``(pid, metadata)`` of `key` from the store (cached if another node's), or
        None."""
        tkey, _ = self.tkey(table)
        keys = self.keys
        gen = keys.gen
        self.cluster.counters.store_lookups += 1  # (metrics)
        value = await self.store.batched_script(
            "lookup", [tkey], [canon(key), self.store.key("lease", "")]
        )
        if value is None:
            return None
        text = as_text(value)
        pid = pid_from_str(text)
        if pid in keys.dead:
            return None  # its owner's release has not reached the store yet
        meta_text = text.split("\t", 3)[3] if text.count("\t") >= 3 else ""
        if gen == keys.gen and pid[0] != self.node.name:
            self._cache[(table, key)] = pid
        return pid, (json.loads(meta_text) if meta_text else None)

    async def whereis(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        pid = self.peek(key, table)
        if not isinstance(pid, _Miss):
            return pid
        found = await self.fetch(key, table)
        if found is None or found[0][0] == self.node.name or not self.cluster.membership.check():
            return None  # our own keys are all in the local view
        return found[0]

    async def lookup(
        self, key: Hashable, table: str = DEFAULT_TABLE
    ) -> tuple[Pid, dict[str, Any] | None] | None:
        if not self.cluster.membership.check():
            return None  # fenced: we hand out nothing
        local = await self.local.lookup(key, table)
        if local is not None or table in self._node_local:
            return local
        found = await self.fetch(key, table)
        if found is None or found[0][0] == self.node.name or not self.cluster.membership.check():
            return None
        return found

    def entries(self, table: str = DEFAULT_TABLE) -> list[tuple[Hashable, Pid]]:
        return self.local.entries(table)

    def tables(self) -> list[str]:
        return self.local.tables()

    def count(self, table: str = DEFAULT_TABLE) -> int:
        return self.local.count(table)

    # -- claims ------------------------------------------------------------------------
    async def claim(
        self, key: Hashable, table: str, pid: Pid, meta: dict[str, Any] | None, mode: str = "new"
    ) -> Pid | None:
        """Claim `key` for `pid`; None if it won, else the live holder's pid."""
        fenced = self.fenced_error(key, pid)
        if fenced is not None:
            raise fenced
        fences = self.cluster.fenced  # a fence while the claim is in flight voids it
        triple = self.triple(table, canon(key), pid, meta)
        keys = self.keys
        stale_tries = 0
        while True:
            gen = keys.gen
            try:
                result = await self.claims.claim(mode, triple)
            except Refused as refused:
                if refused.status == "grace":
                    await asyncio.sleep(0.05)
                    continue
                raise ClusterUnavailable(f"cannot claim {key!r}: {refused.status}") from None
            if not result:
                self.cluster.membership.check()  # past our lease deadline: fence first
                if self.cluster.fenced != fences:
                    # won while our lease still held, but we were fenced since: the
                    # others may have started the key again; give it back
                    self.releases.queue(table, key, pid, False)
                    raise ClusterUnavailable(f"cannot claim {key!r}: this node was fenced")
                return None
            holder = pid_from_str(as_text(result))
            if holder in keys.dead and stale_tries < 200:
                # we know it ended (a Down came first): its owner's release is on its
                # way to the store; do not hand out a dead pid, wait for it
                stale_tries += 1
                await asyncio.sleep(0.005)
                continue
            if holder[0] == self.node.name:
                if not self.runtime.alive(holder) and stale_tries < 3:
                    # one of ours that ended: its release may still be queued
                    stale_tries += 1
                    self.releases.queue(table, key, holder, False)
                    await self.releases.flush()
                    continue
            elif gen == keys.gen:
                self._cache[(table, key)] = holder
            return holder

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
        proc = self.node.local_process(pid)
        if proc is None or not self.runtime.alive(pid):
            raise NoProcess(f"cannot register {key!r}: {pid!r} is not alive")
        holder = self.local.holder(key, table)
        if holder is not None and holder is not proc:
            raise AlreadyRegistered(key, holder.pid)
        other = await self.claim(key, table, pid, meta)
        if other is not None:
            raise AlreadyRegistered(key, other)
        self.adopt(table, key, proc, meta, f"ended while registering {key!r}")

    async def unregister(
        self, key: Hashable, table: str = DEFAULT_TABLE, pid: Pid | None = None
    ) -> bool:
        # our own entry, even if its process is exiting (an async `terminate` that
        # unregisters its key), as on the embedded node
        holder = self.local.held(key, table)
        if holder is not None:
            removed = await self.local.unregister(key, table, pid)
            if table in self._node_local:
                return removed
            self.releases.queue(table, key, holder.pid, False, unregistered=True)
            await self.releases.flush()
            return removed
        if table in self._node_local:
            return False
        found = await self.fetch(key, table)
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
        flight = self.attempts.get((table, key))
        if flight is not None:
            if isinstance(flight, SpawnAttempt):
                found, _ = await flight.wait()
            else:
                found, _ = await asyncio.shield(flight)
            return found, False
        node = self.node
        if placement == "local" and node.starts_now(factory) and not self.cluster.fencing:
            # the common case, without a task: the claim's answer starts the process
            # (or fails) in a callback, so a cancelled caller orphans nothing
            return await self._attempt(key, ckey, table, factory, args, meta, idle_timeout)
        task = self.runtime.loop.create_task(
            self.spawn_general(key, factory, args, table, placement, meta, idle_timeout)
        )
        self.attempts[(table, key)] = task
        task.add_done_callback(partial(self._attempt_done, (table, key)))
        return await asyncio.shield(task)

    def get_or_spawn_missed(
        self,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str = DEFAULT_TABLE,
        placement: str = "local",
        meta: dict[str, Any] | None = None,
        idle_timeout: float | None = None,
    ) -> Awaitable[tuple[Pid, bool]]:
        """`get_or_spawn` right after a `peek` that missed (`RegistryBackend`): the
        common case (local placement, a factory that starts at once, no attempt for
        the key under way, not fencing) answers with the new attempt's future, with
        no coroutine and no second `peek`; every other case is `get_or_spawn`.

        Unlike `get_or_spawn`, the common case raises `ClusterUnavailable` at the
        call, not when awaited, if the node's lease may have lapsed (it is being
        fenced); the future then fails as `get_or_spawn` would."""
        if (
            placement == "local"
            and not self.cluster.fencing
            and (table, key) not in self.attempts
            and self.node.starts_now(factory)
        ):
            return self._attempt(key, canon(key), table, factory, args, meta, idle_timeout)
        return self.get_or_spawn(key, factory, args, table, placement, meta, idle_timeout)

    def _attempt(
        self,
        key: Hashable,
        ckey: str,
        table: str,
        factory: Any,
        args: tuple[Any, ...],
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
    ) -> asyncio.Future[tuple[Pid, bool]]:
        """Start a task-free attempt (`SpawnAttempt`) for `key` and return its first
        caller's future; `ClusterUnavailable` at once if the node is being fenced."""
        attempt = SpawnAttempt(self, key, ckey, table, factory, args, meta, idle_timeout)
        first = attempt.claim()
        self.attempts[(table, key)] = attempt
        return first

    def _attempt_done(
        self, key: tuple[str, Hashable], task: asyncio.Task[tuple[Pid, bool]]
    ) -> None:
        if self.attempts.get(key) is task:
            del self.attempts[key]

    spawn_general = spawn_general  # (`placement`)

    def adopt(
        self, table: str, key: Hashable, proc: _Proc, meta: dict[str, Any] | None, why: str
    ) -> None:
        """Add a process whose claim on `key` won to the local view; if it has ended
        meanwhile, give the key back and raise `NoProcess` (`why` it is not alive)."""
        if not self.runtime.alive(proc.pid):
            self.releases.queue(table, key, proc.pid, False)
            raise NoProcess(f"{proc.pid!r} {why}")
        self.local.insert(table, key, proc, meta)

    def triple(
        self, table: str, ckey: str, pid: Pid, meta: dict[str, Any] | None
    ) -> tuple[str, str, str]:
        """What `CLAIM` takes for one key: canonical table, canonical key, value."""
        return (
            self.tkey(table)[1],
            ckey,
            pid_str(pid) + "\t" + (json.dumps(meta) if meta else ""),
        )

    def fenced_error(self, key: Hashable, pid: Pid) -> ClusterUnavailable | None:
        """Why `pid` must not claim `key` now, if it must not: a pid of an incarnation
        the cluster has declared dead must never be claimed."""
        if not self.cluster.membership.check() or pid[1] != self.cluster.creation:
            return ClusterUnavailable(
                f"cannot claim {key!r} for {pid!r}: this node fenced itself (its lease may "
                "have lapsed) and has not rejoined the cluster yet"
            )
        return None

    # -- ends ---------------------------------------------------------------------------
    def process_ended(self, proc: _Proc) -> None:
        self.local.process_ended(proc)  # (which tells `ended` and `left`)

    # -- what the local view tells (`registry.ViewListener`) -----------------------------
    def ended(self, table: str, key: Hashable, pid: Pid) -> None:
        """An entry of ours went with its process: release it in the store."""
        if table not in self._node_local:
            self.releases.queue(table, key, pid, False)

    def left(self, group: Hashable, pid: Pid) -> None:
        """A member of ours ended: take it out of the group in the store, and tell
        the group's watchers (`groupview`; told before the local view drops it)."""
        self.releases.queue("", group, pid, True)
        self.groups_.left(group, pid, present=True)

    def key_changed(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        self.keywatch.key_changed(table, key, event, pid)

    def key_unwatched(self, entry: tuple[str, Hashable]) -> None:
        self.keywatch.key_unwatched(entry)

    # -- key monitors -------------------------------------------------------------------
    async def monitor_key(self, key: Hashable, table: str, watcher: Pid) -> Ref:
        canon(key)  # a key that cannot cross the cluster: TypeError before anything
        self.tkey(table)
        ref = await self.local.monitor_key(key, table, watcher)
        try:
            await self.keywatch.watch(table, key)
        except BaseException:
            self.demonitor_key(ref, watcher)
            raise
        return ref

    def demonitor_key(self, ref: Ref, watcher: Pid) -> bool:
        return self.local.demonitor_key(ref, watcher)  # (the view tells `keywatch`)

    # -- groups --------------------------------------------------------------------------
    async def join(self, group: Hashable, pid: Pid) -> bool:
        return await self.groups_.join(group, pid)

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        return await self.groups_.leave(group, pid)

    async def members(self, group: Hashable) -> list[Pid]:
        return await self.groups_.members(group)

    async def publish(self, group: Hashable, msg: Any) -> Published:
        return await self.groups_.publish(group, msg)

    def groups(self) -> list[Hashable]:
        return self.local.groups()

    def group_size(self, group: Hashable) -> int:
        return self.local.group_size(group)

    # -- the cache, parked items ---------------------------------------------
    def clear_cache(self) -> None:
        """Forget every cached entry and group view (invalidations and view updates
        may have been missed)."""
        self.keys.clear()
        self.groups_.views.clear()

    def park(self, sender: str, creation: int, item: Any, pid: Pid) -> bool:
        """Keep an item for one of our pids whose claim is in flight (True), to
        deliver once its process has started (`unpark`)."""
        parked = self.parked.get(pid)
        if parked is None:
            return False
        if not isinstance(parked, list):
            parked = self.parked[pid] = []
        parked.append((sender, creation, item))
        return True

    def unpark(self, pid: Pid) -> None:
        """The claim for `pid` settled: deliver what waited for it, in order (to the
        process, or answered noproc if it never started)."""
        parked = self.parked.pop(pid, None)
        if parked:
            self.deliver_parked(parked)

    def deliver_parked(self, parked: list[tuple[str, int, Any]] | tuple[()]) -> None:
        """Deliver items `unpark` took, in order."""
        deliver = self.cluster.remote.deliver
        for sender, creation, item in parked:
            deliver(sender, creation, item)

    # -- node-local names and recovery ----------------------------------------------------
    def register_now(
        self,
        key: Hashable,
        proc: _Proc,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """A node-local name (a node's supervisors): this node's view only."""
        self._node_local.add(table)
        self.local.register_now(key, proc, table, meta)

    def local_entries(self) -> list[tuple[str, Hashable, _Proc]]:
        """Every (table, key, process) this node holds in the store (node-local
        names left out)."""
        local = self._node_local
        return [(t, k, p) for t, k, p in self.local.registrations() if t not in local]

    def local_members(self) -> list[_Proc]:
        """The processes of this node that are members of a group."""
        return [p for _, _, p in self.local.memberships()]

    async def reregister(self, mode: str) -> int:
        """See `recovery.reregister`."""
        return await recovery.reregister(self, mode)

    async def reconcile(self) -> int:
        """See `recovery.reconcile`."""
        return await recovery.reconcile(self)
