"""The process registry: tables of unique keys, groups, and the backend protocol.

A *table* is a namespace of unique keys (``"default"`` unless told otherwise),
created on first use. A key maps to one live process and, optionally, a small
metadata dict. A *group* is a set of processes (a pool) that `publish` reaches.

Guarantees of every backend:

- `get_or_spawn` is atomic: however many callers race for a key, one process is
  started and every caller gets its pid. On one node, concurrent callers for a key
  share one in-flight attempt.
- An entry disappears when its process ends, whatever the reason (``kill`` too);
  a process leaves its groups when it ends.
- Read your writes on the same node.

`LocalBackend` is the embedded default. A backend for another store subclasses
`RegistryBackend`; docs/INTERNALS.md spells out the contract.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol

from .backends import DEFAULT_TABLE, MISS, RegistryBackend
from .errors import AlreadyRegistered, NoProcess, ProcregError
from .keys import caller_pid, check_factory, check_key, check_table, spawn_for
from .messages import KeyEvent
from .pid import Pid, Ref
from .process import EXITING, _Proc
from .spawning import is_server_class
from .waits import check_wait, started_for, waiting_on

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = [
    "DEFAULT_TABLE",
    "MISS",
    "ViewListener",
    "LocalBackend",
    "NotOwner",
    "Published",
    "RegistryBackend",
    "caller_pid",
    "check_factory",
    "check_key",
    "check_table",
    "check_wait",
    "spawn_for",
    "started_for",
    "waiting_on",
]


class Published(int):
    """What `procreg.publish` returns: the number of members the message reached (it
    *is* that int, so ``n = await publish(...)`` keeps working), and `missed`, the
    members it could not reach: their mailbox was full (see ``max_mailbox``) or they
    were ending. Members on other nodes count as reached once the message is handed
    to the cluster transport, as many as the publishing node's view of the group
    holds (see docs/INTERNALS.md, *Group views*).

    >>> n = Published(3, missed=1)
    >>> n == 3, n.reached, n.missed, n.members
    (True, 3, 1, 4)
    """

    missed: int

    def __new__(cls, reached: int = 0, missed: int = 0) -> Published:
        self = super().__new__(cls, reached)
        self.missed = missed
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (int(self), self.missed))

    @property
    def reached(self) -> int:
        """Members the message was delivered to (the int value itself)."""
        return int(self)

    @property
    def members(self) -> int:
        """Members the message was addressed to: ``reached + missed``."""
        return int(self) + self.missed


class NotOwner(ProcregError):
    """A process tried to unregister a key held by another process."""


def _copy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of entry metadata, as a store-backed registry's (JSON) gives: what
    the caller changes, before registering or after a lookup, is not the entry's."""
    try:
        return copy.deepcopy(meta)
    except Exception:  # something that cannot be copied: the dict at least
        return dict(meta)


class ViewListener(Protocol):
    """What a `LocalBackend` tells the backend that composes it (its `listener`):
    a store-backed backend mirrors the view's changes into its store."""

    def key_changed(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        """The view's holder of `key` changed: ``"registered"``, ``"unregistered"`` or
        ``"ended"`` (`pid`: the process registered or gone). Called only while some
        local process monitors a key."""

    def key_unwatched(self, entry: tuple[str, Hashable]) -> None:
        """No local process monitors ``(table, key)`` any more."""

    def ended(self, table: str, key: Hashable, pid: Pid) -> None:
        """Process `pid`, which held `key` in `table`, ended: the view dropped the
        entry (called from `process_ended`)."""

    def left(self, group: Hashable, pid: Pid) -> None:
        """Process `pid`, a member of `group`, ended (called from `process_ended`)."""


class LocalBackend(RegistryBackend):
    """The embedded registry: dictionaries in the node's memory.

    Each table is a dict ``key -> process``; each process remembers its keys (in its
    ``_reg`` slot), so the exit sequence removes them in O(keys held). Metadata lives
    in a side dict per table, only for entries that have some.
    """

    def __init__(self, node: Kernel) -> None:
        super().__init__(node)
        self._tables: dict[str, dict[Hashable, _Proc]] = {}
        self._meta: dict[str, dict[Hashable, dict[str, Any]]] = {}
        self._groups: dict[Hashable, dict[Pid, _Proc]] = {}
        self._inflight: dict[tuple[str, Hashable], asyncio.Task[tuple[Pid, bool]]] = {}
        # key monitors: (table, key) -> {ref: watcher}; each watcher's refs are in its
        # _Ext.key_monitors, so that its end drops them
        self._key_monitors: dict[tuple[str, Hashable], dict[Ref, _Proc]] = {}
        # told of this view's key changes and of keys no local process watches any more
        # (a store-backed backend that composes this view: `procreg.cluster`)
        self.listener: ViewListener | None = None

    # -- keys -----------------------------------------------------------------
    def holder(self, key: Hashable, table: str) -> _Proc | None:
        """The live process holding `key`. A holder that has begun exiting (its async
        ``terminate`` still running) counts as gone: it must not be handed out."""
        tab = self._tables.get(table)
        if tab is None:
            return None
        proc = tab.get(key)
        if proc is not None and proc._procreg_st >= EXITING:
            return None
        return proc

    def peek(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        tab = self._tables.get(table)
        if tab is None:
            return None
        proc = tab.get(key)
        if proc is None or proc._procreg_st >= EXITING:
            return None
        return proc._procreg_pid

    async def whereis(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        return self.peek(key, table)

    async def lookup(
        self, key: Hashable, table: str = DEFAULT_TABLE
    ) -> tuple[Pid, dict[str, Any] | None] | None:
        proc = self.holder(key, table)
        if proc is None:
            return None
        metas = self._meta.get(table)
        meta = metas.get(key) if metas is not None else None
        # a copy: what the caller changes is not the registry's
        return proc._procreg_pid, (_copy_meta(meta) if meta is not None else None)

    def insert(self, table: str, key: Hashable, proc: _Proc, meta: dict[str, Any] | None) -> None:
        """Put live local process `proc` under `key` (no checks: the caller has
        made sure it may), with `meta` (a copy is kept)."""
        tab = self._tables.get(table)
        if tab is None:
            tab = self._tables[table] = {}
        if self._key_monitors and tab.get(key) is not proc:
            self.notify_key(table, key, "registered", proc._procreg_pid)
        tab[key] = proc
        entry = (table, key)
        reg = proc._procreg_reg
        if reg is None:
            proc._procreg_reg = entry
        elif type(reg) is set:
            reg.add(entry)
        elif reg != entry:
            proc._procreg_reg = {reg, entry}
        if meta is not None:
            self._meta.setdefault(table, {})[key] = _copy_meta(meta)
        elif table in self._meta:
            self._drop_meta(table, key)

    def _drop_meta(self, table: str, key: Hashable) -> None:
        meta = self._meta.get(table)
        if meta is not None and meta.pop(key, None) is not None and not meta:
            del self._meta[table]

    def _remove(self, table: str, key: Hashable, proc: _Proc) -> None:
        tab = self._tables[table]
        del tab[key]
        if not tab:
            del self._tables[table]
        self._drop_meta(table, key)
        if self._key_monitors:
            self.notify_key(table, key, "unregistered", proc._procreg_pid)
        entry = (table, key)
        reg = proc._procreg_reg
        if type(reg) is set:
            reg.discard(entry)
            if len(reg) == 1:
                proc._procreg_reg = next(iter(reg))
            elif not reg:
                proc._procreg_reg = None
        elif reg == entry:
            proc._procreg_reg = None

    def register_now(
        self,
        key: Hashable,
        proc: _Proc,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Synchronous `register` of a live local process."""
        holder = self.holder(key, table)
        if holder is not None and holder is not proc:
            raise AlreadyRegistered(key, holder._procreg_pid)
        self.insert(table, key, proc, meta)

    async def register(
        self,
        key: Hashable,
        pid: Pid,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        proc = self.node._lookup(pid)
        if proc is None or proc._procreg_st >= EXITING:
            raise NoProcess(f"cannot register {key!r}: {pid!r} is not alive")
        self.register_now(key, proc, table, meta)

    async def unregister(
        self, key: Hashable, table: str = DEFAULT_TABLE, pid: Pid | None = None
    ) -> bool:
        tab = self._tables.get(table)
        holder = tab.get(key) if tab is not None else None
        if holder is None:
            return False
        if pid is not None and holder._procreg_pid != pid:
            raise NotOwner(
                f"{key!r} in table {table!r} is held by {holder._procreg_pid!r}, not {pid!r}"
            )
        self._remove(table, key, holder)
        return True

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
        proc = self.holder(key, table)
        if proc is not None:
            return proc._procreg_pid, False
        flight = self._inflight.get((table, key))
        if flight is not None:
            pid, _ = await asyncio.shield(flight)
            return pid, False
        node = self.node
        if is_server_class(factory):
            if not factory._procreg_async_mask & 8:  # sync init: start and register in one step
                proc, _ = factory._procreg_start(args, False, False, False, idle_timeout, None)
                self.insert(table, key, proc, meta)
                return proc._procreg_pid, True
            # async init: one attempt per key, in a task of its own so that a caller
            # giving up (cancelled) neither fails the others nor orphans the process
            flight = node._loop.create_task(
                self._spawn_async(key, factory, args, table, meta, idle_timeout)
            )
            self._inflight[(table, key)] = flight
            flight.add_done_callback(lambda t: self._inflight.pop((table, key), None))
            return await asyncio.shield(flight)
        # an async def body: it starts running on the next loop turn; registered now
        pid = node.spawn(factory, *args, idle_timeout=idle_timeout)
        self.insert(table, key, node._procs[pid], meta)
        return pid, True

    # (never asked in practice: this view's `peek` knows every key, never `MISS`)
    get_or_spawn_missed = get_or_spawn

    async def _spawn_async(
        self,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str,
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
    ) -> tuple[Pid, bool]:
        """A server with an async ``init`` (run as the key's in-flight task): the key
        is registered once init succeeds, and stays free if it fails."""
        node = self.node
        ready: asyncio.Future[Pid] = node._loop.create_future()
        proc, _ = factory._procreg_start(args, False, False, False, idle_timeout, ready)
        with started_for(node, (table, key), proc):
            pid = await ready
        if proc._procreg_st >= EXITING:
            raise NoProcess(f"{pid!r} ended right after its init")
        holder = self.holder(key, table)
        if holder is not None and holder is not proc:
            # registered by someone else meanwhile: theirs wins, ours goes
            node._end(proc, "shutdown")
            return holder._procreg_pid, False
        self.insert(table, key, proc, meta)
        return pid, True

    def entries(self, table: str = DEFAULT_TABLE) -> list[tuple[Hashable, Pid]]:
        tab = self._tables.get(table)
        if tab is None:
            return []
        return [(key, proc._procreg_pid) for key, proc in tab.items()]

    def tables(self) -> list[str]:
        return list(self._tables)

    def count(self, table: str = DEFAULT_TABLE) -> int:
        tab = self._tables.get(table)
        return len(tab) if tab is not None else 0

    # -- the view, for a backend that composes it ---------------------------------
    @property
    def key_monitors(self) -> dict[tuple[str, Hashable], dict[Ref, _Proc]]:
        """The key monitors of this view: ``(table, key) -> {ref: watcher}`` (read
        only: for observers and tests)."""
        return self._key_monitors

    def held(self, key: Hashable, table: str) -> _Proc | None:
        """The local process holding `key` in `table`, even one that has begun
        exiting (`holder` leaves those out); None if none."""
        tab = self._tables.get(table)
        return tab.get(key) if tab is not None else None

    def meta(self, key: Hashable, table: str) -> dict[str, Any] | None:
        """The metadata stored with `key` (not a copy: do not change it), or None."""
        metas = self._meta.get(table)
        return metas.get(key) if metas is not None else None

    def registrations(self) -> list[tuple[str, Hashable, _Proc]]:
        """Every ``(table, key, process)`` of this view."""
        return [(t, k, p) for t, tab in self._tables.items() for k, p in tab.items()]

    def memberships(self) -> list[tuple[Hashable, Pid, _Proc]]:
        """Every ``(group, pid, process)`` of this view."""
        return [(g, pid, p) for g, members in self._groups.items() for pid, p in members.items()]

    # -- key monitors -----------------------------------------------------------
    async def monitor_key(self, key: Hashable, table: str, watcher: Pid) -> Ref:
        proc = self.node._lookup(watcher)
        if proc is None or proc._procreg_st >= EXITING:
            raise NoProcess(f"cannot monitor {key!r}: {watcher!r} is not alive")
        ref = Ref(self.node.name)
        entry = (table, key)
        watchers = self._key_monitors.get(entry)
        if watchers is None:
            watchers = self._key_monitors[entry] = {}
        watchers[ref] = proc
        ext = proc._procreg_extra()
        if ext.key_monitors is None:
            ext.key_monitors = {}
        ext.key_monitors[ref] = entry
        return ref

    def demonitor_key(self, ref: Ref, watcher: Pid) -> bool:
        proc = self.node._procs.get(watcher)
        ext = proc._procreg_ext if proc is not None else None
        if ext is None or not ext.key_monitors:
            return False
        entry = ext.key_monitors.pop(ref, None)
        if entry is None:
            return False
        if not ext.key_monitors:
            ext.key_monitors = None
        self._drop_key_monitor(ref, entry)
        return True

    def _drop_key_monitor(self, ref: Ref, entry: tuple[str, Hashable]) -> None:
        watchers = self._key_monitors.get(entry)
        if watchers is not None:
            watchers.pop(ref, None)
            if not watchers:
                del self._key_monitors[entry]
        if self.listener is not None and entry not in self._key_monitors:
            self.listener.key_unwatched(entry)  # its last local watcher is gone

    def notify_key(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        """A change of this view (``"registered"``, ``"unregistered"``, ``"ended"``):
        tell the `listener`, if any, then the local watchers (`deliver_key_event`)."""
        listener = self.listener
        if listener is not None:
            listener.key_changed(table, key, event, pid)
        self.deliver_key_event(table, key, event, pid)

    def deliver_key_event(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        """Send ``KeyEvent(ref, table, key, event, pid)`` to every local process
        watching `key` in `table` (a store-backed backend calls it for the changes it
        learns of from other nodes)."""
        watchers = self._key_monitors.get((table, key))
        if not watchers:
            return
        for ref, proc in list(watchers.items()):
            proc._procreg_info(KeyEvent(ref, table, key, event, pid))

    # -- groups -----------------------------------------------------------------
    async def join(self, group: Hashable, pid: Pid) -> bool:
        proc = self.node._lookup(pid)
        if proc is None or proc._procreg_st >= EXITING:
            raise NoProcess(f"cannot join {group!r}: {pid!r} is not alive")
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {}
        elif pid in members:
            return False
        members[pid] = proc
        ext = proc._procreg_extra()
        if ext.groups is None:
            ext.groups = set()
        ext.groups.add(group)
        return True

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        members = self._groups.get(group)
        if members is None:
            return False
        proc = members.pop(pid, None)
        if proc is None:
            return False
        if not members:
            del self._groups[group]
        ext = proc._procreg_ext
        if ext is not None and ext.groups is not None:
            ext.groups.discard(group)
        return True

    async def members(self, group: Hashable) -> list[Pid]:
        members = self._groups.get(group)
        return sorted(members) if members is not None else []

    async def publish(self, group: Hashable, msg: Any) -> int:  # a Published
        return self.publish_now(group, msg)

    def publish_now(self, group: Hashable, msg: Any) -> Published:
        """`publish` without awaiting: `msg` to every member of `group` here."""
        members = self._groups.get(group)
        if not members:
            return Published(0, 0)
        procs = list(members.values())  # ("exit" overflow may end a member meanwhile)
        reached = 0
        for proc in procs:
            if proc._procreg_info(msg):
                reached += 1
        return Published(reached, len(procs) - reached)

    def groups(self) -> list[Hashable]:
        return list(self._groups)

    def group_size(self, group: Hashable) -> int:
        """How many members `group` has here."""
        members = self._groups.get(group)
        return len(members) if members is not None else 0

    # -- lifecycle --------------------------------------------------------------
    def process_ended(self, proc: _Proc) -> None:
        reg = proc._procreg_reg
        if reg is not None:
            proc._procreg_reg = None
            listener = self.listener
            for table, key in reg if type(reg) is set else (reg,):
                tab = self._tables.get(table)
                if tab is not None and tab.get(key) is proc:
                    if listener is not None:
                        listener.ended(table, key, proc._procreg_pid)
                    del tab[key]
                    if not tab:
                        del self._tables[table]
                    self._drop_meta(table, key)
                    if self._key_monitors:
                        self.notify_key(table, key, "ended", proc._procreg_pid)
        ext = proc._procreg_ext
        if ext is not None and ext.groups:
            pid = proc._procreg_pid
            listener = self.listener
            for group in ext.groups:
                if listener is not None:
                    listener.left(group, pid)
                members = self._groups.get(group)
                if members is not None:
                    members.pop(pid, None)
                    if not members:
                        del self._groups[group]
            ext.groups = None
        if ext is not None and ext.key_monitors:
            for ref, entry in ext.key_monitors.items():
                self._drop_key_monitor(ref, entry)
            ext.key_monitors = None
