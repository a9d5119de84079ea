"""`get_or_spawn` on the general path, in a task (`RedisBackend.spawn_general`):
placement by hash (the key's home node may be another one, asked with a remote
spawn), a factory whose ``init`` is async, or an outcome a task-free `SpawnAttempt`
(`claims`) leaves to it. Its steps are the attempt's: claim with a new pid, start
the process only once the claim is won, check the lease again before it counts
(fenced meanwhile: end it and give the key back)."""

from __future__ import annotations

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
            gen = self.keys.gen
            result: tuple[Pid, bool] = await self.cluster.remote.spawn(
                home, key, factory, args, table, meta, idle_timeout
            )
            # cached only if it is home's own process (alive when home answered: its
            # end comes after our request, and so does its invalidation) and no
            # invalidation overtook the reply. A third node's pid is not: home may
            # have learned it before our request (a claim it had in flight), and an
            # invalidation we heard before asking would not come again
            if result[0][0] == home and gen == self.keys.gen:
                self._cache[(table, key)] = result[0]
            return result
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
