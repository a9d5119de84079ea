"""`Server`: a request/reply process with no task of its own while idle.

A server is an object with a mailbox. When it has mail the node puts it on its run
queue and, on the next loop turn, hands it one message at a time (up to the node's
``batch``) through ``handle_call`` / ``handle_cast`` / ``handle_info``. Any handler
may be ``async def``: then only this process waits for it; its mail queues meanwhile.

>>> import procreg
>>> class Counter(procreg.Server):
...     def init(self, start=0):
...         self.n = start
...     def handle_call(self, request):
...         if request == "get":
...             return self.n
...     def handle_cast(self, msg):
...         self.n += msg
>>> async def main():
...     pid = Counter.start(10)
...     procreg.cast(pid, 5)
...     return await procreg.call(pid, "get")
>>> procreg.run(main)
15
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import Any, ClassVar, Final, TypeVar

from .errors import NotInProcess, ProcessExited, Stop
from .node import _LAZY, check_bound, check_timeout, current_node
from .pid import Pid
from .process import (
    _SIGNALS,
    BUSY,
    CALL,
    CAST,
    EXITING,
    IDLE,
    INFO,
    SCHEDULED,
    _Proc,
    current_caller,
    current_process,
    fail_caller,
)

__all__ = ["NOREPLY", "Server"]

log = logging.getLogger("procreg")

_ASYNC_CAST: Final = 1
_ASYNC_CALL: Final = 2
_ASYNC_INFO: Final = 4
_ASYNC_INIT: Final = 8
_ASYNC_TERMINATE: Final = 16
_BOUNDED: Final = 32  # (not async: the class sets max_mailbox or overflow)
_RARE: Final = _ASYNC_INIT | _BOUNDED


class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "procreg.NOREPLY"


NOREPLY: Final = _NoReply()
"""Returned by ``handle_call`` to answer later with `procreg.reply`."""

S = TypeVar("S", bound="Server")


class Server(_Proc):
    """Base class of server processes. Override the callbacks you need:

    - ``init(*args)``: set up state (instead of ``__init__``); raising here makes
      `start` raise and no process remains.
    - ``handle_call(request)``: return the reply, or `NOREPLY` after keeping
      ``procreg.caller()`` to answer later with `procreg.reply`.
    - ``handle_cast(msg)`` and ``handle_info(msg)`` (plain sends, `Down`, `Exit`,
      timer messages); the defaults log the unexpected message and ignore it.
    - ``terminate(reason)``: called when the process ends, except on ``"kill"``.

    Any callback may be ``async def``. Start one with ``MyServer.start(*args)``.

    Class attributes ``max_mailbox`` and ``overflow`` set a mailbox bound and its
    policy for every process of the class, however it is started (`start`,
    `procreg.get_or_spawn`, a supervisor); `start`'s own arguments override them.
    """

    __slots__ = ()
    _procreg_server: Final = True
    _async_mask = 0
    kind = "server"
    max_mailbox: ClassVar[int | None] = None
    """The mailbox bound of this class's processes (None: the node's default)."""
    overflow: ClassVar[str | None] = None
    """What a full mailbox does: ``"drop"`` or ``"exit"`` (None: the node's default)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__}: a Server sets up its state in init(*args), not __init__"
            )
        mask = 0
        for bit, name in (
            (_ASYNC_CAST, "handle_cast"),
            (_ASYNC_CALL, "handle_call"),
            (_ASYNC_INFO, "handle_info"),
            (_ASYNC_INIT, "init"),
            (_ASYNC_TERMINATE, "terminate"),
        ):
            if inspect.iscoroutinefunction(getattr(cls, name)):
                mask |= bit
        cls._direct_call = not mask & _ASYNC_CALL
        check_bound(cls.max_mailbox, cls.overflow)
        if cls.max_mailbox is not None or cls.overflow is not None:
            mask |= _BOUNDED  # read by _start along with the async bits: no extra lookup
        cls._async_mask = mask

    # -- callbacks ----------------------------------------------------------------
    def init(self, *args: Any) -> Any:
        """Set up the process's state from the arguments given to `start`."""
        if args:
            raise TypeError(f"{type(self).__name__}.init() takes no arguments, got {args!r}")

    def handle_call(self, request: Any) -> Any:
        """Answer a `procreg.call`; the default crashes the process."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls: {request!r}")

    def handle_cast(self, msg: Any) -> Any:
        """Handle a `procreg.cast`; the default logs and ignores it."""
        log.warning("%r: unexpected cast %r", self.pid, msg)

    def handle_info(self, msg: Any) -> Any:
        """Handle any other message; the default logs and ignores it."""
        log.warning("%r: unexpected message %r", self.pid, msg)

    def terminate(self, reason: Any) -> Any:
        """Clean up when the process ends (not called on ``"kill"``)."""

    # -- starting -----------------------------------------------------------------
    @classmethod
    def start(
        cls,
        *args: Any,
        link: bool = False,
        monitor: bool = False,
        trap_exits: bool = False,
        idle_timeout: float | None = None,
        max_mailbox: int | None = None,
        overflow: str | None = None,
    ) -> Pid:
        """Start a process of this class with ``init(*args)`` and return its pid.

        A sync ``init`` runs before `start` returns; if it raises, `start` raises
        and no process remains. An ``async`` init runs as the process's first step
        (its mail waits); use `start_ready` to wait for it and see its errors.
        The options are those of `procreg.spawn`; ``max_mailbox`` and ``overflow``
        default to the class attributes of the same names.
        """
        if max_mailbox is None and overflow is None:
            proc, _ = cls._start(args, link, monitor, trap_exits, idle_timeout, None)
        else:
            check_bound(max_mailbox, overflow)
            bound = (max_mailbox, overflow)
            proc, _ = cls._start(args, link, monitor, trap_exits, idle_timeout, None, None, bound)
        return proc.pid

    @classmethod
    async def start_ready(
        cls,
        *args: Any,
        link: bool = False,
        monitor: bool = False,
        trap_exits: bool = False,
        idle_timeout: float | None = None,
        max_mailbox: int | None = None,
        overflow: str | None = None,
    ) -> Pid:
        """Like `start`, but returns only once ``init`` (sync or async) has completed,
        and raises its exception if it failed."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Pid] = loop.create_future()
        bound = None
        if max_mailbox is not None or overflow is not None:
            check_bound(max_mailbox, overflow)
            bound = (max_mailbox, overflow)
        proc, ready_ = cls._start(args, link, monitor, trap_exits, idle_timeout, ready, None, bound)
        if ready_ is None:
            return proc.pid
        return await ready_

    @classmethod
    def _start(
        cls,
        args: tuple[Any, ...],
        link: bool,
        monitor: bool,
        trap_exits: bool,
        idle_timeout: float | None,
        ready: asyncio.Future[Pid] | None,
        pid: Pid | None = None,
        bound: tuple[int | None, str | None] | None = None,
    ) -> tuple[Server, asyncio.Future[Pid] | None]:
        node = current_node()
        if idle_timeout is not None:
            check_timeout(idle_timeout, "idle_timeout")
        parent = node.me() if (link or monitor) else None
        if (link or monitor) and parent is None:
            raise NotInProcess(
                "start(link=True / monitor=True) must be called from inside a process"
            )
        proc = cls.__new__(cls)
        proc._init_proc(node, pid if pid is not None else node._new_pid())
        node._add(proc)
        mask = cls._async_mask
        if mask & _RARE or bound is not None:  # (one test on the common path)
            if bound is not None or mask & _BOUNDED:
                max_mailbox, overflow = bound if bound is not None else (None, None)
                node.bound(
                    proc,
                    cls.max_mailbox if max_mailbox is None else max_mailbox,
                    cls.overflow if overflow is None else overflow,
                )
            if mask & _ASYNC_INIT:
                proc._st = BUSY
                if ready is None:  # nobody waits for init: link now, so a failure is seen
                    node.setup(proc, parent, link, monitor, trap_exits, idle_timeout)
                    task = node._loop.create_task(proc._init_async(args, None, None, False, False))
                else:  # start_ready: link once init succeeded, as a sync init does
                    node.setup(proc, None, False, False, trap_exits, idle_timeout)
                    task = node._loop.create_task(
                        proc._init_async(args, ready, parent, link, monitor)
                    )
                proc.ext().task = task
                return proc, ready
        prev = node._current
        node._current = proc
        try:
            proc.init(*args)
        except BaseException as exc:
            node._current = prev
            proc._st = EXITING
            proc._finish(exc)
            raise
        node._current = prev
        node.setup(proc, parent, link, monitor, trap_exits, idle_timeout)
        return proc, None

    async def _init_async(
        self,
        args: tuple[Any, ...],
        ready: asyncio.Future[Pid] | None,
        parent: _Proc | None,
        link: bool,
        monitor: bool,
    ) -> None:
        current_process.set(self)
        node = self._node
        try:
            await self.init(*args)
        except asyncio.CancelledError:
            if ready is not None and not ready.done():
                reason = self._ext.exit_reason if self._ext is not None else "killed"
                ready.set_exception(ProcessExited(reason, self.pid))
            return
        except BaseException as exc:
            self.ext().task = None
            waited = ready is not None and not ready.done()
            if waited:
                assert ready is not None
                ready.set_exception(exc)
            if self._st < EXITING:
                if not waited and not isinstance(exc, Stop):
                    node._crash_report(self, exc, ("init", args))
                self._st = EXITING  # init failed: no terminate
                self._finish(exc.reason if isinstance(exc, Stop) else exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.ext().task = None
        if parent is not None:
            if parent._st >= EXITING:  # the starter is gone: nobody to link or report to
                node._end(self, "shutdown")
                return
            node.setup(self, parent, link, monitor, False, None)
        if ready is not None and not ready.done():
            ready.set_result(self.pid)
        self._resume()

    def _resume(self) -> None:
        """After an async step: back to idle, or to the run queue if mail waits."""
        if self._st != BUSY:
            return
        if self._mail:
            self._st = SCHEDULED
            self._node._schedule(self)
        else:
            self._st = IDLE
            self._mail = None

    # -- delivery -----------------------------------------------------------------
    # (The bound is checked only when the mailbox exists: an idle server has none.)
    def _cast(self, msg: Any) -> bool:
        st = self._st
        if st >= EXITING:
            return False
        mail = self._mail
        if mail is None:
            self._mail = mail = deque()
        elif self._max is not None and len(mail) >= self._max:
            self._refuse(None)
            return False
        mail.append((CAST, msg))
        if st == IDLE:
            self._st = SCHEDULED
            self._node._schedule(self)
        return True

    def _info(self, msg: Any) -> bool:
        st = self._st
        if st >= EXITING:
            return False
        mail = self._mail
        if mail is None:
            self._mail = mail = deque()
        elif self._max is not None and len(mail) >= self._max and type(msg) not in _SIGNALS:
            self._refuse(None)
            return False
        mail.append((INFO, msg))
        if st == IDLE:
            self._st = SCHEDULED
            self._node._schedule(self)
        return True

    def _call(self, caller: Any, request: Any) -> bool:
        st = self._st
        mail = self._mail
        if mail is None:
            self._mail = mail = deque()
        elif self._max is not None and len(mail) >= self._max:
            self._refuse(caller)
            return False
        mail.append((CALL, caller, request))
        if st == IDLE:
            self._st = SCHEDULED
            self._node._schedule(self)
        return True

    # -- dispatch -----------------------------------------------------------------
    async def _call_direct(self, request: Any, timeout: float | None) -> Any:
        """Handle a call in the caller's turn (direct dispatch).

        Only for an idle server (no mail, no handler running) with a sync
        ``handle_call``: nothing is queued ahead of the request, so running the
        handler now is indistinguishable from scheduling it, and saves two event
        loop iterations. The node makes callers yield every `INLINE_BUDGET` calls.
        """
        node = self._node
        node._current = self
        node._caller = _LAZY
        self._st = SCHEDULED  # mail sent to us meanwhile queues without scheduling
        try:
            reply = self.handle_call(request)
        except BaseException as exc:
            node._current = None
            node._caller = None
            reason = node._fail(self, exc, request)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            me = current_process.get()
            if me is not None and me._st >= EXITING:
                # the caller itself was ended by the crash (linked): stop here
                raise asyncio.CancelledError from exc
            raise ProcessExited(reason, self.pid) from exc
        node._current = None
        caller = node._caller
        node._caller = None
        self._handled += 1
        node.handled += 1
        if self._st == SCHEDULED:
            if self._mail:
                node._schedule(self)
            else:
                self._st = IDLE
                self._mail = None
            ext = self._ext
            if ext is not None and ext.idle_timeout is not None:
                ext.idle_last = node._loop.time()
        if reply is not NOREPLY:
            return reply
        # answered later with reply(caller, value): wait like a scheduled call
        if caller is _LAZY:
            caller = node._loop.create_future()
        if self._st < EXITING:
            self._owe(caller)
        elif not caller.done():
            caller.set_exception(ProcessExited("ended without replying", self.pid))
        if timeout is not None:
            node._deadlines.add(timeout, caller)
        return await caller

    def _run(self) -> None:
        if self._st != SCHEDULED:
            return
        node = self._node
        mail = self._mail
        assert mail is not None
        amask = self._async_mask
        n = node._batch
        if len(mail) > self._peak:
            self._peak = len(mail)
        item: Any = None
        node._current = self
        try:
            while True:
                item = mail.popleft()
                tag = item[0]
                if tag == CAST:
                    if amask & _ASYNC_CAST:
                        self._go_async(self.handle_cast(item[1]), None, item[1])
                        return
                    self.handle_cast(item[1])
                elif tag == CALL:
                    caller = item[1]
                    node._caller = caller
                    if amask & _ASYNC_CALL:
                        self._go_async(self.handle_call(item[2]), caller, item[2])
                        return
                    reply = self.handle_call(item[2])
                    node._caller = None
                    if reply is NOREPLY:
                        if self._st < EXITING:
                            self._owe(caller)
                        else:  # it ended itself while handling: it can never reply
                            fail_caller(caller, ProcessExited("ended without replying", self.pid))
                    elif caller.__class__ is asyncio.Future:
                        if not caller.done():
                            caller.set_result(reply)
                    else:
                        _reply_any(caller, reply)
                else:
                    if amask & _ASYNC_INFO:
                        self._go_async(self.handle_info(item[1]), None, item[1])
                        return
                    self.handle_info(item[1])
                n -= 1
                if not n or not mail or self._st != SCHEDULED:
                    break
        except BaseException as exc:
            node._current = None
            node._caller = None
            if item is not None and item[0] == CALL:
                self._owe(item[1])
            node._fail(self, exc, item[-1] if item is not None else None)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        node._current = None
        done = node._batch - n
        self._handled += done
        node.handled += done
        if self._st == SCHEDULED:
            if mail:
                node._runq.append(self)
            else:
                self._st = IDLE
                self._mail = None
            ext = self._ext
            if ext is not None and ext.idle_timeout is not None:
                ext.idle_last = node._loop.time()

    def _go_async(self, coro: Any, caller: Any, msg: Any) -> None:
        node = self._node
        node._current = None
        self._handled += 1
        node.handled += 1
        self._st = BUSY
        if caller is not None:
            self._owe(caller)
        ext = self.ext()
        if ext.idle_timeout is not None:
            ext.idle_last = node._loop.time()
        ext.task = node._loop.create_task(self._async_step(coro, caller, msg))
        if self._mail is not None and not self._mail:
            self._mail = None

    async def _async_step(self, coro: Any, caller: Any, msg: Any) -> None:
        current_process.set(self)
        if caller is not None:
            current_caller.set(caller)
        node = self._node
        ext = self.ext()
        me = asyncio.current_task()

        def release() -> None:
            if ext.task is me:  # not the terminate task that may have replaced it
                ext.task = None

        try:
            result = await coro
        except asyncio.CancelledError:
            release()
            if self._st < EXITING:  # cancelled from outside procreg
                node._end(self, "shutdown")
            return
        except BaseException as exc:
            release()
            node._fail(self, exc, msg)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        release()
        if self._st >= EXITING:
            if caller is not None and result is not NOREPLY:
                _reply_any(caller, result)
            return
        if caller is not None and result is not NOREPLY:
            if ext.deferred is not None:
                ext.deferred.discard(caller)
            _reply_any(caller, result)
        self._resume()

    # -- exit -----------------------------------------------------------------
    def _pending_callers(self, mail: deque[Any]) -> list[Any]:
        return [item[1] for item in mail if item[0] == CALL]

    def _stop_task(self) -> None:
        ext = self._ext
        if ext is None or ext.task is None:
            return
        task = ext.task
        if not task.done() and task is not asyncio.current_task(self._node._loop):
            task.cancel()
        ext.task = None

    def _terminate(self, reason: Any) -> Any:
        if type(self).terminate is Server.terminate:
            return None
        node = self._node
        prev = node._current
        node._current = self
        try:
            result = self.terminate(reason)
        except Exception:
            log.exception("terminate() of %r raised", self.pid)
            return None
        finally:
            node._current = prev
        if self._async_mask & _ASYNC_TERMINATE:
            return result
        return None

    def _is_idle(self) -> bool:
        return self._st == IDLE

    def _message(self, item: Any) -> Any:
        return item[1] if item[0] == INFO else None


def _reply_any(caller: Any, value: Any) -> None:
    if isinstance(caller, asyncio.Future):
        if not caller.done():
            caller.set_result(value)
    else:
        caller.reply(value)
