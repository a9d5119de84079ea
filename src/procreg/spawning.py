"""Spawning: starting coroutine processes and servers, with the spawn options
(link, monitor, trap_exits, idle_timeout, mailbox bounds), and starting a process
under a pid taken earlier (the cluster registry claims a key for a pid before its
process exists).

These functions are the `Kernel`'s methods (``node.spawn(...)``, ...): each takes
the node first, and the kernel's class body binds them, so that a call costs what a
method defined in the class costs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from .coroutines import Process
from .errors import NotInProcess
from .options import check_bound, check_timeout
from .pid import Pid, Ref
from .process import _Proc
from .waits import started_for

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = [
    "ServerClass",
    "bound",
    "is_server_class",
    "setup",
    "spawn",
    "spawn_main",
    "start_body",
    "start_now",
    "start_with_pid",
    "starts_now",
]


class ServerClass(Protocol):
    """What the runtime uses of a `procreg.Server` subclass (the class itself, not an
    instance): see `is_server_class`."""

    _procreg_async_mask: int  # which callbacks are ``async def`` (8: ``init``)

    def start(
        self,
        *args: Any,
        link: bool = False,
        monitor: bool = False,
        trap_exits: bool = False,
        idle_timeout: float | None = None,
        max_mailbox: int | None = None,
        overflow: str | None = None,
    ) -> Pid:
        """`Server.start`."""

    async def start_ready(
        self,
        *args: Any,
        link: bool = False,
        monitor: bool = False,
        trap_exits: bool = False,
        idle_timeout: float | None = None,
        max_mailbox: int | None = None,
        overflow: str | None = None,
    ) -> Pid:
        """`Server.start_ready`."""

    def _procreg_start(
        self,
        args: tuple[Any, ...],
        link: bool,
        monitor: bool,
        trap_exits: bool,
        idle_timeout: float | None,
        ready: asyncio.Future[Pid] | None,
        pid: Pid | None = None,
        bound: tuple[int | None, str | None] | None = None,
    ) -> tuple[_Proc, asyncio.Future[Pid] | None]:
        """Start a process of this class (see `procreg.server`)."""


def is_server_class(obj: object) -> TypeGuard[ServerClass]:
    """True if `obj` is a `procreg.Server` subclass: a class carrying the
    ``_procreg_server`` marker (`Server` sets it; the runtime layer cannot import
    `Server`, which sits above it). The one place that question is answered."""
    return isinstance(obj, type) and hasattr(obj, "_procreg_server")


def spawn(
    node: Kernel,
    fn: Any,
    *args: Any,
    link: bool = False,
    monitor: bool = False,
    trap_exits: bool = False,
    idle_timeout: float | None = None,
    max_mailbox: int | None = None,
    overflow: str | None = None,
) -> Pid:
    """Start a process running ``await fn(*args)``; see `procreg.spawn`."""
    if is_server_class(fn):
        pid: Pid = fn.start(
            *args,
            link=link,
            monitor=monitor,
            trap_exits=trap_exits,
            idle_timeout=idle_timeout,
            max_mailbox=max_mailbox,
            overflow=overflow,
        )
        return pid
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"spawn() needs an `async def` function or a Server subclass, got {fn!r}")
    check_timeout(idle_timeout, "idle_timeout")
    if max_mailbox is not None or overflow is not None:
        check_bound(max_mailbox, overflow)
    parent = node.me() if (link or monitor) else None
    if (link or monitor) and parent is None:
        raise NotInProcess("spawn(link=True / monitor=True) must be called from inside a process")
    proc = node._start_body(node._new_pid(), fn, args)
    node.setup(proc, parent, link, monitor, trap_exits, idle_timeout)
    if max_mailbox is not None or overflow is not None:
        node.bound(proc, max_mailbox, overflow)
    return proc._procreg_pid


def start_body(
    node: Kernel,
    pid: Pid,
    fn: Callable[..., Coroutine[Any, Any, Any]],
    args: tuple[Any, ...],
    result: asyncio.Future[Any] | None = None,
    cls: type[Process] = Process,
) -> Process:
    """A coroutine process `pid` running ``fn(*args)`` (its outcome also set on
    `result`, if given); its body starts on the next loop turn. `cls` may be a
    subclass of `Process` with its own delivery (the web layer's connections)."""
    proc = cls(node, pid)
    proc._result = result
    node._add(proc)
    proc._task = node._loop.create_task(proc._main(fn, args))
    return proc


def spawn_main(
    node: Kernel,
    fn: Callable[..., Coroutine[Any, Any, Any]],
    args: tuple[Any, ...],
    result: asyncio.Future[Any],
) -> Pid:
    """Spawn the main process of `procreg.run`: its outcome goes to `result`
    (and a crash is not logged as a crash report, since `run` re-raises it)."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"run() needs an `async def` function, got {fn!r}")
    return node._start_body(node._new_pid(), fn, args, result)._procreg_pid


async def start_with_pid(
    node: Kernel,
    pid: Pid,
    factory: Any,
    args: tuple[Any, ...],
    idle_timeout: float | None,
    key: tuple[str, Any] | None = None,
) -> _Proc:
    """Start `factory` (a `Server` subclass or an ``async def`` body) as the process
    `pid`, taken earlier from this node's serials: the cluster registry claims a
    key for a pid before its process exists, so a losing claim starts nothing.
    Returns once ``init`` has completed (raising its error). `key`, the
    ``(table, key)`` the process is started for, lets an ``async init`` that
    waits on its own key raise `Deadlock` (see `waits.started_for`)."""
    if node.starts_now(factory):
        return node.start_now(pid, factory, args, idle_timeout)
    assert is_server_class(factory)  # (`starts_now` takes everything else)
    ready: asyncio.Future[Pid] = node._loop.create_future()
    proc, _ = factory._procreg_start(args, False, False, False, idle_timeout, ready, pid)
    if key is None:
        await ready
    else:
        with started_for(node, key, proc):
            await ready
    return proc


def starts_now(factory: Any) -> bool:
    """Whether `start_now` can start `factory`: anything but a server with an
    ``async def init``."""
    if is_server_class(factory):
        return not factory._procreg_async_mask & 8
    return True


def start_now(
    node: Kernel, pid: Pid, factory: Any, args: tuple[Any, ...], idle_timeout: float | None
) -> _Proc:
    """`start_with_pid` without awaiting, for a factory `starts_now` accepts: a
    server's ``init`` has run when this returns (its error raised here)."""
    if is_server_class(factory):
        proc, _ = factory._procreg_start(args, False, False, False, idle_timeout, None, pid)
        return proc
    check_timeout(idle_timeout, "idle_timeout")
    body = node._start_body(pid, factory, args)
    node.setup(body, None, False, False, False, idle_timeout)
    return body


def setup(
    node: Kernel,
    proc: _Proc,
    parent: _Proc | None,
    link: bool,
    monitor: bool,
    trap_exits: bool,
    idle_timeout: float | None,
) -> Ref | None:
    """Apply spawn options to a new process (used by `spawn` and `Server.start`)."""
    ref = None
    if trap_exits:
        proc._procreg_extra().trap = True
    if idle_timeout is not None:
        ext = proc._procreg_extra()
        ext.idle_timeout = idle_timeout
        ext.idle_last = node._loop.time()
        ext.idle_handle = node._loop.call_at(ext.idle_last + idle_timeout, proc._procreg_idle_check)
    if parent is not None:
        if link:
            node._add_link(parent, proc)
        if monitor:
            ref = node._add_monitor(parent, proc)
    return ref


def bound(node: Kernel, proc: _Proc, max_mailbox: int | None, overflow: str | None) -> None:
    """Set the mailbox bound of `proc` (``0``: none; None: keep the node's default)
    and its overflow policy (None: the node's default)."""
    if max_mailbox is not None:
        proc._procreg_max = max_mailbox or None
    if overflow is not None:
        proc._procreg_extra().overflow = overflow
