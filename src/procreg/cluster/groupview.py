"""Views of group memberships, so that `publish` needs no store round trip.

A node that publishes to a group keeps a *view* of it: for every other node that
has members, the set of those members. The first `publish` to a group loads the view
from the store (the live members of ``g:<group>``) after recording this node as a
*watcher* of the group (``gw:<group>``, a set of ``node\\tcreation\\tserial``); from
then on a publish sends one ``GPUB`` item to each node in the view, and the receiving
node delivers the message to the members it has *when the item arrives* (its own
local view is exact). The view is kept current by the members' nodes, which send
``GVIEW`` items (members added, members removed) to the group's watchers:

- a **join** reads the watchers in the same round trip as it records the member
  (``SADD g:<group>``, then ``SMEMBERS gw:<group>`` on one connection). The first
  member of a group on a node waits until every watcher has applied it
  (acknowledged), so **a member whose `join` returned before `publish` was called,
  on any node, is reached** (while it is a member and the nodes stay connected):
  either the publishing node watched the group before that join (it got the update
  before the join returned) or it loaded the view after (the member was in the store).
  Later members of a node already in the views only update the counts, and are not
  waited for.
- **leaves and ends** update the counts of the watchers the node knows (fire and
  forget); a node is dropped from a view only when it says it has no member left
  (``GNONE``, its answer to a ``GPUB`` it could deliver to nobody), when it goes
  down, or when the view is dropped. A stale view costs a frame, never a lost
  member.
- a view is **dropped** (loaded again at the next publish) whenever updates may have
  been missed: a lost subscription, a store outage, a fence, a data loss, a peer's
  ``RESET``; and when it is **idle**: a view not published to between two sweeps
  (`VIEW_IDLE` seconds apart) is dropped and this node leaves the group's watchers,
  so a node holds views only of the groups it published to in the last
  2 x `VIEW_IDLE` seconds, and members' nodes stop sending it updates.

Each load records a watcher entry of its own (``node\tcreation\tserial``), and a
dropped view's entry is taken out of ``gw:<group>`` by a later sweep (again at each
sweep until the store confirms it): a removal that reaches the store late, even
after a new load of the same group, can only remove its own entry, never the new
one, so the rule above needs no ordering between the two.

`Published` counts a remote node's members from the view: exact for joins and
explicit leaves that returned, possibly stale by one frame for members that just
ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..pid import Pid
from .codec import as_text, pid_from_str

SEP = "\x1f"  # between the fields of an owned-set member
VIEW_IDLE = 120.0  # seconds between sweeps: a view unused since the last one is dropped
UNWATCH_BATCH = 1_000  # dropped views' watcher entries taken out per pipeline

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["SEP", "VIEW_IDLE", "GroupViews", "watcher_node"]

View = dict[str, set[Pid]]  # node -> its members of the group (not ours)


def watcher_node(entry: str) -> tuple[str, int] | None:
    """The node and creation of a watcher entry (``node\tcreation[\tserial]``), or
    None if it is not one."""
    name, _, rest = entry.partition("\t")
    text = rest.partition("\t")[0]
    return (name, int(text)) if text.isdigit() else None


class GroupViews:
    """The group views of one node (`RedisBackend.views`)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.store = backend.store
        self.views: dict[str, View] = {}  # canonical group -> view
        # loads under way: canonical group -> (future of the view, updates meanwhile)
        self.loading: dict[str, tuple[asyncio.Future[View], list[tuple[str, Any, Any]]]] = {}
        self.gen = 0  # bumped by `clear`: a load that spans it is used once, not kept
        self.loads = 0  # views loaded from the store (for tests and stats)
        self.idle = VIEW_IDLE  # seconds between sweeps (see the module's docstring)
        self.used: set[str] = set()  # groups published to since the last sweep
        self.entries: dict[str, str] = {}  # canonical group -> its view's watcher entry
        self.stale: list[tuple[str, str]] = []  # (group, entry) to leave ``gw`` sets
        self.serial = 0  # of the watcher entries this incarnation recorded
        self._sweeper: asyncio.TimerHandle | None = None
        self._unwatching: asyncio.Task[None] | None = None
        self.closed = False  # the node left: no more sweeps

    def watcher_key(self, cgroup: str) -> str:
        return self.store.key("gw", cgroup)

    async def view(self, group: Hashable, cgroup: str) -> View:
        """The view of `group`, loaded from the store if this node has none."""
        found = self.views.get(cgroup)
        if found is not None:
            return found
        loading = self.loading.get(cgroup)
        if loading is not None:
            try:
                return await asyncio.shield(loading[0])
            except asyncio.CancelledError:
                if not loading[0].cancelled():
                    raise  # we were cancelled
                return await self.view(group, cgroup)  # its loader was: load it again
        fut: asyncio.Future[View] = self.backend.runtime.loop.create_future()
        updates: list[tuple[str, Any, Any]] = []
        self.loading[cgroup] = (fut, updates)
        gen = self.gen
        self.serial += 1
        entry = f"{self.backend.node.name}\t{self.backend.cluster.creation}\t{self.serial}"
        kept = False
        try:
            view = await self._load(cgroup, entry)
            for op, node, pids in updates:  # what arrived while the load was in flight
                self._apply(view, op, node, pids)
            if gen == self.gen:
                self.views[cgroup] = view
                self.entries[cgroup] = entry
                self.used.add(cgroup)
                kept = True
            self.loads += 1
            fut.set_result(view)
            return view
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()  # (waiters, if any, load it themselves)
            else:
                fut.set_exception(exc)
                fut.exception()  # (retrieved: waiters, if any, get it too)
            raise
        finally:
            self.loading.pop(cgroup, None)
            if not kept:  # (recorded, or perhaps recorded: taken out by a sweep)
                self.stale.append((cgroup, entry))
            self._arm()

    async def _load(self, cgroup: str, watcher: str) -> View:
        """Record this node as a watcher of the group (entry `watcher`), then read its
        live members (in that order: a join that misses us as a watcher is in what we
        read)."""
        store = self.store
        me = self.backend.node.name
        key = self.watcher_key(cgroup)
        # in our owned set too, so that the purge of this incarnation takes us out
        # of the watcher set (a dead watcher would otherwise stay in it for good)
        owned, entry = self.backend.owned(), f"v{SEP}{cgroup}{SEP}{watcher}"

        async def record(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.sadd(key, watcher)
            pipe.sadd(owned, entry)
            await pipe.execute()

        await store.run(record)
        raw = await store.script("members", [store.key("g", cgroup)], [store.key("lease", "")])
        view: View = {}
        for m in raw:
            pid = pid_from_str(as_text(m))
            if pid[0] != me:
                view.setdefault(pid[0], set()).add(pid)
        return view

    # -- updates from the members' nodes (in the transport's I/O callback) ------------
    def update(self, node: str, cgroup: str, added: list[Pid], removed: list[Pid]) -> None:
        """A ``GVIEW`` from `node`: members added and removed there."""
        self._route(cgroup, "update", node, (added, removed))

    def none(self, node: str, cgroup: str) -> None:
        """A ``GNONE`` from `node`: it has no member of the group any more."""
        self._route(cgroup, "none", node, None)

    def _route(self, cgroup: str, op: str, node: str, pids: Any) -> None:
        view = self.views.get(cgroup)
        if view is not None:
            self._apply(view, op, node, pids)
        loading = self.loading.get(cgroup)
        if loading is not None:
            loading[1].append((op, node, pids))

    @staticmethod
    def _apply(view: View, op: str, node: str, pids: Any) -> None:
        if op == "none":
            view.pop(node, None)
            return
        if op == "down":  # `pids`: the creation that went down (and older ones)
            members = view.get(node)
            if members is not None:
                members.difference_update([p for p in members if p[1] <= pids])
                if not members:
                    del view[node]
            return
        added, removed = pids
        members = view.get(node)
        if members is None:
            members = view[node] = set()
        members.update(added)
        members.difference_update(removed)  # (the node stays: only GNONE drops it)

    # -- invalidation ----------------------------------------------------------------
    def node_down(self, name: str, creation: int) -> None:
        """`name`'s incarnation `creation` (and older) went down: its members are gone
        from every view. Members of a newer incarnation stay: it may have restarted
        under the same name and confirmed a member before our poll saw the old one go."""
        for view in self.views.values():
            self._apply(view, "down", name, creation)
        for _, updates in self.loading.values():
            updates.append(("down", name, creation))

    def clear(self) -> None:
        """Drop every view (updates may have been missed); loaded again when needed."""
        self.gen += 1
        self.views.clear()
        self.stale.extend(self.entries.items())
        self.entries.clear()
        self.used.clear()

    # -- idle views ------------------------------------------------------------------
    def _arm(self) -> None:
        if self._sweeper is None and not self.closed and (self.views or self.stale):
            self._sweeper = self.backend.runtime.loop.call_later(self.idle, self.sweep)

    def sweep(self) -> None:
        """Drop the views not published to since the last sweep, and start taking
        the watcher entries of dropped views out of the store (`VIEW_IDLE`)."""
        self._sweeper = None
        used = self.used
        for cgroup in [g for g in self.views if g not in used]:
            del self.views[cgroup]
            entry = self.entries.pop(cgroup, None)
            if entry is not None:
                self.stale.append((cgroup, entry))
        used.clear()
        busy = self._unwatching is not None and not self._unwatching.done()
        if self.stale and self.store.up and not busy and not self.closed:
            self._unwatching = self.backend.runtime.loop.create_task(self._unwatch())
        self._arm()

    async def _unwatch(self) -> None:
        """Take every stale watcher entry out of the store, `UNWATCH_BATCH` to a
        pipeline; those that fail wait for the next sweep."""
        store, owned = self.store, self.backend.owned()
        while self.stale and not self.closed:
            batch, self.stale = self.stale[:UNWATCH_BATCH], self.stale[UNWATCH_BATCH:]

            async def run(r: Any, batch: list[tuple[str, str]] = batch) -> None:
                pipe = r.pipeline(transaction=False)
                for cgroup, entry in batch:
                    pipe.srem(self.watcher_key(cgroup), entry)
                    pipe.srem(owned, f"v{SEP}{cgroup}{SEP}{entry}")
                await pipe.execute()

            try:
                await store.run(run)
            except Exception:
                self.stale.extend(batch)  # (again at the next sweep)
                self._arm()
                return

    async def close(self) -> None:
        """Stop sweeping (the node leaves; its purge takes its entries out)."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        task, self._unwatching = self._unwatching, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
