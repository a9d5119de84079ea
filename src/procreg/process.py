"""Processes: the state every process shares and exit handling; coroutine processes
(`Process`, re-exported here) are in `procreg.coroutines`.

A process is a plain object with a pid and a mailbox (created on first message and
dropped when empty). Rarely used state (links, monitors, timers, deferred callers,
trap-exit flag, idle timeout) lives in a lazily created `_Ext`, so an idle process
costs a few machine words.

A process may have a mailbox bound (``max_mailbox``, in the `_procreg_max` slot; None
is unbounded): delivery checks it only when the mailbox already exists, and the slow
path (`_Proc._procreg_refuse`) counts the refused message and applies the overflow
policy. Runtime signals (`Down`, `Exit`, `KeyEvent`, `NodeEvent`) are never refused.

The exit sequence, run once per process however it ends (see `Kernel._end`):
``terminate`` (servers only, not on ``"kill"``) → removed from the node's table and
its registrations dropped → callers waiting on it fail with `ProcessExited` →
monitors get `Down` → links get the exit signal → its timers are cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Coroutine
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

from .errors import Overloaded, ProcessExited
from .introspection import EXIT_CLASSES, exit_class, readable_key
from .messages import Down, Exit, KeyEvent, NodeEvent
from .pid import Pid, Ref

if TYPE_CHECKING:
    from .coroutines import Process
    from .kernel import Kernel
    from .timers import Timer

__all__ = [
    "IDLE",
    "SCHEDULED",
    "BUSY",
    "EXITING",
    "DEAD",
    "OVERFLOWS",
    "Process",
]

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
# Messages a full mailbox still takes: the runtime's own signals (exit signals, and
# the notices of monitors: process, node and key monitors), which supervision and
# watchers must never lose.
_SIGNALS = frozenset({Down, Exit, KeyEvent, NodeEvent})

# Mailbox tags for server processes. TIMER is a message a timer delivered: handled
# as INFO, but a handoff drops it (the timer ends with the incarnation it targets).
CAST = 0
INFO = 1
CALL = 2
TIMER = 3

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
        "key_monitors",
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
        self.key_monitors: dict[Ref, Any] | None = None  # ref -> (table, key) watched
        self.overflow: str | None = None  # overflow policy; None: the node's default
        self.dropped = 0  # messages its full mailbox refused


def fail_caller(caller: Any, exc: BaseException) -> None:
    """Fail a pending call unless it is already answered, timed out or cancelled."""
    if isinstance(caller, asyncio.Future):
        if not caller.done():
            caller.set_exception(exc)
    else:  # a remote caller (cluster transport)
        caller.fail(exc)


_monotonic = time.monotonic
NORMAL: Final = "normal"
KILL: Final = "kill"  # (interned: `exit(pid, "kill")` anywhere in code passes this object)


_STR_EXITS: Final = {name: name for name in EXIT_CLASSES[:-2]}
"""The class of each named exit reason (`exit_class` for a string, as a lookup)."""


def log_fields(node: Kernel, proc: _Proc) -> dict[str, Any]:
    """Structured fields for a log record about `proc` (``extra=`` of the logging
    call, so JSON formatters show them): ``procreg_pid`` (text), ``procreg_node``,
    ``procreg_key`` (its first registered key, readable, with its table; None if it
    holds none; ``"<unprintable key>"`` if its repr raises: a record about a
    process must never fail, or the exit it reports would not happen),
    ``procreg_behaviour`` (see `behaviour`)."""
    reg = proc._procreg_reg
    try:
        first = min(reg, key=repr) if type(reg) is set and reg else reg
        key = readable_key(first[1], first[0]) if first else None
    except Exception:
        key = "<unprintable key>"
    return {
        "procreg_pid": str(proc._procreg_pid),
        "procreg_node": node.name,
        "procreg_key": key,
        "procreg_behaviour": behaviour(node, proc),
    }


_BEHAVIOURS: Final = {"process": "coroutine"}


def behaviour(node: Kernel, proc: _Proc) -> str:
    """What kind of process `proc` is (`ProcessInfo.behaviour`): what a layer above
    named it in the node's ``kinds`` (``"Supervisor"`` read as ``"supervisor"``), else
    its class's ``_procreg_kind`` (``"process"`` read as ``"coroutine"``)."""
    named = node.kinds.get(proc._procreg_pid)
    if named is not None:
        return named.lower()
    kind = proc._procreg_kind
    return _BEHAVIOURS.get(kind, kind)


def _turn_time(node: Kernel) -> float:
    """The start time of the processes started on `node` in this loop turn
    (`time.monotonic`, read at the first of them): one float shared by all of them
    instead of one each (24 bytes less per process), forgotten at the next turn."""
    born = node._born_at = _monotonic()
    node._loop.call_soon(_next_turn, node)
    return born


def _next_turn(node: Kernel) -> None:
    node._born_at = None


COMPAT_NAMES: Final = ()
"""Old runtime names that `procreg.cluster` still reads, kept as read-only aliases of
the ``_procreg_*`` ones until it is renamed; a `Server` subclass may not use them
meanwhile."""


def _read_only_pid(proc: Any, value: Any) -> None:
    raise AttributeError(
        f"{type(proc).__name__}.pid is the process's own pid and cannot be assigned: "
        "store other pids under another name"
    )


class _Proc:
    """What every process has. Subclasses: `Process` (coroutine) and `Server`.

    Every runtime attribute and method is named ``_procreg_*`` (the one reserved
    prefix: `Server.__init_subclass__` refuses a subclass that defines such a name),
    so whatever a `Server` subclass stores on ``self`` lives beside the runtime's
    state and never in it. ``pid`` is the one public, read-only attribute.
    """

    __slots__ = (
        "_procreg_born",
        "_procreg_ext",
        "_procreg_handled",
        "_procreg_mail",
        "_procreg_max",
        "_procreg_node",
        "_procreg_peak",
        "_procreg_pid",
        "_procreg_reg",
        "_procreg_st",
    )

    _procreg_pid: Pid
    _procreg_node: Kernel
    _procreg_mail: deque[Any] | None
    _procreg_st: int
    _procreg_ext: _Ext | None
    _procreg_reg: Any  # registry entries held: None, one (table, key) or a set of them
    _procreg_max: int | None  # mailbox bound (None: unbounded)
    _procreg_peak: int  # mailbox high-water mark, sampled when the process takes its mail
    _procreg_born: float  # when it started (time.monotonic), for its age (`Node.info`)

    _procreg_kind = "process"
    _procreg_log_overload = True  # log a warning when the bound first refuses a message
    _procreg_direct_call = False  # True for servers whose handle_call may run in the caller's turn

    if TYPE_CHECKING:

        @property
        def pid(self) -> Pid:
            """The process's pid (read-only)."""

    else:
        pid = property(
            attrgetter("_procreg_pid"), _read_only_pid, doc="The process's pid (read-only)."
        )

    def _procreg_setup(self, node: Kernel, pid: Pid) -> None:
        self._procreg_pid = pid
        self._procreg_node = node
        self._procreg_mail = None
        self._procreg_st = IDLE
        self._procreg_ext = None
        self._procreg_reg = None
        self._procreg_handled = 0  # messages handled (counted per batch)
        self._procreg_max = node._max_mailbox
        self._procreg_peak = 0
        born = node._born_at
        self._procreg_born = born if born is not None else _turn_time(node)

    def _procreg_extra(self) -> _Ext:
        e = self._procreg_ext
        if e is None:
            e = self._procreg_ext = _Ext()
        return e

    def _procreg_owe(self, caller: Any) -> None:
        """Remember a caller this process must still answer (or fail when it ends)."""
        ext = self._procreg_extra()
        if ext.deferred is None:
            ext.deferred = set()
        elif len(ext.deferred) > 64:  # drop the answered ones now and then
            ext.deferred = {c for c in ext.deferred if not _answered(c)}
        ext.deferred.add(caller)

    # -- delivery (overridden) ----------------------------------------------------
    # Each returns True if the message was queued (or handed to a waiting receive),
    # False if it was not: the process is ending, or its mailbox is full. A refused
    # call has already failed its caller (`Overloaded`).
    def _procreg_info(self, msg: Any) -> bool:
        raise NotImplementedError

    def _procreg_cast(self, msg: Any) -> bool:
        raise NotImplementedError

    def _procreg_timer(self, msg: Any) -> bool:
        """A message a timer delivers (`procreg.send_after`): as `_procreg_info`;
        a server tags it, so a handoff leaves it out of the mail it relays."""
        return self._procreg_info(msg)

    def _procreg_call(self, caller: Any, request: Any) -> bool:
        raise NotImplementedError

    def _procreg_refuse(self, caller: Any) -> None:
        """Delivery found the mailbox at its bound (the slow path): count the refused
        message, fail `caller` (a call's) with `Overloaded`, and apply the overflow
        policy: ``"drop"`` keeps the process, ``"exit"`` ends it with reason
        ``"overload"``. Runtime signals never get here (see `_SIGNALS`)."""
        node = self._procreg_node
        bound = self._procreg_max
        node.dropped += 1
        ext = self._procreg_extra()
        ext.dropped += 1
        if bound is not None and bound > self._procreg_peak:
            self._procreg_peak = bound
        if caller is not None:
            fail_caller(caller, Overloaded(self._procreg_pid, bound))
        policy = ext.overflow or node._overflow
        log_it = self._procreg_log_overload
        if policy == EXIT:
            self._procreg_overload(f"mailbox full ({bound} messages)" if log_it else None)
        elif ext.dropped == 1 and log_it:
            log.warning(
                "process %r (%s): mailbox full (%s messages): dropping new messages",
                self._procreg_pid,
                self._procreg_kind,
                bound,
                extra=log_fields(node, self),
            )

    async def _procreg_call_direct(self, request: Any, timeout: float | None) -> Any:
        """Handle a call in the caller's turn (servers with a sync handle_call)."""
        raise NotImplementedError

    def _procreg_overload(self, why: str | None) -> None:
        """End this process with reason ``"overload"`` and count it (`Kernel.stats`);
        `why` is logged as a warning unless None."""
        if self._procreg_st >= EXITING:
            return
        if why is not None:
            log.warning(
                "process %r (%s): %s: ending it (overload)",
                self._procreg_pid,
                self._procreg_kind,
                why,
                extra=log_fields(self._procreg_node, self),
            )
        node = self._procreg_node
        node.overloaded += 1
        node._end(self, OVERLOAD)

    # -- exit ---------------------------------------------------------------------
    def _procreg_pending_callers(self, mail: deque[Any]) -> list[Any]:
        """Callers whose request is still in the mailbox (not yet handled)."""
        raise NotImplementedError

    def _procreg_stop_task(self) -> None:
        """Cancel the task running this process's code, unless it is the caller."""
        raise NotImplementedError

    def _procreg_terminate(self, reason: Any) -> Coroutine[Any, Any, Any] | None:
        """Run the ``terminate`` callback; a coroutine if it must be awaited."""
        return None

    def _procreg_unwinds(self) -> bool:
        """True if the process's own task must unwind before the exit completes."""
        return False

    def _procreg_kill_exiting(self) -> None:
        """``"kill"`` while the exit waits on an async ``terminate``: cut it short."""
        ext = self._procreg_ext
        if ext is not None and ext.task is not None:
            ext.exit_reason = "kill"
            ext.task.cancel()

    def _procreg_finish(self, reason: Any) -> None:
        """Steps 2-6 of the exit sequence. Runs once."""
        if self._procreg_st == DEAD:
            return
        self._procreg_st = DEAD
        node = self._procreg_node
        pid = self._procreg_pid
        node._forget(self)
        if reason is not NORMAL:  # counted by class (`exit_class`), for metrics
            if reason is KILL:  # the common one, counted apart: a third of the cost
                node.killed += 1
            else:
                kind = _STR_EXITS.get(reason, "other") if reason.__class__ is str else None
                if kind is None:
                    kind = exit_class(reason)
                if kind != "normal":
                    exits = node.exits
                    exits[kind] = exits.get(kind, 0) + 1
        ext = self._procreg_ext
        if self._procreg_reg is not None or (ext is not None and (ext.groups or ext.key_monitors)):
            node._drop_registrations(self)
        mail = self._procreg_mail
        self._procreg_mail = None
        if mail:
            for caller in self._procreg_pending_callers(mail):
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

    def _procreg_run(self) -> None:
        """Handle a batch of mail (servers); coroutine processes run as tasks."""

    def _procreg_message(self, item: Any) -> Any:
        """The plain message a mailbox item holds (servers tag theirs), else None."""
        return item

    def _procreg_flush_down(self, ref: Ref) -> None:
        mail = self._procreg_mail
        if not mail:
            return
        for i, item in enumerate(mail):
            msg = self._procreg_message(item)
            if type(msg) is Down and msg.ref == ref:
                del mail[i]
                return

    def _procreg_flush_key_events(self, ref: Ref) -> None:
        mail = self._procreg_mail
        if not mail:
            return
        keep = [
            item
            for item in mail
            if not (type(msg := self._procreg_message(item)) is KeyEvent and msg.ref == ref)
        ]
        mail.clear()
        mail.extend(keep)

    def _procreg_idle_check(self) -> None:
        ext = self._procreg_ext
        if ext is None or ext.idle_timeout is None or self._procreg_st >= EXITING:
            return
        loop = self._procreg_node._loop
        now = loop.time()
        due = ext.idle_last + ext.idle_timeout
        if now >= due and self._procreg_is_idle():
            ext.idle_handle = None
            self._procreg_node._end(self, "idle")
            return
        if now >= due:  # busy right now: count from now
            ext.idle_last = now
            due = now + ext.idle_timeout
        ext.idle_handle = loop.call_at(due, self._procreg_idle_check)

    def _procreg_is_idle(self) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'pid', 'not started')!r}>"


def _answered(caller: Any) -> bool:
    if isinstance(caller, asyncio.Future):
        return caller.done()
    return bool(getattr(caller, "done", False))  # a remote caller


def __getattr__(name: str) -> Any:
    # `Process` moved to `procreg.coroutines` (which imports this module): imported
    # from here, it is looked up on first use.
    if name == "Process":
        from .coroutines import Process

        return Process
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
