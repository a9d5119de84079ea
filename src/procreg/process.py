"""Processes: the state every process shares, exit handling, and coroutine processes.

A process is a plain object with a pid and a mailbox (created on first message and
dropped when empty). Rarely used state (links, monitors, timers, deferred callers,
trap-exit flag, idle timeout) lives in a lazily created `_Ext`, so an idle process
costs a few machine words.

A process may have a mailbox bound (``max_mailbox``, in the `_max` slot; None is
unbounded): delivery checks it only when the mailbox already exists, and the slow
path (`_Proc._refuse`) counts the refused message and applies the overflow policy.
Runtime signals (`Down`, `Exit`, `NodeEvent`) are never refused.

The exit sequence, run once per process however it ends (see `Node._end`):
``terminate`` (servers only, not on ``"kill"``) → removed from the node's table and
its registrations dropped → callers waiting on it fail with `ProcessExited` →
monitors get `Down` → links get the exit signal → its timers are cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .errors import Overloaded, ProcessExited
from .messages import Call, Down, Exit, NodeEvent
from .pid import Pid, Ref

if TYPE_CHECKING:
    from .node import Node
    from .timers import Timer

__all__ = ["IDLE", "SCHEDULED", "BUSY", "EXITING", "DEAD", "OVERFLOWS", "Process"]

log = logging.getLogger("procreg")

# Process states (`_st`). Ordered: every state >= EXITING refuses new work.
IDLE = 0  # no mail, not in the run queue
SCHEDULED = 1  # in the node's run queue (servers) / running (coroutine processes)
BUSY = 2  # an async handler is running; mail waits
EXITING = 3  # exit sequence started (an async terminate may be running)
DEAD = 4

# Overflow policies of a bounded mailbox: refuse the new message, or end the process.
DROP = "drop"
EXIT = "exit"
OVERFLOWS = (DROP, EXIT)
OVERLOAD = "overload"  # the exit reason of a process ended by the "exit" policy
# Messages a full mailbox still takes: the runtime's own signals, bounded in number
# by links and monitors, which supervision must never lose.
_SIGNALS = frozenset({Down, Exit, NodeEvent})

# Mailbox tags for server processes.
CAST = 0
INFO = 1
CALL = 2

# The process whose task is running (coroutine processes and async server handlers).
current_process: contextvars.ContextVar[_Proc | None] = contextvars.ContextVar(
    "procreg_process", default=None
)
# The caller of the call being handled in an async ``handle_call``.
current_caller: contextvars.ContextVar[Any] = contextvars.ContextVar("procreg_caller", default=None)


class _Ext:
    """The rarely used part of a process's state, created on first need."""

    __slots__ = (
        "deferred",
        "dropped",
        "exit_reason",
        "groups",
        "idle_handle",
        "idle_last",
        "idle_timeout",
        "links",
        "monitors",
        "overflow",
        "task",
        "timers",
        "trap",
        "watching",
    )

    def __init__(self) -> None:
        self.links: set[Pid] | None = None
        self.monitors: dict[Ref, Pid] | None = None  # ref -> watcher, of me
        self.watching: dict[Ref, Pid] | None = None  # ref -> target I monitor
        self.timers: set[Timer] | None = None
        self.deferred: set[asyncio.Future[Any]] | None = None  # callers owed a reply
        self.trap = False
        self.idle_timeout: float | None = None
        self.idle_handle: asyncio.TimerHandle | None = None
        self.idle_last = 0.0
        self.exit_reason: Any = None
        self.task: asyncio.Task[Any] | None = None  # running async handler (servers)
        self.groups: set[Any] | None = None  # groups joined (kept by the registry)
        self.overflow: str | None = None  # overflow policy; None: the node's default
        self.dropped = 0  # messages its full mailbox refused


def fail_caller(caller: Any, exc: BaseException) -> None:
    """Fail a pending call unless it is already answered, timed out or cancelled."""
    if isinstance(caller, asyncio.Future):
        if not caller.done():
            caller.set_exception(exc)
    else:  # a remote caller (cluster transport)
        caller.fail(exc)


class _Proc:
    """What every process has. Subclasses: `Process` (coroutine) and `Server`."""

    __slots__ = ("_ext", "_handled", "_mail", "_max", "_node", "_peak", "_reg", "_st", "pid")

    pid: Pid
    _node: Node
    _mail: deque[Any] | None
    _st: int
    _ext: _Ext | None
    _reg: Any  # registry entries held: None, one (table, key) or a set of them
    _max: int | None  # mailbox bound (None: unbounded)
    _peak: int  # mailbox high-water mark, sampled when the process takes its mail

    kind = "process"
    _log_overload = True  # log a warning when the mailbox bound first refuses a message
    _direct_call = False  # True for servers whose handle_call may run in the caller's turn

    def _init_proc(self, node: Node, pid: Pid) -> None:
        self.pid = pid
        self._node = node
        self._mail = None
        self._st = IDLE
        self._ext = None
        self._reg = None
        self._handled = 0  # messages handled (counted per batch)
        self._max = node._max_mailbox
        self._peak = 0

    def ext(self) -> _Ext:
        e = self._ext
        if e is None:
            e = self._ext = _Ext()
        return e

    def _owe(self, caller: Any) -> None:
        """Remember a caller this process must still answer (or fail when it ends)."""
        ext = self.ext()
        if ext.deferred is None:
            ext.deferred = set()
        elif len(ext.deferred) > 64:  # drop the answered ones now and then
            ext.deferred = {c for c in ext.deferred if not _answered(c)}
        ext.deferred.add(caller)

    # -- delivery (overridden) ----------------------------------------------------
    # Each returns True if the message was queued (or handed to a waiting receive),
    # False if it was not: the process is ending, or its mailbox is full. A refused
    # call has already failed its caller (`Overloaded`).
    def _info(self, msg: Any) -> bool:
        raise NotImplementedError

    def _cast(self, msg: Any) -> bool:
        raise NotImplementedError

    def _call(self, caller: Any, request: Any) -> bool:
        raise NotImplementedError

    def _refuse(self, caller: Any) -> None:
        """Delivery found the mailbox at its bound (the slow path): count the refused
        message, fail `caller` (a call's) with `Overloaded`, and apply the overflow
        policy: ``"drop"`` keeps the process, ``"exit"`` ends it with reason
        ``"overload"``. Runtime signals never get here (see `_SIGNALS`)."""
        node = self._node
        bound = self._max
        node.dropped += 1
        ext = self.ext()
        ext.dropped += 1
        if bound is not None and bound > self._peak:
            self._peak = bound
        if caller is not None:
            fail_caller(caller, Overloaded(self.pid, bound))
        policy = ext.overflow or node._overflow
        if policy == EXIT:
            self._overload(f"mailbox full ({bound} messages)" if self._log_overload else None)
        elif ext.dropped == 1 and self._log_overload:
            log.warning(
                "process %r (%s): mailbox full (%s messages): dropping new messages",
                self.pid,
                self.kind,
                bound,
            )

    async def _call_direct(self, request: Any, timeout: float | None) -> Any:
        """Handle a call in the caller's turn (servers with a sync handle_call)."""
        raise NotImplementedError

    def _overload(self, why: str | None) -> None:
        """End this process with reason ``"overload"`` and count it (`Node.stats`);
        `why` is logged as a warning unless None."""
        if self._st >= EXITING:
            return
        if why is not None:
            log.warning("process %r (%s): %s: ending it (overload)", self.pid, self.kind, why)
        node = self._node
        node.overloaded += 1
        node._end(self, OVERLOAD)

    # -- exit ---------------------------------------------------------------------
    def _pending_callers(self, mail: deque[Any]) -> list[Any]:
        """Callers whose request is still in the mailbox (not yet handled)."""
        raise NotImplementedError

    def _stop_task(self) -> None:
        """Cancel the task running this process's code, unless it is the caller."""
        raise NotImplementedError

    def _terminate(self, reason: Any) -> Coroutine[Any, Any, Any] | None:
        """Run the ``terminate`` callback; a coroutine if it must be awaited."""
        return None

    def _unwinds(self) -> bool:
        """True if the process's own task must unwind before the exit completes."""
        return False

    def _kill_exiting(self) -> None:
        """``"kill"`` while the exit waits on an async ``terminate``: cut it short."""
        ext = self._ext
        if ext is not None and ext.task is not None:
            ext.exit_reason = "kill"
            ext.task.cancel()

    def _finish(self, reason: Any) -> None:
        """Steps 2-6 of the exit sequence. Runs once."""
        if self._st == DEAD:
            return
        self._st = DEAD
        node = self._node
        pid = self.pid
        node._forget(self)
        ext = self._ext
        if self._reg is not None or (ext is not None and ext.groups):
            node._drop_registrations(self)
        mail = self._mail
        self._mail = None
        if mail:
            for caller in self._pending_callers(mail):
                fail_caller(caller, ProcessExited(reason, pid))
        if ext is None:
            return
        if ext.deferred:
            exc = ProcessExited(reason, pid)
            for caller in ext.deferred:
                fail_caller(caller, exc)
            ext.deferred = None
        if ext.watching:
            for ref, target in ext.watching.items():
                node._drop_monitor(target, ref)
            ext.watching = None
        if ext.monitors:
            monitors = ext.monitors
            ext.monitors = None
            for ref, watcher in monitors.items():
                node._down(watcher, ref, pid, reason)
        if ext.links:
            links = ext.links
            ext.links = None
            for other in links:
                node._link_signal(other, pid, reason)
        if ext.timers:
            timers = ext.timers
            ext.timers = None
            for timer in list(timers):
                timer.cancel()
        if ext.idle_handle is not None:
            ext.idle_handle.cancel()
            ext.idle_handle = None

    def _run(self) -> None:
        """Handle a batch of mail (servers); coroutine processes run as tasks."""

    def _message(self, item: Any) -> Any:
        """The plain message a mailbox item holds (servers tag theirs), else None."""
        return item

    def _flush_down(self, ref: Ref) -> None:
        mail = self._mail
        if not mail:
            return
        for i, item in enumerate(mail):
            msg = self._message(item)
            if type(msg) is Down and msg.ref == ref:
                del mail[i]
                return

    def _idle_check(self) -> None:
        ext = self._ext
        if ext is None or ext.idle_timeout is None or self._st >= EXITING:
            return
        loop = self._node._loop
        now = loop.time()
        due = ext.idle_last + ext.idle_timeout
        if now >= due and self._is_idle():
            ext.idle_handle = None
            self._node._end(self, "idle")
            return
        if now >= due:  # busy right now: count from now
            ext.idle_last = now
            due = now + ext.idle_timeout
        ext.idle_handle = loop.call_at(due, self._idle_check)

    def _is_idle(self) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'pid', 'not started')!r}>"


class Process(_Proc):
    """A coroutine process: an ``async def`` body that reads its own mailbox with
    `procreg.receive`. Made by `procreg.spawn`."""

    __slots__ = ("_began", "_last", "_match", "_result", "_task", "_waiter")

    _task: asyncio.Task[Any] | None
    _waiter: asyncio.Future[Any] | None
    _match: Callable[[Any], bool] | None

    def __init__(self, node: Node, pid: Pid) -> None:
        self._init_proc(node, pid)
        self._task = None
        self._waiter = None
        self._match = None
        self._result: asyncio.Future[Any] | None = None
        self._last: Any = None  # the last message received, for crash reports
        self._began = False  # the body has started running

    def _info(self, msg: Any) -> bool:
        if self._st >= EXITING:
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
        mail = self._mail
        if mail is None:
            self._mail = mail = deque()
        elif self._max is not None and len(mail) >= self._max and type(msg) not in _SIGNALS:
            self._refuse(msg.caller if type(msg) is Call else None)
            return False
        mail.append(msg)
        return True

    _cast = _info

    def _call(self, caller: Any, request: Any) -> bool:
        return self._info(Call(request, caller))

    def _pending_callers(self, mail: deque[Any]) -> list[Any]:
        return [m.caller for m in mail if type(m) is Call]

    def _stop_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def _unwinds(self) -> bool:
        task = self._task
        return (
            self._began  # a task cancelled before its first step never runs the body
            and task is not None
            and not task.done()
            and task is not asyncio.current_task(self._node._loop)
        )

    def _kill_exiting(self) -> None:
        """A body that has not unwound yet (it may have swallowed the cancellation)
        is finished now; its task is cancelled again."""
        ext = self.ext()
        ext.exit_reason = "kill"
        self._finish("kill")
        self._stop_task()

    def _is_idle(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    async def _main(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]
    ) -> None:
        current_process.set(self)
        node = self._node
        result = self._result
        self._began = True
        try:
            value = await fn(*args)
        except asyncio.CancelledError:
            self._task = None
            if self._st < EXITING:  # cancelled from outside procreg
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
                    result.set_exception(ProcessExited(reason, self.pid))
            if not isinstance(exc, Exception):
                raise
            return
        else:
            self._task = None
            if self._st < EXITING:
                node._end(self, "normal")
            if result is not None and not result.done():
                result.set_result(value)
        finally:
            if self._st == EXITING:  # an exit signal ended it: it has unwound now
                ext = self._ext
                self._finish(ext.exit_reason if ext is not None else "shutdown")

    async def _receive(self, timeout: float | None, match: Callable[[Any], bool] | None) -> Any:
        if self._st >= EXITING:
            # the process has ended but its body swallowed the cancellation: stop it here
            raise asyncio.CancelledError
        mail = self._mail
        if mail:
            if len(mail) > self._peak:
                self._peak = len(mail)
            if match is None:
                return self._took(mail.popleft())
            for i, msg in enumerate(mail):
                if match(msg):
                    del mail[i]
                    return self._took(msg)
        if timeout is not None and timeout <= 0:
            raise TimeoutError("receive timed out")
        loop = self._node._loop
        waiter = loop.create_future()
        self._waiter = waiter
        self._match = match
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, _expire, waiter)
        try:
            msg = await waiter
        finally:
            self._waiter = None
            self._match = None
            if handle is not None:
                handle.cancel()
        return self._took(msg)

    def _took(self, msg: Any) -> Any:
        """Bookkeeping for a message `receive` hands out."""
        self._handled += 1
        self._node.handled += 1
        if type(msg) is Call:
            self._owe(msg.caller)
        ext = self._ext
        if ext is not None and ext.idle_timeout is not None:
            ext.idle_last = self._node._loop.time()
        self._last = msg
        return msg


def _answered(caller: Any) -> bool:
    if isinstance(caller, asyncio.Future):
        return caller.done()
    return bool(getattr(caller, "done", False))  # a remote caller


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("receive timed out"))
