"""`get_or_spawn` on the general path, in a task (`RedisBackend.spawn_general`):
placement by hash (the key's home node may be another one, asked with a remote
spawn), a factory whose ``init`` is async, or an outcome a task-free `SpawnAttempt`
(`claims`) leaves to it. Its steps are the attempt's: claim with a new pid, start
the process only once the claim is won, check the lease again before it counts
(fenced meanwhile: end it and give the key back)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from ..pid import Pid
from .claims import factory_name, home_node

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["spawn_general"]


async def spawn_general(
    self: RedisBackend,
    key: Hashable,
    factory: Any,
    args: tuple[Any, ...],
    table: str,
    placement: str,
    meta: dict[str, Any] | None,
    idle_timeout: float | None,
) -> tuple[Pid, bool]:
    """`get_or_spawn` on the general path, in a task: placement by hash (maybe on
    another node), an async ``init``, or an outcome a `SpawnAttempt` leaves to it."""
    node = self.node
    if placement == "hash":
        factory_name(factory)  # importable by name on every node, wherever home is
        home = home_node(key, self.cluster.live_nodes())
        if home != node.name:
            return await _at_home(self, home, key, factory, args, table, meta, idle_timeout)
    pid = self.runtime.new_pid()
    self.parked[pid] = ()
    try:
        holder = await self.claim(key, table, pid, meta)
        if holder is not None:
            return holder, False
        fences = self.cluster.fenced
        try:
            proc = await node.start_with_pid(pid, factory, args, idle_timeout, key=(table, key))
        except BaseException:
            self.releases.queue(table, key, pid, False)
            raise
    finally:
        self.unpark(pid)
    self.cluster.membership.check()  # past our lease deadline: fence first
    if self.cluster.fenced != fences:  # fenced during an async init: it must not live on
        self.runtime.end(pid, "fenced")
        self.releases.queue(table, key, pid, False)
        raise ClusterUnavailable(f"cannot start {key!r}: this node was fenced")
    self.adopt(table, key, proc, meta, "ended right after it started")
    return pid, True


async def _at_home(
    self: RedisBackend,
    home: str,
    key: Hashable,
    factory: Any,
    args: tuple[Any, ...],
    table: str,
    meta: dict[str, Any] | None,
    idle_timeout: float | None,
) -> tuple[Pid, bool]:
    """Ask `home` to get_or_spawn `key` (a remote spawn), and keep what it answers
    in the cache only if that is safe.

    Home answers from its own processes or the store, never from its cache (see
    `Cluster`), but the answer may still be older than our request: a third node's
    holder may come from a claim home had in flight before we asked, whose
    invalidation we may have heard already and would not hear again. So home's own
    process is cached (alive when home answered: its end, and the invalidation of
    its release, come after our request) unless an invalidation overtook the reply;
    a third node's is looked up in the store by us (cached if fresh, `fetch`).

    A pid we know has ended (we delivered its ``Down``) is not handed out while its
    release is on its way to the store: we ask again, every 5 ms for up to a second,
    as `RedisBackend.claim` waits; a key found free again is asked for again at once
    (3 times). `ClusterUnavailable` if this node was fenced meanwhile."""
    keys = self.keys
    cluster = self.cluster
    fences = cluster.fenced
    result: tuple[Pid, bool] | None = None
    free = dead = 0
    while True:
        gen = keys.gen
        result = await cluster.remote.spawn(home, key, factory, args, table, meta, idle_timeout)
        pid = result[0]
        if pid[0] != home:  # a third node's: ask the store ourselves
            found = await self.fetch(key, table)  # (None for a pid known dead)
            if found is not None:
                pid = found[0]
                if pid[0] == self.node.name:  # ours: the local view has the word
                    proc = self.local.holder(key, table)
                    found = None if proc is None else (proc.pid, None)
            if found is not None:
                result = (found[0], False)
            elif pid in keys.dead and dead < 200:
                dead += 1
                await asyncio.sleep(0.005)
                continue
            elif free < 3:
                free += 1
                continue
        elif pid in keys.dead and dead < 200:
            dead += 1  # ended since home answered (a Down came first): ask again
            await asyncio.sleep(0.005)
            continue
        elif gen == keys.gen:
            self._cache[(table, key)] = pid
        break
    cluster.membership.check()  # past our lease deadline: fence first
    if cluster.fenced != fences:
        raise ClusterUnavailable(f"cannot get_or_spawn {key!r}: this node was fenced")
    return result
