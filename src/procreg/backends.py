"""The registry backend protocol: what a node needs of its registry (`RegistryBackend`),
in the runtime layer so that the node holds one without importing any.

`procreg.registry.LocalBackend` (the embedded default) and
`procreg.cluster.backend.RedisBackend` implement it; `procreg.registry` re-exports
these names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from typing import TYPE_CHECKING, Any, Final

from .pid import Pid, Ref
from .process import _Proc

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = ["DEFAULT_TABLE", "MISS", "RegistryBackend"]

DEFAULT_TABLE: Final = "default"


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "procreg.registry.MISS"


MISS: Final = _Miss()
"""Returned by `RegistryBackend.peek` when only the store can answer."""


class RegistryBackend:
    """What a registry backend implements. Every operation that may wait on a store
    is ``async``; the local views (`peek`, `entries`, `tables`, `count`, `groups`)
    are plain methods that never wait.

    A backend is created by the node with the node as its only argument.
    `process_ended` is called synchronously by the node during a process's exit
    sequence and must drop everything that process held. Arguments reach a backend
    already checked (hashable keys, str tables, valid factories).
    """

    def __init__(self, node: Kernel) -> None:
        self.node = node

    # -- keys -----------------------------------------------------------------
    def peek(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | _Miss | None:
        """Answer from local knowledge without waiting: a pid, None if surely absent,
        or `MISS` if the store must be asked."""
        return MISS

    async def whereis(self, key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
        """The live process registered under `key`, or None."""
        raise NotImplementedError

    async def lookup(
        self, key: Hashable, table: str = DEFAULT_TABLE
    ) -> tuple[Pid, dict[str, Any] | None] | None:
        """``(pid, metadata)`` for `key`, or None."""
        raise NotImplementedError

    def register_now(
        self,
        key: Hashable,
        proc: _Proc,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Register live local process `proc` under `key` in this node's own view
        only, at once (no store, no wait): for node-local names, such as a node's
        supervisors' (every node has its ``"root"``). `AlreadyRegistered` if another
        local process holds it."""
        raise NotImplementedError

    async def register(
        self,
        key: Hashable,
        pid: Pid,
        table: str = DEFAULT_TABLE,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Register `pid` under `key`. Raises `AlreadyRegistered` if another live
        process holds it and `NoProcess` if `pid` is dead. Registering a key the
        same pid already holds replaces its metadata."""
        raise NotImplementedError

    async def unregister(
        self, key: Hashable, table: str = DEFAULT_TABLE, pid: Pid | None = None
    ) -> bool:
        """Remove `key`; with `pid`, only if `pid` holds it (else `NotOwner`).
        True if an entry was removed."""
        raise NotImplementedError

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
        """The live process for `key`, or exactly one started from `factory`;
        returns ``(pid, started_by_this_call)``. `idle_timeout` is passed to the
        new process (see `procreg.spawn`)."""
        raise NotImplementedError

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
        """`get_or_spawn` for a caller whose `peek` of `key` has just answered `MISS`,
        in the same step (nothing ran in between): a backend may skip its own look
        and, in its common case, hand back the attempt's future itself rather than a
        coroutine around it (`procreg.get_or_spawn` calls it so). By default, simply
        `get_or_spawn`."""
        return self.get_or_spawn(key, factory, args, table, placement, meta, idle_timeout)

    def entries(self, table: str = DEFAULT_TABLE) -> list[tuple[Hashable, Pid]]:
        """``(key, pid)`` pairs of `table` known locally (empty for an unknown table)."""
        raise NotImplementedError

    def tables(self) -> list[str]:
        """Names of the tables known locally."""
        raise NotImplementedError

    def count(self, table: str = DEFAULT_TABLE) -> int:
        """Number of entries of `table` known locally, in O(1)."""
        raise NotImplementedError

    # -- key monitors -----------------------------------------------------------
    async def monitor_key(self, key: Hashable, table: str, watcher: Pid) -> Ref:
        """Watch `key` for the process `watcher` (see `procreg.monitor_key`): from now
        on it gets a `KeyEvent` each time the key is registered, unregistered, or its
        holder ends, until `demonitor_key` or the end of `watcher` (`process_ended`
        must drop its monitors). Returns the monitor's ref."""
        raise NotImplementedError

    def demonitor_key(self, ref: Ref, watcher: Pid) -> bool:
        """Stop the key monitor `ref` of `watcher`; True if it was active."""
        raise NotImplementedError

    # -- groups -----------------------------------------------------------------
    async def join(self, group: Hashable, pid: Pid) -> bool:
        """Add `pid` to `group`; False if it was already a member."""
        raise NotImplementedError

    async def leave(self, group: Hashable, pid: Pid) -> bool:
        """Remove `pid` from `group`; False if it was not a member."""
        raise NotImplementedError

    async def members(self, group: Hashable) -> list[Pid]:
        """The members of `group`, sorted by pid (node name, creation, serial);
        empty for an unknown group.

        Every backend gives this one order. Sorted by pid, not by joining order,
        because a store-backed backend keeps a group as a set (a Redis set has no
        order; keeping joining order would need a join counter and an ordered
        structure updated on every join and leave): sorting on read costs nothing
        stored, and every node gives the same list for the same membership. Within
        one node incarnation, pids sort in spawn order."""
        raise NotImplementedError

    async def publish(self, group: Hashable, msg: Any) -> int:
        """Send `msg` to every member of `group`; the number of members reached, as a
        `procreg.registry.Published` (an int) whose ``missed`` counts the members whose delivery
        returned False (mailbox full, or ending). A plain int is read as none
        missed."""
        raise NotImplementedError

    def groups(self) -> list[Hashable]:
        """Names of the groups known locally."""
        raise NotImplementedError

    def group_size(self, group: Hashable) -> int:
        """How many of this node's processes are members of `group` (0 for an
        unknown group), in O(1): for observers (`procreg.observe`)."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------
    def process_ended(self, proc: _Proc) -> None:
        """Drop every key and group membership held by `proc` (called by the node)."""
        raise NotImplementedError
