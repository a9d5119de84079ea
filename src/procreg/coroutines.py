"""Coroutine processes: an ``async def`` body run as a task of its own, reading its
mailbox with `procreg.receive` (what `procreg.spawn` makes). `Process` is
re-exported from `procreg.process`, where the state every process shares lives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .errors import ProcessExited
from .messages import Call
from .pid import Pid
from .process import (
    _SIGNALS,
    DEAD,
    EXITING,
    _Proc,
    current_process,
)

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = ["Process"]


class Process(_Proc):
    """A coroutine process: an ``async def`` body that reads its own mailbox with
    `procreg.receive`. Made by `procreg.spawn`."""

    __slots__ = ("_began", "_last", "_match", "_result", "_task", "_waiter")

    _task: asyncio.Task[Any] | None
    _waiter: asyncio.Future[Any] | None
    _match: Callable[[Any], bool] | None

    def __init__(self, node: Kernel, pid: Pid) -> None:
        self._procreg_setup(node, pid)
        self._task = None
        self._waiter = None
        self._match = None
        self._result: asyncio.Future[Any] | None = None
        self._last: Any = None  # the last message received, for crash reports
        self._began = False  # the body has started running

    def _procreg_info(self, msg: Any) -> bool:
        if self._procreg_st >= EXITING:
            return False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            match = self._match
            if match is None:
                waiter.set_result(msg)
                return True
            try:
                ok = match(msg)
            except BaseException as exc:  # the receiver's predicate failed: its problem
                waiter.set_exception(exc)
                ok = False
            if ok:
                waiter.set_result(msg)
                return True
        mail = self._procreg_mail
        if mail is None:
            self._procreg_mail = mail = deque()
        elif (
            self._procreg_max is not None
            and len(mail) >= self._procreg_max
            and type(msg) not in _SIGNALS
        ):
            self._procreg_refuse(msg.caller if type(msg) is Call else None)
            return False
        mail.append(msg)
        return True

    _procreg_cast = _procreg_info

    def _procreg_call(self, caller: Any, request: Any) -> bool:
        return self._procreg_info(Call(request, caller))

    def _owe_handed(self, waiter: asyncio.Future[Any] | None) -> None:
        """A call handed to a `receive` that will not return it (the process ends
        before its body resumes): owe it, so that the exit fails its caller with
        `ProcessExited` instead of leaving it to time out."""
        if waiter is None or not waiter.done() or waiter.cancelled() or waiter.exception():
            return
        msg = waiter.result()
        if type(msg) is Call:
            self._procreg_owe(msg.caller)

    def _procreg_finish(self, reason: Any) -> None:
        if self._waiter is not None and self._procreg_st != DEAD:
            self._owe_handed(self._waiter)  # ("kill": the body never resumes first)
        super()._procreg_finish(reason)

    def _procreg_pending_callers(self, mail: deque[Any]) -> list[Any]:
        return [m.caller for m in mail if type(m) is Call]

    def _procreg_stop_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def _procreg_unwinds(self) -> bool:
        task = self._task
        return (
            self._began  # a task cancelled before its first step never runs the body
            and task is not None
            and not task.done()
            and task is not asyncio.current_task(self._procreg_node._loop)
        )

    def _procreg_kill_exiting(self) -> None:
        """A body that has not unwound yet (it may have swallowed the cancellation)
        is finished now; its task is cancelled again."""
        ext = self._procreg_extra()
        ext.exit_reason = "kill"
        self._procreg_finish("kill")
        self._procreg_stop_task()

    def _procreg_is_idle(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    async def _main(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]
    ) -> None:
        current_process.set(self)
        node = self._procreg_node
        result = self._result
        self._began = True
        try:
            value = await fn(*args)
        except asyncio.CancelledError:
            self._task = None
            if self._procreg_st < EXITING:  # cancelled from outside procreg
                node._end(self, "shutdown")
            if result is not None and not result.done():
                result.cancel()
            return
        except BaseException as exc:
            self._task = None
            reason = node._fail(self, exc, self._last, report=result is None)
            if result is not None and not result.done():
                if reason is exc:
                    result.set_exception(exc)
                elif reason == "normal":
                    result.set_result(None)
                else:
                    result.set_exception(ProcessExited(reason, self._procreg_pid))
            if not isinstance(exc, Exception):
                raise
            return
        else:
            self._task = None
            if self._procreg_st < EXITING:
                node._end(self, "normal")
            if result is not None and not result.done():
                result.set_result(value)
        finally:
            if self._procreg_st == EXITING:  # an exit signal ended it: it has unwound now
                ext = self._procreg_ext
                self._procreg_finish(ext.exit_reason if ext is not None else "shutdown")

    async def _receive(self, timeout: float | None, match: Callable[[Any], bool] | None) -> Any:
        if self._procreg_st >= EXITING or (
            self._procreg_reg is not None and not self._procreg_lease_ok()
        ):
            # the process has ended (its body swallowed the cancellation, or the node
            # has just fenced itself, ending it): stop it here
            raise asyncio.CancelledError
        mail = self._procreg_mail
        if mail:
            if len(mail) > self._procreg_peak:
                self._procreg_peak = len(mail)
            if match is None:
                return self._took(mail.popleft())
            for i, msg in enumerate(mail):
                if match(msg):
                    del mail[i]
                    return self._took(msg)
        if timeout is not None and timeout <= 0:
            raise TimeoutError("receive timed out")
        loop = self._procreg_node._loop
        waiter = loop.create_future()
        self._waiter = waiter
        self._match = match
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, _expire, waiter)
        try:
            msg = await waiter
        except BaseException:
            self._owe_handed(waiter)  # (ending while a call was on its way in)
            raise
        finally:
            self._waiter = None
            self._match = None
            if handle is not None:
                handle.cancel()
        if self._procreg_reg is not None and not self._procreg_lease_ok():
            if type(msg) is Call:  # failed with ProcessExited as the process ends
                self._procreg_owe(msg.caller)
            raise asyncio.CancelledError
        return self._took(msg)

    def _procreg_lease_ok(self) -> bool:
        """For a registered process: False if the node's lease check fenced it (woken
        past the deadline) or it has ended."""
        guard = self._procreg_node._lease_guard
        if guard is not None:
            guard()  # (past the deadline it fences the node, which ends this process)
        return self._procreg_st < EXITING

    def _took(self, msg: Any) -> Any:
        """Bookkeeping for a message `receive` hands out."""
        self._procreg_handled += 1
        self._procreg_node.handled += 1
        if type(msg) is Call:
            self._procreg_owe(msg.caller)
        ext = self._procreg_ext
        if ext is not None and ext.idle_timeout is not None:
            ext.idle_last = self._procreg_node._loop.time()
        self._last = msg
        return msg


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("receive timed out"))
