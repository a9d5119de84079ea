"""A `Server`'s ``async def`` callbacks, and how a reply reaches its caller.

An ``async def`` handler (or ``init``) runs as a task of its own, an *async step*:
the server is ``BUSY`` meanwhile and its mail queues; when the step ends, its reply
(unless `NOREPLY`) goes to the caller and the server goes back to idle, or to the
run queue if mail waits (`Server._procreg_resume`). A synchronous callback never
comes here.

`init_async`, `go_async` and `async_step` are `Server`'s methods, written here as
functions taking the process first and bound in its class body, as the kernel's
are. `NOREPLY` is re-exported from `procreg.server` (and `procreg`).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from .errors import ProcessExited, Stop
from .pid import Pid
from .process import BUSY, EXITING, _Proc, current_caller, current_process

if TYPE_CHECKING:
    from .server import Server

__all__ = ["NOREPLY", "async_step", "go_async", "init_async"]


class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "procreg.NOREPLY"


NOREPLY: Final = _NoReply()
"""Returned by ``handle_call`` to answer later with `procreg.reply`."""


async def init_async(
    proc: Server,
    args: tuple[Any, ...],
    ready: asyncio.Future[Pid] | None,
    parent: _Proc | None,
    link: bool,
    monitor: bool,
) -> None:
    current_process.set(proc)
    node = proc._procreg_node
    try:
        await proc.init(*args)
    except asyncio.CancelledError:
        if ready is not None and not ready.done():
            reason = proc._procreg_ext.exit_reason if proc._procreg_ext is not None else "killed"
            ready.set_exception(ProcessExited(reason, proc._procreg_pid))
        return
    except BaseException as exc:
        proc._procreg_extra().task = None
        waited = ready is not None and not ready.done()
        if waited:
            assert ready is not None
            ready.set_exception(exc)
        if proc._procreg_st < EXITING:
            if not waited and not isinstance(exc, Stop):
                node._crash_report(proc, exc, ("init", args))
            proc._procreg_st = EXITING  # init failed: no terminate
            proc._procreg_finish(exc.reason if isinstance(exc, Stop) else exc)
        if not isinstance(exc, Exception):
            raise
        return
    proc._procreg_extra().task = None
    if parent is not None:
        if parent._procreg_st >= EXITING:  # the starter is gone: nobody to link or report to
            node._end(proc, "shutdown")
            return
        node.setup(proc, parent, link, monitor, False, None)
    if ready is not None and not ready.done():
        ready.set_result(proc._procreg_pid)
    proc._procreg_resume()


def go_async(proc: Server, coro: Any, caller: Any, msg: Any) -> None:
    node = proc._procreg_node
    node._current = None
    proc._procreg_handled += 1
    node.handled += 1
    proc._procreg_st = BUSY
    if caller is not None:
        proc._procreg_owe(caller)
    ext = proc._procreg_extra()
    if ext.idle_timeout is not None:
        ext.idle_last = node._loop.time()
    task = ext.task = node._loop.create_task(proc._procreg_async_step(coro, caller, msg))
    # a task cancelled before its first step never awaits `coro`: close it then
    task.add_done_callback(partial(_close, coro))
    if proc._procreg_mail is not None and not proc._procreg_mail:
        proc._procreg_mail = None


async def async_step(proc: Server, coro: Any, caller: Any, msg: Any) -> None:
    current_process.set(proc)
    if caller is not None:
        current_caller.set(caller)
    node = proc._procreg_node
    ext = proc._procreg_extra()
    me = asyncio.current_task()

    def release() -> None:
        if ext.task is me:  # not the terminate task that may have replaced it
            ext.task = None

    try:
        result = await coro
    except asyncio.CancelledError:
        release()
        if proc._procreg_st < EXITING:  # cancelled from outside procreg
            node._end(proc, "shutdown")
        return
    except BaseException as exc:
        release()
        node._fail(proc, exc, msg)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return
    release()
    if proc._procreg_st >= EXITING:
        if caller is not None and result is not NOREPLY:
            _reply_any(caller, result)
        return
    if caller is not None and result is not NOREPLY:
        if ext.deferred is not None:
            ext.deferred.discard(caller)
        _reply_any(caller, result)
    proc._procreg_resume()


def _close(coro: Any, _task: Any) -> None:
    coro.close()


def _init_cut(proc: Server, ready: asyncio.Future[Pid], _task: Any) -> None:
    if not ready.done():
        ext = proc._procreg_ext
        reason = ext.exit_reason if ext is not None and ext.exit_reason is not None else "killed"
        ready.set_exception(ProcessExited(reason, proc._procreg_pid))


def _reply_any(caller: Any, value: Any) -> None:
    if isinstance(caller, asyncio.Future):
        if not caller.done():
            caller.set_result(value)
    else:
        caller.reply(value)
