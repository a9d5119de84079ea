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
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from . import asyncsteps
from .asyncsteps import NOREPLY, _init_cut, _reply_any
from .errors import NotInProcess, ProcessExited
from .kernel import _LAZY, current_node
from .options import check_bound, check_timeout
from .pid import Pid
from .process import (
    _SIGNALS,
    BUSY,
    CALL,
    CAST,
    COMPAT_NAMES,
    EXITING,
    IDLE,
    INFO,
    SCHEDULED,
    TIMER,
    _Proc,
    current_process,
    fail_caller,
)
from .waits import serving_task, waiting_on

__all__ = ["NOREPLY", "Server"]

log = logging.getLogger("procreg")

_ASYNC_CAST: Final = 1
_ASYNC_CALL: Final = 2
_ASYNC_INFO: Final = 4
_ASYNC_INIT: Final = 8
_ASYNC_TERMINATE: Final = 16
_BOUNDED: Final = 32  # (not async: the class sets max_mailbox or overflow)
_RARE: Final = _ASYNC_INIT | _BOUNDED


S = TypeVar("S", bound="Server")

RESERVED: Final = "_procreg_"
"""The name prefix of the runtime's own attributes and methods on a process object.
A `Server` subclass may use any other name (``_node``, ``_state``, ``_mail``, ...)."""


class Server(_Proc):
    """Base class of server processes. Override the callbacks you need:

    - ``init(*args)``: set up state (instead of ``__init__``); raising here makes
      `start` raise and no process remains.
    - ``handle_call(request)``: return the reply, or `NOREPLY` after keeping
      ``procreg.caller()`` to answer later with `procreg.reply`.
    - ``handle_cast(msg)`` and ``handle_info(msg)`` (plain sends, `Down`, `Exit`,
      timer messages); the defaults log the unexpected message and ignore it.
    - ``terminate(reason)``: called when the process ends, except on ``"kill"``.
    - ``handoff()`` (optional, sync): for a cluster-scoped server (``scope="cluster"``,
      `procreg.scope`), the picklable state to move to its new home node when its
      node stops gracefully; the new ``init`` reads it from
      ``procreg.takeover().state``. Return `procreg.NO_STATE` to move without state.

    Any callback but ``handoff`` may be ``async def``. Start one with ``MyServer.start(*args)``.

    Attributes are the subclass's own: the runtime keeps its state under names that
    start with ``_procreg_`` (`RESERVED`) and defining such a name, or ``pid`` (the
    read-only pid of the process), in a subclass raises `TypeError` (as Pykka
    reserves ``actor_*``). Assigning ``self.pid`` raises `AttributeError`.

    Class attributes ``max_mailbox`` and ``overflow`` set a mailbox bound and its
    policy for every process of the class, however it is started (`start`,
    `procreg.get_or_spawn`, a supervisor); `start`'s own arguments override them.
    They are configuration the runtime reads at start, not runtime state.
    """

    __slots__ = ()
    _procreg_server: Final = True
    _procreg_async_mask = 0
    _procreg_kind = "server"
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
        reserved = sorted(
            n for n in cls.__dict__ if n == "pid" or n.startswith(RESERVED) or n in COMPAT_NAMES
        )
        if reserved:
            raise TypeError(
                f"{cls.__name__} defines {', '.join(reserved)}: `pid` and names starting "
                f"with {RESERVED!r} belong to the procreg runtime"
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
        cls._procreg_direct_call = not mask & _ASYNC_CALL
        check_bound(cls.max_mailbox, cls.overflow)
        if cls.max_mailbox is not None or cls.overflow is not None:
            mask |= _BOUNDED  # read by _procreg_start with the async bits: no extra lookup
        cls._procreg_async_mask = mask

    # -- callbacks ----------------------------------------------------------------
    # Type checkers see ``init(*args, **kwargs)`` (a gradual signature), so that a
    # subclass may declare the parameters it takes (``def init(self, name: str)``)
    # without an "incompatible override" error under mypy or pyright; the runtime
    # definition is the one below, unchanged. The other callbacks' parameters are
    # positional-only, so a subclass may name them as it likes.
    if TYPE_CHECKING:

        def init(self, *args: Any, **kwargs: Any) -> Any:
            """Set up the process's state from the arguments given to `start`
            (positional; the default takes none)."""

    else:

        def init(self, *args):
            """Set up the process's state from the arguments given to `start`
            (positional; the default takes none)."""
            if args:
                raise TypeError(f"{type(self).__name__}.init() takes no arguments, got {args!r}")

    def handle_call(self, request: Any, /) -> Any:
        """Answer a `procreg.call`; the default crashes the process."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls: {request!r}")

    def handle_cast(self, msg: Any, /) -> Any:
        """Handle a `procreg.cast`; the default logs and ignores it."""
        log.warning("%r: unexpected cast %r", self._procreg_pid, msg)

    def handle_info(self, msg: Any, /) -> Any:
        """Handle any other message; the default logs and ignores it."""
        log.warning("%r: unexpected message %r", self._procreg_pid, msg)

    def terminate(self, reason: Any, /) -> Any:
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
            proc, _ = cls._procreg_start(args, link, monitor, trap_exits, idle_timeout, None)
        else:
            check_bound(max_mailbox, overflow)
            bound = (max_mailbox, overflow)
            proc, _ = cls._procreg_start(
                args, link, monitor, trap_exits, idle_timeout, None, None, bound
            )
        return proc._procreg_pid

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
        proc, ready_ = cls._procreg_start(
            args, link, monitor, trap_exits, idle_timeout, ready, None, bound
        )
        if ready_ is None:
            return proc._procreg_pid
        task = serving_task(proc)
        if task is None:
            return await ready_
        # recorded, so that an init calling the caller raises Deadlock (node.py)
        with waiting_on(proc._procreg_node, task):
            return await ready_

    @classmethod
    def _procreg_start(
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
        proc._procreg_setup(node, pid if pid is not None else node._new_pid())
        node._add(proc)
        mask = cls._procreg_async_mask
        if mask & _RARE or bound is not None:  # (one test on the common path)
            if bound is not None or mask & _BOUNDED:
                max_mailbox, overflow = bound if bound is not None else (None, None)
                node.bound(
                    proc,
                    cls.max_mailbox if max_mailbox is None else max_mailbox,
                    cls.overflow if overflow is None else overflow,
                )
            if mask & _ASYNC_INIT:
                proc._procreg_st = BUSY
                if ready is None:  # nobody waits for init: link now, so a failure is seen
                    node.setup(proc, parent, link, monitor, trap_exits, idle_timeout)
                    task = node._loop.create_task(
                        proc._procreg_init_async(args, None, None, False, False)
                    )
                else:  # start_ready: link once init succeeded, as a sync init does
                    node.setup(proc, None, False, False, trap_exits, idle_timeout)
                    task = node._loop.create_task(
                        proc._procreg_init_async(args, ready, parent, link, monitor)
                    )
                    # ended before init's first step: the starter must still hear of it
                    task.add_done_callback(partial(_init_cut, proc, ready))
                proc._procreg_extra().task = task
                return proc, ready
        prev = node._current
        node._current = proc
        try:
            proc.init(*args)
        except BaseException as exc:
            node._current = prev
            proc._procreg_st = EXITING
            proc._procreg_finish(exc)
            raise
        node._current = prev
        node.setup(proc, parent, link, monitor, trap_exits, idle_timeout)
        return proc, None

    _procreg_init_async = asyncsteps.init_async

    def _procreg_resume(self) -> None:
        """After an async step: back to idle, or to the run queue if mail waits."""
        if self._procreg_st != BUSY:
            return
        if self._procreg_mail:
            self._procreg_st = SCHEDULED
            self._procreg_node._schedule(self)
        else:
            self._procreg_st = IDLE
            self._procreg_mail = None

    # -- delivery -----------------------------------------------------------------
    # (The bound is checked only when the mailbox exists: an idle server has none.)
    def _procreg_cast(self, msg: Any) -> bool:
        st = self._procreg_st
        if st >= EXITING:
            return False
        mail = self._procreg_mail
        if mail is None:
            self._procreg_mail = mail = deque()
        elif self._procreg_max is not None and len(mail) >= self._procreg_max:
            self._procreg_refuse(None)
            return False
        mail.append((CAST, msg))
        if st == IDLE:
            self._procreg_st = SCHEDULED
            self._procreg_node._schedule(self)
        return True

    def _procreg_info(self, msg: Any) -> bool:
        st = self._procreg_st
        if st >= EXITING:
            return False
        mail = self._procreg_mail
        if mail is None:
            self._procreg_mail = mail = deque()
        elif (
            self._procreg_max is not None
            and len(mail) >= self._procreg_max
            and type(msg) not in _SIGNALS
        ):
            self._procreg_refuse(None)
            return False
        mail.append((INFO, msg))
        if st == IDLE:
            self._procreg_st = SCHEDULED
            self._procreg_node._schedule(self)
        return True

    def _procreg_timer(self, msg: Any) -> bool:
        if not self._procreg_info(msg):
            return False
        mail = self._procreg_mail
        assert mail is not None
        mail[-1] = (TIMER, msg)  # the item just queued; handled as INFO (`else`)
        return True

    def _procreg_call(self, caller: Any, request: Any) -> bool:
        st = self._procreg_st
        mail = self._procreg_mail
        if mail is None:
            self._procreg_mail = mail = deque()
        elif self._procreg_max is not None and len(mail) >= self._procreg_max:
            self._procreg_refuse(caller)
            return False
        mail.append((CALL, caller, request))
        if st == IDLE:
            self._procreg_st = SCHEDULED
            self._procreg_node._schedule(self)
        return True

    # -- dispatch -----------------------------------------------------------------
    async def _procreg_call_direct(self, request: Any, timeout: float | None) -> Any:
        """Handle a call in the caller's turn (direct dispatch).

        Only for an idle server (no mail, no handler running) with a sync
        ``handle_call``: nothing is queued ahead of the request, so running the
        handler now is indistinguishable from scheduling it, and saves two event
        loop iterations. The node makes callers yield every `INLINE_BUDGET` calls.
        """
        node = self._procreg_node
        node._current = self
        node._caller = _LAZY
        self._procreg_st = SCHEDULED  # mail sent to us meanwhile queues without scheduling
        try:
            reply = self.handle_call(request)
        except BaseException as exc:
            node._current = None
            caller = node._caller
            node._caller = None
            reason = node._fail(self, exc, request)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            me = current_process.get()
            if me is not None and me._procreg_st >= EXITING:
                # the caller itself was ended by the crash (linked): stop here
                raise asyncio.CancelledError from exc
            if caller is not _LAZY and caller.done():
                # replied, then ended (OTP's {stop, Reason, Reply, State}): the reply
                # was given before the end, as on the scheduled path
                return caller.result()
            raise ProcessExited(reason, self._procreg_pid) from exc
        node._current = None
        caller = node._caller
        node._caller = None
        self._procreg_handled += 1
        node.handled += 1
        node.calls += 1
        if self._procreg_st == SCHEDULED:
            if self._procreg_mail:
                node._schedule(self)
            else:
                self._procreg_st = IDLE
                self._procreg_mail = None
            ext = self._procreg_ext
            if ext is not None and ext.idle_timeout is not None:
                ext.idle_last = node._loop.time()
        if reply is not NOREPLY:
            if caller is not _LAZY and caller.done():
                return caller.result()  # replied already: the first answer wins
            return reply
        # answered later with reply(caller, value): wait like a scheduled call
        if caller is _LAZY:
            caller = node._loop.create_future()
        if self._procreg_st < EXITING:
            self._procreg_owe(caller)
        elif not caller.done():
            caller.set_exception(ProcessExited("ended without replying", self._procreg_pid))
        if timeout is not None:
            node._deadlines.add(timeout, caller)
        return await caller

    def _procreg_run(self) -> None:
        if self._procreg_st != SCHEDULED:
            return
        node = self._procreg_node
        mail = self._procreg_mail
        assert mail is not None
        amask = self._procreg_async_mask
        n = node._batch
        if len(mail) > self._procreg_peak:
            self._procreg_peak = len(mail)
        item: Any = None
        # a registered server checks the node's lease before each message: woken from
        # a pause past the deadline, the node fences (ending us) before we act
        guard = node._lease_guard if self._procreg_reg is not None else None
        node._current = self
        try:
            while True:
                if guard is not None and not guard() and self._procreg_st != SCHEDULED:
                    break
                item = mail.popleft()
                tag = item[0]
                if tag == CAST:
                    if amask & _ASYNC_CAST:
                        self._procreg_go_async(self.handle_cast(item[1]), None, item[1])
                        return
                    self.handle_cast(item[1])
                elif tag == CALL:
                    caller = item[1]
                    node._caller = caller
                    node.calls += 1  # (a crash below takes it back: as `handled`)
                    if amask & _ASYNC_CALL:
                        self._procreg_go_async(self.handle_call(item[2]), caller, item[2])
                        return
                    reply = self.handle_call(item[2])
                    node._caller = None
                    if reply is NOREPLY:
                        if self._procreg_st < EXITING:
                            self._procreg_owe(caller)
                        else:  # it ended itself while handling: it can never reply
                            fail_caller(
                                caller, ProcessExited("ended without replying", self._procreg_pid)
                            )
                    elif caller.__class__ is asyncio.Future:
                        if not caller.done():
                            caller.set_result(reply)
                    else:
                        _reply_any(caller, reply)
                else:
                    if amask & _ASYNC_INFO:
                        self._procreg_go_async(self.handle_info(item[1]), None, item[1])
                        return
                    self.handle_info(item[1])
                n -= 1
                if not n or not mail or self._procreg_st != SCHEDULED:
                    break
        except BaseException as exc:
            node._current = None
            node._caller = None
            if item is not None and item[0] == CALL:
                self._procreg_owe(item[1])
                node.calls -= 1
            node._fail(self, exc, item[-1] if item is not None else None)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        node._current = None
        done = node._batch - n
        self._procreg_handled += done
        node.handled += done
        if self._procreg_st == SCHEDULED:
            if mail:
                node._runq.append(self)
            else:
                self._procreg_st = IDLE
                self._procreg_mail = None
            ext = self._procreg_ext
            if ext is not None and ext.idle_timeout is not None:
                ext.idle_last = node._loop.time()

    _procreg_go_async = asyncsteps.go_async
    _procreg_async_step = asyncsteps.async_step

    # -- exit -----------------------------------------------------------------
    def _procreg_pending_callers(self, mail: deque[Any]) -> list[Any]:
        return [item[1] for item in mail if item[0] == CALL]

    def _procreg_stop_task(self) -> None:
        ext = self._procreg_ext
        if ext is None or ext.task is None:
            return
        task = ext.task
        if not task.done() and task is not asyncio.current_task(self._procreg_node._loop):
            task.cancel()
        ext.task = None

    def _procreg_terminate(self, reason: Any) -> Any:
        if type(self).terminate is Server.terminate:
            return None
        node = self._procreg_node
        prev = node._current
        node._current = self
        try:
            result = self.terminate(reason)
        except Exception:
            log.exception("terminate() of %r raised", self._procreg_pid)
            return None
        finally:
            node._current = prev
        if self._procreg_async_mask & _ASYNC_TERMINATE:
            return result
        return None

    def _procreg_is_idle(self) -> bool:
        return self._procreg_st == IDLE

    def _procreg_message(self, item: Any) -> Any:
        return item[1] if item[0] == INFO or item[0] == TIMER else None
