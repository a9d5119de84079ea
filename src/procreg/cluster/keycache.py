"""The lookup cache of one node's `RedisBackend`: other nodes' keys it has looked up,
and the remote pids it has learned are dead.

- An entry is dropped when an invalidation for its key arrives (``inval``
  channel), when its node goes down, or when the cache is cleared (a reconnect, a
  fence): whatever may have been missed; and when this node answers another node
  for its key (`forget`: a remote spawn is answered from the store).
- `gen` is bumped on every invalidation: a lookup that started before one (its
  answer may be stale) is not cached.
- `dead`: remote pids this node knows have ended (it delivered their `Down`, an exit
  signal, or a noproc), with when; no lookup hands them out, even before their
  owner's release reaches the store (causality: Down, then whereis, never the dead
  pid). They are forgotten after 2 x lease, by when the release surely has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from ..pid import Pid
from .codec import uncanon

__all__ = ["KeyCache"]


class KeyCache:
    """``(table, key) -> pid`` of other nodes' keys, and the dead pids not to hand
    out. `lease` is the cluster's membership lease, in seconds."""

    __slots__ = ("dead", "entries", "gen", "lease", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, lease: float) -> None:
        self.loop = loop
        self.lease = lease
        self.entries: dict[tuple[str, Hashable], Pid] = {}
        self.gen = 0  # bumped on every invalidation
        self.dead: dict[Pid, float] = {}  # pid -> loop time it was learned dead

    def invalidated(self, ctable: str, field: str) -> None:
        """A registry change on any node (from the ``inval`` channel): the canonical
        table and key (see `codec.canon`)."""
        self.gen += 1
        if not self.entries:
            return
        try:
            table = uncanon(ctable)
            key = uncanon(field)
        except (ValueError, IndexError):
            return
        if isinstance(table, str):
            self.entries.pop((table, key), None)

    def forget(self, table: str, key: Hashable) -> None:
        """Drop the entry of `key`, if any: the caller answers another node, which
        must get the store's word, not this node's cache (see `Cluster`'s remote
        spawn)."""
        self.entries.pop((table, key), None)

    def pid_ended(self, pid: Pid) -> None:
        """A remote process is known to have ended: lookups on this node never return
        it again (for 2 x lease: by then its owner's release has surely reached the
        store)."""
        now = self.loop.time()
        dead = self.dead
        horizon = now - 2 * self.lease
        while dead:  # oldest first (insertion order)
            first = next(iter(dead))
            if dead[first] >= horizon:
                break
            del dead[first]
        dead.pop(pid, None)
        dead[pid] = now  # (`RedisBackend.peek` drops a cache entry that names it)

    def pid_answered(self, pid: Pid) -> None:
        """A remote process answered a call: it is alive."""
        if self.dead:
            self.dead.pop(pid, None)

    def node_down(self, name: str) -> None:
        """Forget the entries of node `name`, which went down."""
        self.gen += 1
        entries = self.entries
        for k in [k for k, pid in entries.items() if pid[0] == name]:
            del entries[k]

    def clear(self) -> None:
        """Forget every entry (invalidations may have been missed)."""
        self.gen += 1
        self.entries.clear()
