"""Groups across nodes: each node keeps its own members in its local view and adds
them to the store's set of the group (``g:<group>``) and to its owned set (so that a
reconnect can reconcile them); `publish` sends one transport item to each node of its
view of the group (`groupview`: loaded from the store once, kept current by the
members' nodes), with no store round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..errors import CallTimeout, ClusterUnavailable, NodeDown
from ..pid import Pid
from ..registry import Published
from .codec import as_text, canon, pack_item, pid_from_str, pid_str
from .groupview import SEP, GroupViews, watcher_node
from .items import GPUB, GVIEW

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["SEP", "ClusterGroups"]


class ClusterGroups:
    """The group operations of one `RedisBackend` (its `RegistryBackend` methods
    ``join``, ``leave``, ``members`` and ``publish`` delegate here)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.store = backend.store
        self.local = backend.local
        self.views = GroupViews(backend)
        # the watchers of each group we have members of, as the store last told us
        # (leaves and ends update their counts; see `groupview`)
        self.watchers: dict[str, list[str]] = {}
        # groups whose watchers all route to this node: a join here confirmed it, and
        # we have had members ever since (a watcher drops us only once we have none)
        self.routed: set[str] = set()

    async def join(self, group: Hashable, pid: Pid) -> bool:
        """See `RegistryBackend.join`; `pid` must be of this node (`ValueError`)."""
        canon(group)
        if pid[0] != self.backend.node.name:
            raise ValueError(f"join {pid!r} to a group on its own node ({pid[0]!r})")
        added = await self.local.join(group, pid)
        if added:
            cgroup = canon(group)
            try:
                watchers, lost = await self.record(group, pid)
                if lost:
                    # the store lost data (the watcher sets too) and a node may not
                    # have noticed yet (its old view may lack us): every live node
                    # must route to this node before join returns
                    live = self.backend.cluster.remote.live
                    watchers = [*watchers, *(f"{n}\t{c}" for n, c in live.items())]
                    await self.confirm(cgroup, watchers, [pid])
                elif cgroup in self.routed:
                    self.notify(cgroup, watchers, [pid], [])  # counts only
                else:
                    # every watcher must route to this node before join returns
                    await self.confirm(cgroup, watchers, [pid])
                    if self.local.group_size(group):
                        self.routed.add(cgroup)
            except BaseException:
                await self.local.leave(group, pid)
                raise
        return added

    async def record(self, group: Hashable, pid: Pid) -> tuple[list[str], bool]:
        """Add `pid` to the store's set of `group` and to this node's owned set;
        returns the group's watchers (``node\tcreation``), read after the add, and
        whether the store may have lost data that no node has recovered from yet
        (our lease does not hold our creation, or a grace period is on: the watcher
        sets may be gone, and another node may not have noticed)."""
        store = self.store
        cgroup = canon(group)
        member = pid_str(pid)
        key1, key2 = store.key("g", cgroup), self.backend.owned()
        key3 = self.views.watcher_key(cgroup)
        member2 = f"g{SEP}{cgroup}{SEP}{member}"
        cluster = self.backend.cluster
        lease, grace = cluster.membership.lease_key(self.backend.node.name), store.key("grace")

        async def run(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.sadd(key1, member)
            pipe.sadd(key2, member2)
            pipe.smembers(key3)  # after the add, on the same connection
            pipe.get(lease)
            pipe.exists(grace)
            answers: list[Any] = await pipe.execute()
            return answers

        answers = await store.run(run)
        watchers = sorted(as_text(w) for w in answers[2])
        self.watchers[cgroup] = watchers
        held = answers[3] is not None and as_text(answers[3]) == str(cluster.creation)
        return watchers, not held or bool(answers[4])

    def _targets(self, watchers: list[str]) -> dict[str, int]:
        """The incarnations among `watchers` (``node\tcreation``) that may be live, but
        ours: node -> creation (the newest listed)."""
        remote = self.backend.cluster.remote
        me = self.backend.node.name
        nodes: dict[str, int] = {}
        for watcher in watchers:
            found = watcher_node(watcher)
            if found is None or found[0] == me:
                continue
            name, creation = found
            if creation > nodes.get(name, -1) and remote.reachable(Pid(name, creation, 0)):
                nodes[name] = creation
        return nodes

    def notify(
        self, cgroup: str, watchers: list[str], added: list[Pid], removed: list[Pid]
    ) -> None:
        """Send the members `added` and `removed` here to the group's watchers (they
        update their counts; no answer is awaited)."""
        enqueue = self.backend.cluster.remote.transport.enqueue
        item = pack_item((GVIEW, 0, cgroup, [(*p,) for p in added], [(*p,) for p in removed]))
        for name in self._targets(watchers):
            enqueue(name, item)

    async def confirm(self, cgroup: str, watchers: list[str], added: list[Pid]) -> None:
        """Send the members `added` here to the group's watchers and return once every
        one has applied them. `ClusterUnavailable` if one could not be told while it
        may still hold a view (our frames to it were lost in a store outage, or it did
        not answer within 2 x lease)."""
        backend = self.backend
        remote = backend.cluster.remote
        nodes = self._targets(watchers)
        if not nodes:
            return
        store = self.store
        failures = store.failures
        timeout = 2 * backend.cluster.lease
        adds = [(*p,) for p in added]
        results = await asyncio.gather(
            *(
                remote.request(n, c, lambda call_id: (GVIEW, call_id, cgroup, adds, []), timeout)
                for n, c in nodes.items()
            ),
            return_exceptions=True,
        )
        for name, result in zip(nodes, results, strict=True):
            if result is None:
                continue
            if isinstance(result, NodeDown) and store.up and store.failures == failures:
                # it went down, or our frames reached no subscriber of it: either way
                # its views are gone (a node that re-subscribes drops them)
                continue
            if isinstance(result, (NodeDown, CallTimeout, ClusterUnavailable)):
                raise ClusterUnavailable(
                    f"could not tell node {name!r} that a member joined group {cgroup}: {result!r}"
                ) from result
            if isinstance(result, BaseException):
                raise result

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        """See `RegistryBackend.leave` (returns once the store has it)."""
        canon(group)
        left = await self.local.leave(group, pid)
        if left:
            releases = self.backend.releases
            releases.queue("", group, pid, True)
            await releases.flush()
            self.left(group, pid)
        return left

    def left(self, group: Hashable, pid: Pid, present: bool = False) -> None:
        """`pid` left `group` (or ended; `present`: the local view still lists it):
        the watchers we know update their counts."""
        cgroup = canon(group)
        empty = self.local.group_size(group) <= (1 if present else 0)
        if empty:
            self.routed.discard(cgroup)
        watchers = self.watchers.get(cgroup)
        if watchers:
            if empty:
                del self.watchers[cgroup]
            self.notify(cgroup, watchers, [], [pid])

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
        """See `RegistryBackend.publish`: the members here at once, one item to each
        other node in this node's view of the group (loaded from the store the first
        time), counted as reached once handed to the transport."""
        backend = self.backend
        cgroup = canon(group)
        if not self.store.up:
            raise ClusterUnavailable(
                f"cannot publish to {group!r}: the cluster store is unreachable"
            )
        views = self.views
        view = views.views.get(cgroup)
        if view is None:
            view = await views.view(group, cgroup)
        else:
            views.used.add(cgroup)  # (kept by the next sweep)
        published = self.local.publish_now(group, msg)
        if not view:
            return published
        reached = published.reached
        enqueue = backend.cluster.remote.transport.enqueue
        item = pack_item((GPUB, cgroup, group, msg))  # delivered to its members there
        dead = backend.keys.dead  # (members whose end we heard of are not counted)
        # every node of the view, even one our membership poll has not seen yet (a
        # node that goes down leaves the views)
        for name, members in view.items():
            enqueue(name, item)
            reached += sum(1 for p in members if p not in dead) if dead else len(members)
        return Published(reached, published.missed)

    def deliver(self, sender: str, group: Any, msg: Any) -> bool:
        """A ``GPUB`` from `sender`: `msg` to our members of `group`; False if we have
        none (the sender then drops us from its view)."""
        if not self.local.group_size(group):
            return False
        self.local.publish_now(group, msg)
        return True
