"""The registry functions a process uses (names and groups): the public face of the
registry, re-exported from `procreg.api` and `procreg`.

Each finds the current node (`current_node`) and delegates to its registry backend.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any, TypeVarTuple, Unpack, overload

from .backends import MISS
from .keys import caller_pid, check_factory, check_key, check_table, spawn_for
from .node import Node, check_timeout, current_node
from .pid import Pid, Ref
from .registry import DEFAULT_TABLE, Published
from .scope import check_scope, hooks

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "count",
    "entries",
    "get_or_spawn",
    "join",
    "leave",
    "lookup",
    "members",
    "monitor_key",
    "publish",
    "register",
    "spawn_unique",
    "tables",
    "unregister",
    "whereis",
]

Ts = TypeVarTuple("Ts")

# The overloads below are for type checkers (see `procreg.api`): the implementations
# are unchanged at run time.


async def whereis(key: Hashable, table: str = DEFAULT_TABLE) -> Pid | None:
    """The live process registered under `key`, or None (Nitrogen ``get_pid/3``)."""
    registry = current_node().registry
    pid = registry.peek(key, table)
    if pid.__class__ is Pid:
        return pid
    check_key(key)
    check_table(table)
    if pid is None:
        return None
    return await registry.whereis(key, table)


async def lookup(
    key: Hashable, table: str = DEFAULT_TABLE
) -> tuple[Pid, dict[str, Any] | None] | None:
    """``(pid, metadata)`` registered under `key`, or None."""
    check_key(key)
    check_table(table)
    return await current_node().registry.lookup(key, table)


def _check_spawn(
    key: Hashable, factory: Any, table: str, placement: str, idle_timeout: float | None
) -> None:
    check_timeout(idle_timeout, "idle_timeout")
    check_key(key)
    check_table(table)
    check_factory(factory)
    if placement not in ("local", "hash"):
        raise ValueError(f"placement must be 'local' or 'hash', got {placement!r}")


@overload
async def get_or_spawn(
    key: Hashable,
    factory: type[Server],
    *args: Any,
    table: str = DEFAULT_TABLE,
    placement: str = "local",
    meta: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    scope: str = "node",
) -> Pid: ...
@overload
async def get_or_spawn(
    key: Hashable,
    factory: Callable[[Unpack[Ts]], Coroutine[Any, Any, Any]],
    *args: *Ts,
    table: str = DEFAULT_TABLE,
    placement: str = "local",
    meta: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    scope: str = "node",
) -> Pid: ...
async def get_or_spawn(  # type: ignore[misc, unused-ignore]
    key: Hashable,
    factory: Any,
    *args: Any,
    table: str = DEFAULT_TABLE,
    placement: str = "local",
    meta: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    scope: str = "node",
) -> Pid:
    """The live process registered under `key`, or exactly one new process started
    from `factory` (a `Server` subclass or an ``async def`` body) with `args` and
    registered under `key` (Nitrogen ``get_pid/4``).

    However many callers race, one process is started; the others get its pid. If
    the factory's ``init`` fails, the key stays free and the caller gets the error.
    ``placement="hash"`` starts it on the key's home node in a cluster; `meta` is
    stored with the entry (see `lookup`); `idle_timeout` ends the new process after
    that many seconds without a message (its entry goes with it).

    ``scope="cluster"`` makes the process one instance cluster-wide that outlives its
    node (`procreg.scope`): if its node dies or fences itself a surviving node starts
    it again from `factory` and `args` (which must be importable and picklable:
    `TypeError` otherwise), and on a graceful stop it hands its state off (its
    ``handoff()`` hook; ``procreg.takeover()`` in the new ``init``). On a node
    without a cluster it changes nothing.
    """
    node = current_node()
    pid = node.registry.peek(key, table)
    if pid.__class__ is Pid:
        return pid
    _check_spawn(key, factory, table, placement, idle_timeout)
    if scope != "node":
        pid, _ = await _scoped_spawn(
            node, key, factory, args, table, placement, meta, idle_timeout, scope
        )
        return pid
    if not node._starting and not node._held:  # (`spawn_for`'s fast path)
        if pid is MISS:  # only the store knows: the backend need not look again
            pid, _ = await node.registry.get_or_spawn_missed(
                key, factory, args, table, placement, meta, idle_timeout
            )
        else:
            pid, _ = await node.registry.get_or_spawn(
                key, factory, args, table, placement, meta, idle_timeout
            )
        return pid
    pid, _ = await spawn_for(node, key, factory, args, table, placement, meta, idle_timeout)
    return pid


async def _scoped_spawn(
    node: Node,
    key: Hashable,
    factory: Any,
    args: tuple[Any, ...],
    table: str,
    placement: str,
    meta: dict[str, Any] | None,
    idle_timeout: float | None,
    scope: str,
) -> tuple[Pid, bool]:
    check_scope(scope)
    scoped = hooks(node)
    if scoped is None:  # no cluster: the node is the whole cluster
        return await spawn_for(node, key, factory, args, table, placement, meta, idle_timeout)
    return await scoped.get_or_spawn(key, factory, args, table, placement, meta, idle_timeout)


@overload
async def spawn_unique(
    key: Hashable,
    factory: type[Server],
    *args: Any,
    table: str = DEFAULT_TABLE,
    placement: str = "local",
    meta: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    scope: str = "node",
) -> tuple[Pid, bool]: ...
@overload
async def spawn_unique(
    key: Hashable,
    factory: Callable[[Unpack[Ts]], Coroutine[Any, Any, Any]],
    *args: *Ts,
    table: str = DEFAULT_TABLE,
    placement: str = "local",
    meta: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    scope: str = "node",
) -> tuple[Pid, bool]: ...
async def spawn_unique(  # type: ignore[misc, unused-ignore]
    key: Hashable,
    factory: Any,
    *args: Any,
    table: str = DEFAULT_TABLE,
    placement: str = "local",
    meta: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    scope: str = "node",
) -> tuple[Pid, bool]:
    """Like `get_or_spawn`, but also says whether this call started the process:
    returns ``(pid, started)``."""
    _check_spawn(key, factory, table, placement, idle_timeout)
    if scope != "node":
        return await _scoped_spawn(
            current_node(), key, factory, args, table, placement, meta, idle_timeout, scope
        )
    return await spawn_for(current_node(), key, factory, args, table, placement, meta, idle_timeout)


async def register(
    key: Hashable,
    pid: Pid | None = None,
    table: str = DEFAULT_TABLE,
    *,
    meta: dict[str, Any] | None = None,
) -> None:
    """Register `pid` (default: the calling process) under `key`, with optional
    metadata. Raises `AlreadyRegistered` (carrying the holder's pid) if another live
    process holds the key and `NoProcess` if `pid` is dead."""
    check_key(key)
    check_table(table)
    node = current_node()
    await node.registry.register(key, caller_pid(node, pid, "register()"), table, meta)


async def unregister(key: Hashable, table: str = DEFAULT_TABLE, *, pid: Pid | None = None) -> bool:
    """Remove `key`. Inside a process, only a key that process holds may be removed
    (another's raises `NotOwner`); `pid=` names the expected holder; outside any
    process with no `pid` the removal is unconditional. True if removed."""
    check_key(key)
    check_table(table)
    node = current_node()
    if pid is None:
        me = node.me()
        pid = me._procreg_pid if me is not None else None
    return await node.registry.unregister(key, table, pid)


def entries(table: str = DEFAULT_TABLE) -> list[tuple[Hashable, Pid]]:
    """The ``(key, pid)`` pairs of `table` known to this node (like ``ets:tab2list``)."""
    return current_node().registry.entries(table)


def tables() -> list[str]:
    """The tables that have entries on this node."""
    return current_node().registry.tables()


def count(table: str = DEFAULT_TABLE) -> int:
    """How many entries `table` has on this node, in O(1)."""
    return current_node().registry.count(table)


async def monitor_key(key: Hashable, table: str = DEFAULT_TABLE) -> Ref:
    """Watch `key` in `table` from the calling process (gproc's name monitor with
    ``follow``): it gets ``KeyEvent(ref, table, key, event, pid)`` each time the key
    is registered (``"registered"``, `pid` the new holder), unregistered
    (``"unregistered"``) or its holder ends (``"ended"``), until
    ``procreg.demonitor(ref)`` or its own end. The key need not be registered;
    nothing is sent for the state at the time of the call (ask `whereis` after
    monitoring). Returns the ref the events carry.

    Raises `NotInProcess` outside a process, `TypeError` for an unhashable key or a
    table that is not a str. On a cluster node the changes made on every node are
    reported; it raises `ClusterUnavailable` while the store is unreachable, and
    after a gap in the node's link to the store the watcher gets the difference, not
    every change in between (docs/INTERNALS.md, "Key monitors across the cluster").
    """
    check_key(key)
    check_table(table)
    node = current_node()
    me = node._me_or_raise("monitor_key()")
    return await node.registry.monitor_key(key, table, me._procreg_pid)


async def join(group: Hashable, pid: Pid | None = None) -> bool:
    """Add `pid` (default: the caller) to `group`; joining twice is a no-op (False).
    A process leaves its groups when it ends."""
    check_key(group, "group")
    node = current_node()
    return await node.registry.join(group, caller_pid(node, pid, "join()"))


async def leave(group: Hashable, pid: Pid | None = None) -> bool:
    """Remove `pid` (default: the caller) from `group`; False if it was not in it."""
    check_key(group, "group")
    node = current_node()
    return await node.registry.leave(group, caller_pid(node, pid, "leave()"))


async def members(group: Hashable) -> list[Pid]:
    """The pids in `group`, sorted by pid (node, creation, serial), whatever the
    backend; empty for an unknown group (see `RegistryBackend.members`)."""
    check_key(group, "group")
    return await current_node().registry.members(group)


async def publish(group: Hashable, msg: Any) -> Published:
    """Send `msg` to every member of `group` (as with `send`); returns how many
    members it reached, as a `Published`: an int, with ``.missed`` the members it
    could not reach (mailbox full, or ending)."""
    check_key(group, "group")
    result = await current_node().registry.publish(group, msg)
    if type(result) is Published:
        return result
    return Published(result, 0)
