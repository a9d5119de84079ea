"""The registry of a `procreg.testing.loopback` cluster: one shared, in-memory store.

Each node keeps its own processes' registrations in the structures of `LocalBackend`
(so `entries`, `tables`, `count` and the exit cleanup stay local, as on Redis) and
mirrors them into the net's shared tables (`LoopbackNet.keys`, `LoopbackNet.groups`),
with the Redis backend's semantics:

- keys and group names must be canonical values (`procreg.cluster.codec.canon`) and
  metadata must be JSON (a lookup from another node gets it back as JSON gives it);
- a claim is one atomic step after one loop turn (the store's round trip): the
  store gives a key to a fresh pid *before* its process starts, and the process
  starts only if the claim won, so the losing side of a race never runs ``init``;
  what other nodes send that pid before its async ``init`` is done waits
  (`park`);
- `register`, `join` take pids of this node only (`ValueError` otherwise), and
  `unregister` of another node's key raises `NotOwner` (the owner's node must do
  it);
- what a node held is released as soon as it goes down (`LoopbackNet._purge`), and a
  disconnected node fences itself (`fence`): it hands out nothing and claims
  nothing (`ClusterUnavailable`) until it reconnects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..cluster.backend import home_node
from ..cluster.codec import canon
from ..cluster.remote import factory_name
from ..errors import AlreadyRegistered, ClusterUnavailable, NoProcess
from ..pid import Pid, Ref
from ..process import _Proc
from ..registry import DEFAULT_TABLE, LocalBackend, NotOwner, Published

if TYPE_CHECKING:
    from ..node import Node
    from .loopback import Member

__all__ = ["LoopbackBackend"]


def _pid_of(proc: _Proc) -> Pid:
    pid: Pid = proc._procreg_pid
    return pid


def _as_json(meta: dict[str, Any] | None) -> Any:
    """`meta` as a store would give it back (`TypeError` if it is not JSON)."""
    if meta is None:
        return None
    return json.loads(json.dumps(meta))


class LoopbackBackend(LocalBackend):
    """`RegistryBackend` of one node of a `LoopbackNet` (see the module)."""

    def __init__(self, node: Node, member: Member) -> None:
        super().__init__(node)
        self.runtime = node.runtime
        self.member = member
        self.net = member.net
        # tables of node-local names (`register_now`: a node's supervisors): kept in
        # this node's view only, never in the shared store
        self._node_local: set[str] = set()
        # pids a claim gave a key to, whose process has not started yet: what other
        # nodes send them meanwhile waits here
        self._parked: dict[Pid, list[tuple[str, int, Any]]] = {}
        self._claims: dict[tuple[str, Hashable], asyncio.Task[tuple[Pid, bool]]] = {}

    # -- helpers -----------------------------------------------------------------------
    def _check_up(self, what: str) -> None:
        if not self.member.connected:
            raise ClusterUnavailable(
                f"cannot {what}: node {self.node.name!r} is disconnected from its loopback "
                "cluster (fenced) and has not reconnected"
            )

    def _own(self, pid: Pid, what: str) -> None:
        if pid[0] != self.node.name:
            raise ValueError(f"{what} {pid!r} on its own node ({pid[0]!r})")

    def holds(self, pid: Pid) -> bool:
        """True if `pid`, of this node, may hold a key: alive, or claimed for and
        not started yet."""
        return self.runtime.alive(pid) or pid in self._parked

    def _local_holder(self, key: Hashable, table: str) -> _Proc | None:
        """This node's process holding `key` in its view, even one exiting."""
        tab = self._tables.get(table)
        return tab.get(key) if tab is not None else None

    # -- lookups -----------------------------------------------------------------------
    def peek(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        if not self.member.connected:
            return None  # fenced: hands out nothing
        pid = super().peek(key, table)
        if pid is not None or table in self._node_local:
            return pid
        pid = self.net.holder(table, key)
        if pid is not None and pid[0] == self.node.name:
            return None  # ours are all in the local view: one not yet is still starting
        return pid

    async def whereis(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        return self.peek(key, table)

    async def lookup(
        self, key: Hashable, table: str = DEFAULT_TABLE
    ) -> tuple[Pid, dict[str, Any] | None] | None:
        if not self.member.connected:
            return None
        local = await super().lookup(key, table)
        if local is not None or table in self._node_local:
            return local
        entry = self.net.entry(table, key)
        if entry is None or entry[0][0] == self.node.name:
            return None  # ours are all in the local view (a claim in flight is not yet)
        return entry[0], _as_json(entry[1])

    # -- keys --------------------------------------------------------------------------
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

    async def register(
        self,
        key: Hashable,
        pid: Pid,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        canon(key)
        stored = _as_json(meta)
        self._own(pid, "register")
        self._check_up(f"register {key!r}")
        proc = self.node.local_process(pid)
        if proc is None or not self.runtime.alive(pid):
            raise NoProcess(f"cannot register {key!r}: {pid!r} is not alive")
        holder = super().peek(key, table)
        if holder is not None and holder != pid:
            raise AlreadyRegistered(key, holder)
        await asyncio.sleep(0)  # the store's round trip
        self._check_up(f"register {key!r}")
        if not self.runtime.alive(pid):
            raise NoProcess(f"{pid!r} ended while registering {key!r}")
        other = self.net.claim(self.member, table, key, pid, stored)
        if other is not None:
            raise AlreadyRegistered(key, other)
        LocalBackend.register_now(self, key, proc, table, meta)

    async def unregister(
        self, key: Hashable, table: str = DEFAULT_TABLE, pid: Pid | None = None
    ) -> bool:
        holder = self._local_holder(key, table)
        if holder is not None:  # ours, even if exiting (an async `terminate` may do it)
            held_by = _pid_of(holder)
            removed = await super().unregister(key, table, pid)
            if table not in self._node_local:
                self.net.release(self.member, table, key, held_by, "unregistered")
            return removed
        if table in self._node_local:
            return False
        canon(key)
        self._check_up(f"unregister {key!r}")
        found = self.net.holder(table, key)
        if found is None:
            return False
        if pid is not None and found != pid:
            raise NotOwner(f"{key!r} in table {table!r} is held by {found!r}, not {pid!r}")
        raise NotOwner(
            f"{key!r} in table {table!r} is held by {found!r} on node {found[0]!r}: "
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
        canon(key)
        _as_json(meta)
        pid = self.peek(key, table)
        if pid is not None:
            return pid, False
        self._check_up(f"get_or_spawn {key!r}")
        flight = self._claims.get((table, key))
        if flight is not None:
            found, _ = await asyncio.shield(flight)
            return found, False
        task = self.runtime.loop.create_task(
            self._spawn(key, factory, args, table, placement, meta, idle_timeout)
        )
        entry = (table, key)
        self._claims[entry] = task

        def done(t: asyncio.Task[tuple[Pid, bool]]) -> None:
            if self._claims.get(entry) is t:
                del self._claims[entry]

        task.add_done_callback(done)
        return await asyncio.shield(task)

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
            home = home_node(key, self.member.live_nodes())
            if home != node.name:
                result: tuple[Pid, bool] = await self.member.remote.spawn(
                    home, key, factory, args, table, meta, idle_timeout
                )
                return result
        await asyncio.sleep(0)  # the claim's round trip
        self._check_up(f"get_or_spawn {key!r}")
        pid = self.runtime.new_pid()
        holder = self.net.claim(self.member, table, key, pid, _as_json(meta))
        if holder is not None:
            return holder, False
        if node.starts_now(factory):
            try:
                proc = node.start_now(pid, factory, args, idle_timeout)
            except BaseException:
                self.net.release(self.member, table, key, pid, "ended")
                raise
        else:
            self._parked[pid] = []
            try:
                try:
                    proc = await node.start_with_pid(
                        pid, factory, args, idle_timeout, key=(table, key)
                    )
                except BaseException:
                    self.net.release(self.member, table, key, pid, "ended")
                    raise
            finally:
                self.unpark(pid)
        if not self.member.connected:  # fenced during an async init: it must not live on
            self.runtime.end(pid, "fenced")
            raise ClusterUnavailable(f"cannot start {key!r}: this node was fenced")
        if not self.runtime.alive(pid):
            self.net.release(self.member, table, key, pid, "ended")
            raise NoProcess(f"{pid!r} ended right after it started")
        LocalBackend.register_now(self, key, proc, table, meta)
        return pid, True

    # -- parked items -------------------------------------------------------------------
    def park(self, sender: str, creation: int, item: Any, pid: Pid) -> bool:
        """Keep an item for one of our pids whose process is starting (True)."""
        parked = self._parked.get(pid)
        if parked is None:
            return False
        parked.append((sender, creation, item))
        return True

    def unpark(self, pid: Pid) -> None:
        """The process for `pid` started (or never will): deliver what waited."""
        parked = self._parked.pop(pid, None)
        if parked:
            deliver = self.member.remote.deliver
            for sender, creation, item in parked:
                deliver(sender, creation, item)

    # -- key monitors -------------------------------------------------------------------
    async def monitor_key(self, key: Hashable, table: str, watcher: Pid) -> Ref:
        canon(key)
        self._check_up(f"monitor {key!r}")
        return await super().monitor_key(key, table, watcher)

    def key_event(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        """A change made by another node (or a node-down purge): tell our watchers."""
        if pid[0] != self.node.name:
            LocalBackend.notify_key(self, table, key, event, pid)

    # -- groups -------------------------------------------------------------------------
    async def join(self, group: Hashable, pid: Pid) -> bool:
        canon(group)
        self._own(pid, "join")
        self._check_up(f"join {group!r}")
        added = await super().join(group, pid)
        if added:
            self.net.group_add(self.member, group, pid)
        await asyncio.sleep(0)  # the store's round trip
        return added

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        canon(group)
        left = await super().leave(group, pid)
        if left:
            self.net.group_remove(self.member, group, pid)
        return left

    async def members(self, group: Hashable) -> list[Pid]:
        canon(group)
        self._check_up(f"list the members of {group!r}")
        await asyncio.sleep(0)  # the store's round trip
        return sorted(self.net.groups.get(group, ()))

    async def publish(self, group: Hashable, msg: Any) -> int:  # a Published
        pids = await self.members(group)
        by_node: dict[str, list[Pid]] = {}
        for pid in pids:
            by_node.setdefault(pid[0], []).append(pid)
        reached = missed = 0
        for name, members in by_node.items():
            if name == self.node.name:
                for pid in members:
                    if self.runtime.deliver(pid, msg, "send"):
                        reached += 1
                    else:
                        missed += 1
            else:
                self.member.remote.group_send(name, members, msg)
                reached += len(members)
        return Published(reached, missed)

    # -- lifecycle ----------------------------------------------------------------------
    def process_ended(self, proc: _Proc) -> None:
        pid = _pid_of(proc)
        reg = proc._procreg_reg
        if reg is not None:
            for table, key in reg if type(reg) is set else (reg,):
                if table not in self._node_local and self._local_holder(key, table) is proc:
                    self.net.release(self.member, table, key, pid, "ended")
        ext = proc._procreg_ext
        if ext is not None and ext.groups:
            for group in ext.groups:
                self.net.group_remove(self.member, group, pid)
        super().process_ended(proc)

    def fence(self) -> None:
        """This node was cut off (`LoopbackNet.disconnect`): its registered processes
        and group members end with reason ``"fenced"``, as a Redis cluster node's do
        when its lease lapses (the others may start their keys elsewhere)."""
        ending: dict[Pid, None] = {}
        for table, tab in list(self._tables.items()):
            if table not in self._node_local:
                for proc in tab.values():
                    ending[_pid_of(proc)] = None
        for members in self._groups.values():
            for pid in members:
                ending[pid] = None
        for pid in ending:
            self.runtime.end(pid, "fenced")
