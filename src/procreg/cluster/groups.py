"""Groups across nodes: each node keeps its own members in its local view and adds
them to the store's set of the group (``g:<group>``) and to its owned set (so that a
reconnect can reconcile them); `publish` reads the live members once and sends one
transport item per node."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..pid import Pid
from ..registry import Published
from .codec import as_text, canon, pid_from_str, pid_str

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["SEP", "ClusterGroups"]

SEP = "\x1f"  # between the fields of an owned-set member


class ClusterGroups:
    """The group operations of one `RedisBackend` (its `RegistryBackend` methods
    ``join``, ``leave``, ``members`` and ``publish`` delegate here)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.store = backend.store
        self.local = backend.local

    async def join(self, group: Hashable, pid: Pid) -> bool:
        """See `RegistryBackend.join`; `pid` must be of this node (`ValueError`)."""
        canon(group)
        if pid[0] != self.backend.node.name:
            raise ValueError(f"join {pid!r} to a group on its own node ({pid[0]!r})")
        added = await self.local.join(group, pid)
        if added:
            try:
                await self.record(group, pid)
            except BaseException:
                await self.local.leave(group, pid)
                raise
        return added

    async def record(self, group: Hashable, pid: Pid) -> None:
        """Add `pid` to the store's set of `group` and to this node's owned set."""
        store = self.store
        cgroup = canon(group)
        member = pid_str(pid)
        key1, key2 = store.key("g", cgroup), self.backend.owned()
        member2 = f"g{SEP}{cgroup}{SEP}{member}"

        async def run(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.sadd(key1, member)
            pipe.sadd(key2, member2)
            await pipe.execute()

        await store.run(run)

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        """See `RegistryBackend.leave` (returns once the store has it)."""
        canon(group)
        left = await self.local.leave(group, pid)
        if left:
            releases = self.backend.releases
            releases.queue("", group, pid, True)
            await releases.flush()
        return left

    async def members(self, group: Hashable) -> list[Pid]:
        """See `RegistryBackend.members`: the live members, from the store."""
        store = self.store
        raw = await store.script(
            "members", [store.key("g", canon(group))], [store.key("lease", "")]
        )
        # not a member that ended here, or whose end we heard of, while its release
        # is still on its way to the store (a process leaves its groups when it ends)
        backend = self.backend
        me, alive, dead = backend.node.name, backend.runtime.alive, backend.keys.dead
        pids = (pid_from_str(as_text(m)) for m in raw)
        return sorted(p for p in pids if not (p[0] == me and not alive(p)) and p not in dead)

    async def publish(self, group: Hashable, msg: Any) -> Published:
        """See `RegistryBackend.publish`."""
        backend = self.backend
        pids = await self.members(group)
        by_node: dict[str, list[Pid]] = {}
        for pid in pids:
            by_node.setdefault(pid[0], []).append(pid)
        reached = 0
        missed = 0  # local members the message could not be queued to
        me = backend.node.name
        deliver = backend.runtime.deliver
        for name, members in by_node.items():
            if name == me:
                for pid in members:
                    if deliver(pid, msg, "send"):
                        reached += 1
                    else:  # mailbox full, ending, or already gone
                        missed += 1
            else:
                backend.cluster.remote.group_send(name, members, msg)
                reached += len(members)
        return Published(reached, missed)
