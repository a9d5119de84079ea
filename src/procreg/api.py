"""The functions a process uses: the public face of the runtime and the registry.

Each finds the current node (`current_node`) and delegates to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack, overload

from .kernel import _node_var
from .naming import (
    count,
    entries,
    get_or_spawn,
    join,
    leave,
    lookup,
    members,
    monitor_key,
    publish,
    register,
    spawn_unique,
    tables,
    unregister,
    whereis,
)
from .node import Node, current_node
from .pid import Pid, Ref
from .primitives import answered as answered
from .primitives import caller, receive, reply, self
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
