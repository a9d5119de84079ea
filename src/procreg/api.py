"""The functions a process uses: the public face of the runtime and the registry.

Each finds the current node (`current_node`) and delegates to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack, overload

from .kernel import _node_var
from .keys import caller_pid, check_factory, check_key, check_table, spawn_for
from .node import Node, check_timeout, current_node
from .pid import Pid, Ref
from .primitives import answered as answered
from .primitives import caller, receive, reply, self
from .registry import DEFAULT_TABLE, Published
from .scope import check_scope, hooks
from .timers import send_after, send_interval

if TYPE_CHECKING:
    from .server import Server
    from .typed import Returns

__all__ = [
    "call",
    "caller",
    "cast",
    "count",
    "demonitor",
    "entries",
    "exit",
    "get_or_spawn",
    "is_alive",
    "join",
    "leave",
    "link",
    "lookup",
    "members",
    "monitor",
    "monitor_key",
    "monitor_nodes",
    "nodes",
    "publish",
    "receive",
    "register",
    "reply",
    "run",
    "self",
    "send",
    "send_after",
    "send_interval",
    "spawn",
    "spawn_monitor",
    "spawn_unique",
    "tables",
    "unlink",
    "unregister",
    "whereis",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# The overloads below are for type checkers: they check the arguments given for an
# ``async def`` body against its parameters, and type `call`'s reply for a request
# deriving from `procreg.Returns` (see `procreg.typed`). The implementations are the
# same functions as before, unchanged at run time. (The ``type: ignore[misc]`` on each
# implementation works around mypy's check of implementations against overloads that
# use a TypeVarTuple.)

# -- processes -------------------------------------------------------------------


@overload
def spawn(
    fn: type[Server],
    *args: Any,
    link: bool = False,
    monitor: bool = False,
    trap_exits: bool = False,
    idle_timeout: float | None = None,
) -> Pid: ...
@overload
def spawn(
    fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, Any]],
    *args: *Ts,
    link: bool = False,
    monitor: bool = False,
    trap_exits: bool = False,
    idle_timeout: float | None = None,
) -> Pid: ...
def spawn(  # type: ignore[misc, unused-ignore]
    fn: Callable[..., Coroutine[Any, Any, Any]] | type,
    *args: Any,
    link: bool = False,
    monitor: bool = False,
    trap_exits: bool = False,
    idle_timeout: float | None = None,
    max_mailbox: int | None = None,
    overflow: str | None = None,
) -> Pid:
    """Start a process that runs ``await fn(*args)`` and return its pid.

    `fn` is an ``async def`` function (it reads its mailbox with `receive`) or a
    `Server` subclass (then this is ``fn.start(*args)``). ``link=True`` links it to
    the caller, ``monitor=True`` makes the caller monitor it (the `Down` carries the
    pid; use `spawn_monitor` to get the ref), ``trap_exits=True`` turns exit signals
    into `Exit` messages, ``idle_timeout`` ends it with reason ``"idle"`` after that
    many seconds without a message.

    ``max_mailbox`` bounds its mailbox to that many waiting messages (None: the
    node's default, unbounded unless ``Node(max_mailbox=...)``; ``0``: no bound).
    When it is full, a new message is refused (`send` and `cast` return False, a
    `call` raises `Overloaded` at once) and ``overflow`` decides the rest:
    ``"drop"`` (the node's default) keeps the process running, ``"exit"`` ends it
    with reason ``"overload"``, which links, monitors and supervisors see like any
    exit. Runtime signals (`Down`, `Exit`, `KeyEvent`, `NodeEvent`) are never refused.

    >>> import procreg
    >>> async def echo():
    ...     msg = await procreg.receive()
    ...     procreg.send(msg["from"], msg["text"])
    >>> async def main():
    ...     pid = procreg.spawn(echo)
    ...     procreg.send(pid, {"from": procreg.self(), "text": "hi"})
    ...     return await procreg.receive(timeout=1)
    >>> procreg.run(main)
    'hi'
    """
    return current_node().spawn(
        fn,
        *args,
        link=link,
        monitor=monitor,
        trap_exits=trap_exits,
        idle_timeout=idle_timeout,
        max_mailbox=max_mailbox,
        overflow=overflow,
    )


@overload
def spawn_monitor(fn: type[Server], *args: Any) -> tuple[Pid, Ref]: ...
@overload
def spawn_monitor(
    fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, Any]], *args: *Ts
) -> tuple[Pid, Ref]: ...
def spawn_monitor(  # type: ignore[misc, unused-ignore]
    fn: Callable[..., Coroutine[Any, Any, Any]] | type, *args: Any
) -> tuple[Pid, Ref]:
    """Spawn and monitor in one step; returns ``(pid, ref)``."""
    node = current_node()
    me = node._me_or_raise("spawn_monitor()")
    pid = node.spawn(fn, *args)
    return pid, node._add_monitor(me, node._procs[pid])


def send(pid: Pid, msg: Any) -> bool:
    """Send `msg` to `pid` (a server gets it in ``handle_info``). A message to a dead
    process is dropped silently, as in Erlang. Messages between one pair of
    processes arrive in the order sent. Local sends do not copy `msg`.

    Returns True if the message was queued, False if it was dropped here: `pid` is a
    dead local process, or its mailbox is full (``max_mailbox``). A message to
    another node's pid returns True once handed to the cluster transport (a full
    mailbox there drops it and counts it on that node)."""
    node = _node_var.get()
    if node is None or not node._running:
        node = current_node()
    proc = node._procs.get(pid)
    if proc is None:
        return node.send(pid, msg)
    return proc._procreg_info(msg)


def cast(pid: Pid, msg: Any) -> bool:
    """Send `msg` as a cast (a server gets it in ``handle_cast``); returns what
    `send` returns."""
    node = _node_var.get()
    if node is None or not node._running:
        node = current_node()
    proc = node._procs.get(pid)
    if proc is None:
        return node.cast(pid, msg)
    return proc._procreg_cast(msg)


@overload
async def call(pid: Pid, request: Returns[T], timeout: float | None = 5.0) -> T: ...
@overload
async def call(pid: Pid, request: Any, timeout: float | None = 5.0) -> Any: ...
async def call(pid: Pid, request: Any, timeout: float | None = 5.0) -> Any:
    """Send `request` to `pid` and return its reply (typed ``T`` for a request
    deriving from `procreg.Returns` ``[T]``, else ``Any``).

    Raises `NoProcess` at once if `pid` is dead or unknown, `Overloaded` at once if
    its mailbox is full (``max_mailbox``), `ProcessExited` if it ends before
    replying, `CallTimeout` after `timeout` seconds (None: wait forever), and
    `Deadlock` if a process calls itself. A reply that comes after the timeout is
    dropped. A coroutine process receives the call as a `Call` message.
    """
    return await current_node().call(pid, request, timeout)


def link(pid: Pid) -> None:
    """Link the calling process with `pid`: when one ends with a reason other than
    ``"normal"``, the other gets the exit signal (and ends too, unless it traps
    exits). Linking to a dead process raises `NoProcess` (or, when trapping exits,
    delivers ``Exit(pid, "noproc")``)."""
    current_node().link(pid)


def unlink(pid: Pid) -> None:
    """Remove a link from the calling process."""
    current_node().unlink(pid)


def monitor(pid: Pid) -> Ref:
    """Watch `pid`: the caller gets ``Down(ref, pid, reason)`` when it ends
    (``"noproc"`` at once if it is already gone)."""
    return current_node().monitor(pid)


def demonitor(ref: Ref, *, flush: bool = False) -> bool:
    """Stop a monitor (of a process, or of a key: `monitor_key`); True if it was
    active. ``flush=True`` also drops its `Down` (or its `KeyEvent` messages) if
    already delivered."""
    return current_node().demonitor(ref, flush=flush)


def exit(pid: Pid, reason: Any) -> None:
    """Send an exit signal: ``"kill"`` ends `pid` unconditionally; otherwise a process
    that traps exits gets ``Exit(sender, reason)`` and any other ends with `reason`
    (``"normal"`` is ignored unless a process sends it to itself)."""
    current_node().exit(pid, reason)


def nodes() -> list[str]:
    """The live nodes of the cluster, this one included (just this one when not
    clustered)."""
    return current_node().nodes()


def monitor_nodes(on: bool = True) -> None:
    """The calling process gets ``NodeEvent("up" | "down", name)`` messages as nodes
    join and leave the cluster (``on=False`` stops them)."""
    node = current_node()
    node.monitor_nodes(node._me_or_raise("monitor_nodes()")._procreg_pid, on)


def is_alive(pid: Pid) -> bool:
    """True while `pid` is a live process of this node."""
    return current_node().is_alive(pid)


def run(
    main: Callable[[Unpack[Ts]], Coroutine[Any, Any, T]],
    *args: *Ts,
    uvloop: bool = False,
    **node_options: Any,
) -> T:
    """Like `asyncio.run`: start a `Node` (with `node_options`), run ``main(*args)``
    as its first process, stop the node, and return main's result (or raise its
    exception). ``uvloop=True`` runs on uvloop (install the ``uvloop`` extra)."""

    async def runner() -> T:
        async with Node(**node_options) as node:
            result: asyncio.Future[T] = node._loop.create_future()
            node.spawn_main(main, args, result)
            return await result

    if uvloop:
        import uvloop as _uvloop

        return _uvloop.run(runner())
    return asyncio.run(runner())


# -- registry --------------------------------------------------------------------


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
