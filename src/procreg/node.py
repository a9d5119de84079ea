"""The node: one event loop's processes, their scheduling and their signals.

A `Node` owns a table ``pid -> process``, a run queue of server processes that have
mail, and the bookkeeping for calls in flight. It is an async context manager::

    async with procreg.Node("web1") as node:
        pid = procreg.spawn(body)

Everything a process does (send, call, link, ...) is a method here; the module-level
functions in `procreg` find the current node and delegate.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

from .errors import CallTimeout, Deadlock, NodeDown, NoNode, NoProcess, NotInProcess, Stop
from .gcpolicy import GcPolicy
from .introspection import NodeStats, ProcessInfo, ProcessStatus, new_node_stats, new_process_info
from .messages import Down, Exit, NodeEvent
from .pid import Pid, Ref
from .process import (
    EXITING,
    IDLE,
    OVERFLOWS,
    Process,
    _Proc,
    behaviour,
    current_caller,
    current_process,
    log_fields,
)
from .surface import NodeRuntime

if TYPE_CHECKING:
    from .registry import RegistryBackend
    from .seams import Distribution

__all__ = [
    "HANDLER_LOCK",
    "Node",
    "check_wait",
    "current_node",
    "serving_task",
    "started_for",
    "waiting_on",
]

log = logging.getLogger("procreg")

DEFAULT_BATCH = 64
_node_var: contextvars.ContextVar[Node | None] = contextvars.ContextVar(
    "procreg_node", default=None
)
_running: list[Node] = []
_make_pid = tuple.__new__  # Pid(...) without a Python-level __new__ call
INLINE_BUDGET = 64  # direct-dispatched calls in a row before a caller must yield
_LAZY = object()  # node._caller during a direct call, until caller() asks for a future
_creations = itertools.count(1)
_STATUS: tuple[ProcessStatus, ...] = ("idle", "runnable", "busy", "exiting", "dead")  # by _st


# -- waits that could never end ----------------------------------------------------
#
# A task that awaits a get_or_spawn attempt of another caller, the node's
# registry-handler lock, or a process's start waits on another task: the async
# ``init`` of the process being started for that key (``node._starting``), the task
# holding the lock (``node._handler_holder``), or the starting process's init (or,
# for a supervisor, its body). ``node._waiting`` records, for each task waiting so,
# on what. Before a task waits, or calls a process whose serving task (a coroutine
# process's body, a server's running handler) is waiting, it follows that chain;
# reaching itself means the wait could never end (an init waiting on its own key,
# directly or through other keys or the handler lock; a child's init calling the
# supervisor or process waiting for it), and `Deadlock` is raised instead, as for a
# process calling itself. Tasks, not processes, are the unit: two tasks of one
# process (``gather``) may wait on each other's lock, and a helper task may wait on
# a start while the process's body still answers calls. A wait made through a
# helper task (``asyncio.wait_for`` around it) is not linked to the task awaiting
# the helper, so such a cycle is not detected.

HANDLER_LOCK: Final = "handler lock"
"""What ``node._waiting`` records for a task waiting on the registry-handler lock."""


def _next_task(node: Node, waits_on: Any) -> asyncio.Task[Any] | None:
    if waits_on is HANDLER_LOCK:
        return node._handler_holder
    if isinstance(waits_on, asyncio.Task):
        return waits_on
    return node._starting.get(waits_on)


def check_wait(node: Node, waits_on: Any) -> None:
    """Raise `Deadlock` if the calling task waiting on `waits_on` (a ``(table, key)``,
    `HANDLER_LOCK` or a task) would wait, through any chain of waits, on itself."""
    me = asyncio.current_task()
    if me is None:
        return
    seen: set[asyncio.Task[Any]] = set()
    task = _next_task(node, waits_on)
    while task is not None and task not in seen:
        if task is me:
            if waits_on is HANDLER_LOCK:
                what = "the registry handler"
            elif isinstance(waits_on, asyncio.Task):
                what = "that process"
            else:
                what = repr(waits_on[1])
            raise Deadlock(
                f"waiting on {what} would wait on this process itself (its own init, a "
                "get_pid/get_or_spawn or a start it is inside of): the wait could never end"
            )
        seen.add(task)
        nxt = node._waiting.get(task)
        task = _next_task(node, nxt) if nxt is not None else None


class waiting_on:
    """Record that the calling task waits on `waits_on`, after `check_wait`."""

    __slots__ = ("_node", "_prev", "_task", "_what")

    def __init__(self, node: Node, waits_on: Any) -> None:
        check_wait(node, waits_on)
        self._node = node
        self._what = waits_on
        self._task = asyncio.current_task()
        self._prev: Any = None

    def __enter__(self) -> None:
        if self._task is not None:
            self._prev = self._node._waiting.get(self._task)
            self._node._waiting[self._task] = self._what

    def __exit__(self, *exc: object) -> None:
        task = self._task
        if task is not None:
            if self._prev is None:
                self._node._waiting.pop(task, None)
            else:
                self._node._waiting[task] = self._prev


def serving_task(proc: _Proc) -> asyncio.Task[Any] | None:
    """The task running `proc`'s code now: a coroutine process's body, a server's
    async init or handler (None for an idle server)."""
    task: asyncio.Task[Any] | None = getattr(proc, "_task", None)
    if task is None:
        ext = proc._procreg_ext
        task = ext.task if ext is not None else None
    return task


class started_for:
    """While `proc`'s async ``init`` runs for the key ``(table, key)``: a wait on
    that key waits on that init. A backend that starts a process with an async
    ``init`` for a key wraps its wait for that init in this (`Node.start_with_pid`
    does it when given ``key=``)."""

    __slots__ = ("_key", "_node", "_task")

    def __init__(self, node: Node, key: tuple[str, Any], proc: _Proc) -> None:
        self._node = node
        self._key = key
        self._task = serving_task(proc)

    def __enter__(self) -> None:
        if self._task is not None:
            self._node._starting[self._key] = self._task

    def __exit__(self, *exc: object) -> None:
        if self._node._starting.get(self._key) is self._task:
            del self._node._starting[self._key]


def _check_call(node: Node, proc: _Proc) -> None:
    """Raise `Deadlock` if the task that would answer a call to `proc` waits,
    through any chain of waits, on the caller (a child's ``init`` calling the
    supervisor that waits for it)."""
    task = serving_task(proc)
    if task is not None and task in node._waiting:
        check_wait(node, task)


def _terminate_done(proc: _Proc, pending: Coroutine[Any, Any, Any], _task: Any) -> None:
    pending.close()
    ext = proc._procreg_ext
    proc._procreg_finish(ext.exit_reason if ext is not None else "kill")


def current_node() -> Node:
    """The node of the calling code (set by ``async with Node()`` and `procreg.run`).

    Raises `NoNode` outside any node. Code running outside the node's context (a
    callback from a foreign thread, say) still finds the node if only one is running.
    """
    node = _node_var.get()
    if node is not None and node._running:
        return node
    if len(_running) == 1:
        return _running[0]
    if not _running:
        raise NoNode("no procreg node is running: use `async with procreg.Node()` or procreg.run")
    raise NoNode("several procreg nodes are running and none is current in this context")


def check_bound(max_mailbox: Any, overflow: Any) -> None:
    """Raise a clear error for a bad ``max_mailbox`` (None, 0 or a positive int) or
    ``overflow`` (None, ``"drop"`` or ``"exit"``)."""
    if max_mailbox is not None and (
        isinstance(max_mailbox, bool) or not isinstance(max_mailbox, int) or max_mailbox < 0
    ):
        raise ValueError(
            f"max_mailbox must be None, 0 (no bound) or a positive int, got {max_mailbox!r}"
        )
    if overflow is not None and overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be 'drop' or 'exit', got {overflow!r}")


def check_timeout(timeout: Any, what: str = "timeout") -> None:
    """Raise a clear error for a timeout that is not a non-negative number (or None)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout < 0 or timeout != timeout:
        raise ValueError(f"{what} must be >= 0, got {timeout!r}")


class _Deadlines:
    """Timeouts of calls in flight, without a timer per call.

    Calls with the same timeout expire in the order they were made, so each distinct
    timeout value keeps a FIFO of ``(deadline, future)`` and one timer armed for its
    head. Answered calls are skipped when reached and compacted away in bulk, so
    memory stays proportional to the calls actually pending.
    """

    __slots__ = ("_armed", "_limit", "_loop", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[tuple[float, asyncio.Future[Any]]]] = {}
        self._armed: dict[float, asyncio.TimerHandle] = {}
        self._limit: dict[float, int] = {}

    def add(self, timeout: float, fut: asyncio.Future[Any]) -> None:
        q = self._queues.get(timeout)
        if q is None:
            q = self._queues[timeout] = deque()
            self._limit[timeout] = 1024
        deadline = self._loop.time() + timeout
        q.append((deadline, fut))
        if timeout not in self._armed:
            self._armed[timeout] = self._loop.call_at(deadline, self._expire, timeout)
        elif len(q) >= self._limit[timeout]:
            live = deque(e for e in q if not e[1].done())
            self._queues[timeout] = live
            self._limit[timeout] = max(1024, 2 * len(live))

    def _expire(self, timeout: float) -> None:
        q = self._queues[timeout]
        now = self._loop.time()
        while q:
            deadline, fut = q[0]
            if fut.done():
                q.popleft()
                continue
            if deadline > now:
                self._armed[timeout] = self._loop.call_at(deadline, self._expire, timeout)
                return
            q.popleft()
            fut.set_exception(CallTimeout(f"call timed out after {timeout} s"))
        del self._armed[timeout]

    def close(self) -> None:
        for handle in self._armed.values():
            handle.cancel()
        self._armed.clear()
        self._queues.clear()


class Node:
    """A procreg node: runs processes on the current event loop.

    ``cluster=None`` (and ``PROCREG_CLUSTER`` unset) is the embedded, single-machine
    default; ``cluster="redis://host:port/db"`` joins the cluster kept in that Redis (or
    Valkey): ``secret`` signs its frames (else ``PROCREG_SECRET``, else a 0600 file),
    ``lease`` is the membership lease in seconds, ``on_conflict`` decides registry
    conflicts after a store data loss (see `procreg.cluster`). ``gc_policy`` (default
    on; env ``PROCREG_GC_POLICY=0`` turns it off) tunes Python's cyclic GC for many
    long-lived processes: see `procreg.gcpolicy`.
    ``batch`` is how many messages a server handles before others get a turn.
    ``max_mailbox`` (default None: unbounded) bounds the mailbox of every process
    started on this node that sets no bound of its own, and ``overflow`` (``"drop"``,
    the default, or ``"exit"``) is the default policy when a bounded mailbox is full;
    see `procreg.spawn`.

    >>> import asyncio, procreg
    >>> async def main():
    ...     async with procreg.Node("demo") as node:
    ...         return node.name
    >>> asyncio.run(main())
    'demo'
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        cluster: str | None = None,
        secret: str | bytes | None = None,
        batch: int = DEFAULT_BATCH,
        gc_policy: bool | None = None,
        registry_handler: Any = None,
        handler_config: dict[str, Any] | None = None,
        lease: float = 3.0,
        on_conflict: Any = None,
        max_mailbox: int | None = None,
        overflow: str = "drop",
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name or "\t" in name):
            raise ValueError(f"node name must be a non-empty string without tabs, got {name!r}")
        cluster = cluster if cluster is not None else os.environ.get("PROCREG_CLUSTER") or None
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        check_timeout(lease, "lease")
        check_bound(max_mailbox, overflow)
        self._max_mailbox: int | None = max_mailbox or None  # read by every new process
        self._overflow = overflow
        if cluster is not None:
            from .cluster import default_node_name

            name = name or default_node_name()
        self.name = name or "local"
        self._lease = lease
        self._on_conflict = on_conflict
        self._cluster: Any = None  # procreg.cluster.Cluster when clustered
        # the cluster's lease check (`Membership.check`): a registered process calls it
        # before it handles a message, so a node woken from a pause past its lease
        # deadline fences itself before any registered process acts
        self._lease_guard: Callable[[], bool] | None = None
        self._remote: Distribution | None = None  # operations on other nodes' pids
        self.runtime = NodeRuntime(self)  # what backends may do to local processes
        self.creation = next(_creations)
        self.cluster = cluster
        self._secret = secret
        self._batch = batch
        if gc_policy is None:
            gc_policy = os.environ.get("PROCREG_GC_POLICY", "1") not in ("0", "false", "no")
        self._gc_policy = gc_policy
        self._registry_handler = registry_handler
        self.handler_config: dict[str, Any] = dict(handler_config or {})
        self._handler_state: Any = None
        self._handler_lock = asyncio.Lock()
        self._handler_holder: asyncio.Task[Any] | None = None  # the task holding it
        # who waits on whom, to raise Deadlock instead of waiting forever (check_wait)
        self._starting: dict[tuple[str, Any], asyncio.Task[Any]] = {}  # key -> init task
        self._waiting: dict[asyncio.Task[Any], Any] = {}  # task -> key, task or HANDLER_LOCK
        self._root_sup: asyncio.Future[Pid] | None = None
        self._supervisors: dict[Pid, Pid | None] = {}  # supervisor -> its parent
        self._node_watchers: set[Pid] = set()  # processes that get NodeEvent messages
        self.stopping = False  # True while stop() ends the processes
        self._serial = itertools.count(1)
        self._procs: dict[Pid, _Proc] = {}
        self._runq: deque[Any] = deque()
        self._drain_pending = False
        self._current: _Proc | None = None  # the server whose sync handler is running
        self._caller: Any = None  # the caller of the sync handle_call running
        self._inline = INLINE_BUDGET
        self._endq: deque[tuple[_Proc, Any]] = deque()
        self._ending = False
        self._terminating: set[asyncio.Task[Any]] = set()
        self._running = False
        self._next_freeze = 1 << 62
        self._unfreeze_below = -1
        self.spawned = 0
        self.exited = 0
        self.crashed = 0
        self.handled = 0  # messages handled by all processes
        self.dropped = 0  # messages refused by full mailboxes
        self.overloaded = 0  # processes ended with reason "overload"
        self.calls = 0  # calls handled by servers
        self.restarts = 0  # children restarted by supervisors
        self.exits: dict[str, int] = {}  # processes ended, by `exit_class` but "normal"
        self.started_at = 0.0
        self._born_at: float | None = None  # start time of this loop turn's new processes
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._ctx: contextvars.Context = None  # type: ignore[assignment]
        self._deadlines: _Deadlines = None  # type: ignore[assignment]
        self._token: contextvars.Token[Node | None] | None = None
        self.registry: RegistryBackend = None  # type: ignore[assignment]
        self.handler: Any = None

    def __repr__(self) -> str:
        return f"<Node {self.name}.{self.creation} processes={len(self._procs)}>"

    # -- lifecycle ----------------------------------------------------------------
    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the node on the running loop (``async with`` does this for you)."""
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        from .deployment import warn_if_several_workers
        from .nitrogen import NprocregHandler  # the registry layer sits above this one
        from .registry import LocalBackend

        self._loop = asyncio.get_running_loop()
        self.started_at = self._loop.time()
        self._deadlines = _Deadlines(self._loop)
        self._token = _node_var.set(self)
        self._ctx = contextvars.copy_context()
        if self.cluster is not None:
            from .cluster import Cluster

            cluster = Cluster(
                self,
                self.cluster,
                secret=self._secret,
                lease=self._lease,
                on_conflict=self._on_conflict,
            )
            try:
                self.creation = await cluster.start()
            except BaseException:
                await cluster.store.close()
                _node_var.reset(self._token)
                self._token = None
                raise
            self._cluster = cluster
            self._remote = cluster.remote
            self._lease_guard = cluster.membership.check
            self.registry = cluster.backend
        else:
            self.registry = LocalBackend(self)
            warn_if_several_workers(self.name)  # one of several server workers? (once)
        handler = (
            self._registry_handler if self._registry_handler is not None else NprocregHandler()
        )
        self.handler = handler
        self._handler_state = await handler.init(dict(self.handler_config), None)
        if self._gc_policy:
            GcPolicy.acquire()
            self._next_freeze = GcPolicy.next_freeze()
        self._running = True
        _running.append(self)

    async def stop(self, timeout: float = 5.0) -> None:
        """End every process with reason ``"shutdown"`` (newest first), wait up to
        `timeout` seconds for their ``terminate`` callbacks, then stop the node."""
        if not self._running:
            return
        self.stopping = True
        deadline = self._loop.time() + timeout
        # supervision trees first, top-down, so each stops its children in order
        tops = [
            pid
            for pid, parent in reversed(list(self._supervisors.items()))
            if parent not in self._supervisors
        ]
        for pid in tops:
            proc = self._procs.get(pid)
            if proc is not None:
                self._exit_signal(proc, None, "shutdown", linked=False)
        while any(pid in self._procs for pid in tops) and self._loop.time() < deadline:
            await asyncio.sleep(0.002)
        for _ in range(100):  # terminate callbacks may spawn: repeat until none is left
            if not self._procs:
                break
            for proc in reversed(list(self._procs.values())):
                self._end(proc, "shutdown")
            left = deadline - self._loop.time()
            if self._terminating and left > 0:
                await asyncio.wait(list(self._terminating), timeout=left)
            await asyncio.sleep(0)  # let cancelled process tasks unwind
            if left <= 0:
                break
        for task in list(self._terminating):
            task.cancel()
        for proc in list(self._procs.values()):  # stragglers: terminate timed out
            proc._procreg_stop_task()
            proc._procreg_finish("shutdown")
        await asyncio.sleep(0)
        self._runq.clear()
        if self._cluster is not None:
            try:
                await self._cluster.stop()
            except Exception:
                log.exception("leaving the cluster failed")
        self._deadlines.close()
        try:
            self._handler_state = await self.handler.finish(
                dict(self.handler_config), self._handler_state
            )
        finally:
            self._running = False
            self.stopping = False
            if self in _running:
                _running.remove(self)
            if self._gc_policy:
                GcPolicy.release()
            if self._token is not None:
                try:
                    _node_var.reset(self._token)
                except ValueError:  # stopped from another context
                    pass
                self._token = None

    # -- process table ------------------------------------------------------------
    def _new_pid(self) -> Pid:
        return _make_pid(Pid, (self.name, self.creation, next(self._serial)))

    def _add(self, proc: _Proc) -> None:
        procs = self._procs
        procs[proc._procreg_pid] = proc
        self.spawned += 1
        if len(procs) >= self._next_freeze:
            GcPolicy.grew(len(procs))
            self._next_freeze = GcPolicy.next_freeze()
            self._unfreeze_below = GcPolicy.unfreeze_below()

    def _forget(self, proc: _Proc) -> None:
        procs = self._procs
        if procs.pop(proc._procreg_pid, None) is not None:
            self.exited += 1
            if len(procs) < self._unfreeze_below:
                GcPolicy.shrank(len(procs))
                self._next_freeze = GcPolicy.next_freeze()
                self._unfreeze_below = GcPolicy.unfreeze_below()

    def _dist(self, pid: Pid) -> Distribution | None:
        """The distribution layer if `pid` is another node's (`foreign`), else None."""
        if self.foreign(pid):
            return self._remote
        return None

    def foreign(self, pid: Pid) -> bool:
        """True if `pid` belongs to another node of the cluster; `TypeError` if it is
        not a pid, `NodeDown` if its node is not part of any cluster this node is in."""
        if type(pid) is not Pid:
            raise TypeError(f"expected a Pid, got {type(pid).__name__}: {pid!r}")
        if pid[0] == self.name:
            return False
        if self._remote is None:
            raise NodeDown(
                f"unknown node {pid[0]!r}: {pid!r} is not a pid of a node in this cluster"
            )
        return True

    def _lookup(self, pid: Pid) -> _Proc | None:
        """The local process for `pid`; None if it is dead or another node's."""
        if self.foreign(pid):
            return None
        return self._procs.get(pid)

    def info(self, pid: Pid) -> ProcessInfo | None:
        """What the node knows of a live local process, for observers (see
        `ProcessInfo` for each field); None if it is not alive."""
        proc = self._procs.get(pid)
        if proc is None:
            return None
        reg = proc._procreg_reg
        keys = tuple(sorted(map(repr, reg))) if type(reg) is set else ((repr(reg),) if reg else ())
        ext = proc._procreg_ext
        groups = tuple(sorted(map(repr, ext.groups))) if ext is not None and ext.groups else ()
        waiting = len(proc._procreg_mail) if proc._procreg_mail else 0
        return new_process_info(  # positional: the fields in order, for speed
            pid,  # pid
            "Supervisor" if pid in self._supervisors else type(proc).__name__,  # kind
            keys,  # keys
            groups,  # groups
            waiting,  # mailbox
            max(proc._procreg_peak, waiting),  # mailbox_peak
            proc._procreg_max,  # max_mailbox
            (ext.overflow if ext is not None else None) or self._overflow,  # overflow
            ext.dropped if ext is not None else 0,  # dropped
            proc._procreg_handled,  # handled
            time.monotonic() - proc._procreg_born,  # age
            _STATUS[proc._procreg_st],  # status
            len(ext.links) if ext is not None and ext.links else 0,  # links
            len(ext.monitors) if ext is not None and ext.monitors else 0,  # monitors
            behaviour(self, proc),  # behaviour
        )

    def stats(self) -> NodeStats:
        """The node's counters, for observers (see `NodeStats` for each field)."""
        return new_node_stats(  # positional: the fields in order, for speed
            self.name,  # node
            self.creation,  # creation
            len(self._procs),  # processes
            self.spawned,  # spawned
            self.exited,  # exited
            self.crashed,  # crashed
            self.handled,  # handled
            self.dropped,  # dropped
            self.overloaded,  # overloaded
            self._max_mailbox,  # max_mailbox
            len(self._runq),  # runq
            self._loop.time() - self.started_at,  # uptime
            self.calls,  # calls
            self.restarts,  # restarts
        )

    def nodes(self) -> list[str]:
        """The live nodes of the cluster (this one included), sorted; just this one
        on the embedded default."""
        if self._cluster is None:
            return [self.name]
        names: list[str] = self._cluster.live_nodes()
        return names

    def monitor_nodes(self, pid: Pid, on: bool = True) -> None:
        """Send `pid` a `NodeEvent` whenever a node comes up or goes down."""
        if on:
            self._node_watchers.add(pid)
        else:
            self._node_watchers.discard(pid)

    def _node_event(self, kind: str, name: str) -> None:
        event = NodeEvent(kind, name)
        for pid in list(self._node_watchers):
            proc = self._procs.get(pid)
            if proc is None:
                self._node_watchers.discard(pid)
            else:
                proc._procreg_info(event)

    def process_count(self) -> int:
        """How many processes are alive on this node."""
        return len(self._procs)

    def processes(self) -> list[Pid]:
        """The pids of the live processes, oldest first."""
        return list(self._procs)

    def local_process(self, pid: Pid) -> _Proc | None:
        """The object of the live process `pid` of this node (its `Server` instance,
        say), None if there is none; for tests and debugging: talk to a process with
        messages, not through its object."""
        return self._procs.get(pid)

    @property
    def running(self) -> bool:
        """True from `start` until `stop` has finished."""
        return self._running

    def me(self) -> _Proc | None:
        """The calling process, if the caller is one."""
        proc = self._current
        if proc is None:
            proc = current_process.get()
        return proc

    def _me_or_raise(self, what: str) -> _Proc:
        proc = self.me()
        if proc is None:
            raise NotInProcess(f"{what} must be called from inside a process")
        return proc

    # -- scheduling (server processes) --------------------------------------------
    def _schedule(self, proc: _Proc) -> None:
        self._runq.append(proc)
        if not self._drain_pending:
            self._drain_pending = True
            self._loop.call_soon(self._drain, context=self._ctx)

    def _drain(self) -> None:
        runq = self._runq
        n = len(runq)
        try:
            while n:
                n -= 1
                proc = runq.popleft()
                proc._procreg_run()
        finally:  # even if KeyboardInterrupt escapes a handler, the queue keeps going
            if runq:
                self._loop.call_soon(self._drain, context=self._ctx)
            else:
                self._drain_pending = False

    # -- spawning -----------------------------------------------------------------
    def spawn(
        self,
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
        if isinstance(fn, type) and hasattr(fn, "_procreg_server"):
            pid: Pid = cast(Any, fn).start(
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
            raise TypeError(
                f"spawn() needs an `async def` function or a Server subclass, got {fn!r}"
            )
        check_timeout(idle_timeout, "idle_timeout")
        if max_mailbox is not None or overflow is not None:
            check_bound(max_mailbox, overflow)
        parent = self.me() if (link or monitor) else None
        if (link or monitor) and parent is None:
            raise NotInProcess(
                "spawn(link=True / monitor=True) must be called from inside a process"
            )
        proc = self._start_body(self._new_pid(), fn, args)
        self.setup(proc, parent, link, monitor, trap_exits, idle_timeout)
        if max_mailbox is not None or overflow is not None:
            self.bound(proc, max_mailbox, overflow)
        return proc._procreg_pid

    def _start_body(
        self,
        pid: Pid,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        result: asyncio.Future[Any] | None = None,
        cls: type[Process] = Process,
    ) -> Process:
        """A coroutine process `pid` running ``fn(*args)`` (its outcome also set on
        `result`, if given); its body starts on the next loop turn. `cls` may be a
        subclass of `Process` with its own delivery (the web layer's connections)."""
        proc = cls(self, pid)
        proc._result = result
        self._add(proc)
        proc._task = self._loop.create_task(proc._main(fn, args))
        return proc

    def spawn_main(
        self,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        result: asyncio.Future[Any],
    ) -> Pid:
        """Spawn the main process of `procreg.run`: its outcome goes to `result`
        (and a crash is not logged as a crash report, since `run` re-raises it)."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"run() needs an `async def` function, got {fn!r}")
        return self._start_body(self._new_pid(), fn, args, result)._procreg_pid

    async def start_with_pid(
        self,
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
        waits on its own key raise `Deadlock` (see `registry.started_for`)."""
        if self.starts_now(factory):
            return self.start_now(pid, factory, args, idle_timeout)
        server: Any = factory
        ready: asyncio.Future[Pid] = self._loop.create_future()
        proc, _ = server._procreg_start(args, False, False, False, idle_timeout, ready, pid)
        if key is None:
            await ready
        else:
            with started_for(self, key, proc):
                await ready
        return cast(_Proc, proc)

    @staticmethod
    def starts_now(factory: Any) -> bool:
        """Whether `start_now` can start `factory`: anything but a server with an
        ``async def init``."""
        if isinstance(factory, type) and hasattr(factory, "_procreg_server"):
            return not cast(Any, factory)._procreg_async_mask & 8
        return True

    def start_now(
        self, pid: Pid, factory: Any, args: tuple[Any, ...], idle_timeout: float | None
    ) -> _Proc:
        """`start_with_pid` without awaiting, for a factory `starts_now` accepts: a
        server's ``init`` has run when this returns (its error raised here)."""
        if isinstance(factory, type) and hasattr(factory, "_procreg_server"):
            proc, _ = cast(Any, factory)._procreg_start(
                args, False, False, False, idle_timeout, None, pid
            )
            return cast(_Proc, proc)
        check_timeout(idle_timeout, "idle_timeout")
        body = self._start_body(pid, factory, args)
        self.setup(body, None, False, False, False, idle_timeout)
        return body

    def setup(
        self,
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
            ext.idle_last = self._loop.time()
            ext.idle_handle = self._loop.call_at(
                ext.idle_last + idle_timeout, proc._procreg_idle_check
            )
        if parent is not None:
            if link:
                self._add_link(parent, proc)
            if monitor:
                ref = self._add_monitor(parent, proc)
        return ref

    def bound(self, proc: _Proc, max_mailbox: int | None, overflow: str | None) -> None:
        """Set the mailbox bound of `proc` (``0``: none; None: keep the node's default)
        and its overflow policy (None: the node's default)."""
        if max_mailbox is not None:
            proc._procreg_max = max_mailbox or None
        if overflow is not None:
            proc._procreg_extra().overflow = overflow

    # -- messaging ----------------------------------------------------------------
    def send(self, pid: Pid, msg: Any) -> bool:
        """Put `msg` in the mailbox of `pid` (``handle_info`` for a server); see
        `procreg.send` for what the result means."""
        proc = self._procs.get(pid)
        if proc is None:
            remote = self._dist(pid)
            if remote is not None:
                remote.send(pid, msg)
                return True
            return False
        return proc._procreg_info(msg)

    def cast(self, pid: Pid, msg: Any) -> bool:
        """Send `msg` as a cast (``handle_cast`` for a server); see `procreg.cast`."""
        proc = self._procs.get(pid)
        if proc is None:
            remote = self._dist(pid)
            if remote is not None:
                remote.cast(pid, msg)
                return True
            return False
        return proc._procreg_cast(msg)

    async def call(self, pid: Pid, request: Any, timeout: float | None = 5.0) -> Any:
        """Send `request` and wait for the reply; see `procreg.call`."""
        if timeout.__class__ is not float or not timeout >= 0:  # (NaN fails >= too)
            check_timeout(timeout)
        proc = self._procs.get(pid)
        if proc is None or proc._procreg_st >= EXITING or pid.__class__ is not Pid:
            remote = self._dist(pid)
            if remote is not None:
                return await remote.call(pid, request, timeout)
            raise NoProcess(f"no process {pid!r}")
        if proc is self._current or proc is current_process.get():
            raise Deadlock(f"process {pid!r} called itself: the call could never be answered")
        if proc._procreg_st == IDLE and proc._procreg_direct_call:
            if proc._procreg_reg is not None and self._lease_guard is not None:
                self._lease_guard()  # past the lease deadline it fences, ending proc
                if proc._procreg_st >= EXITING:
                    raise NoProcess(f"no process {pid!r}")
            self._inline -= 1
            if self._inline:
                return await proc._procreg_call_direct(request, timeout)
            self._inline = INLINE_BUDGET  # take the scheduled path: the caller yields
        if self._waiting:  # someone waits on a start: is it this caller, via `proc`?
            _check_call(self, proc)
        fut = self._loop.create_future()
        if proc._procreg_call(fut, request) and timeout is not None:  # (full mailbox: failed)
            self._deadlines.add(timeout, fut)
        return await fut

    def caller(self) -> Any:
        """The caller of the call being handled (for a later `reply`)."""
        if self._current is not None:
            caller = self._caller
            if caller is _LAZY:
                caller = self._caller = self._loop.create_future()
        else:
            caller = current_caller.get()
        if caller is None:
            raise NotInProcess("caller() is only meaningful inside handle_call")
        return caller

    # -- exits, links, monitors ---------------------------------------------------
    def _end(self, proc: _Proc, reason: Any) -> None:
        """End `proc` with `reason`: run the exit sequence (without recursion)."""
        endq = self._endq
        endq.append((proc, reason))
        if self._ending:
            return
        self._ending = True
        try:
            while endq:
                p, r = endq.popleft()
                if p._procreg_st >= EXITING:
                    continue
                p._procreg_st = EXITING
                if p._procreg_ext is not None:
                    p._procreg_ext.exit_reason = r
                if r != "kill" and p._procreg_unwinds():
                    # a running coroutine body: cancel it; it finishes the exit once
                    # it has unwound (its finally blocks run before Down is sent)
                    p._procreg_extra().exit_reason = r
                    p._procreg_stop_task()
                    continue
                p._procreg_stop_task()
                pending = None if r == "kill" else p._procreg_terminate(r)
                if pending is None:
                    p._procreg_finish(r)
                else:
                    task = self._loop.create_task(self._finish_after(p, pending, r))
                    ext = p._procreg_extra()
                    ext.exit_reason = r
                    ext.task = task  # so that a "kill" can cut terminate short
                    self._terminating.add(task)
                    task.add_done_callback(self._terminating.discard)
                    # cancelled (a "kill") before its first step, the task neither
                    # awaited terminate nor finished the exit: both are done here
                    task.add_done_callback(partial(_terminate_done, p, pending))
        finally:
            self._ending = False

    async def _finish_after(
        self, proc: _Proc, pending: Coroutine[Any, Any, Any], reason: Any
    ) -> None:
        current_process.set(proc)
        try:
            await pending
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("terminate() of %r raised", proc._procreg_pid)
        finally:
            ext = proc._procreg_ext
            if ext is not None:
                ext.task = None
                reason = ext.exit_reason  # "kill" if it was killed meanwhile
            proc._procreg_finish(reason)

    def _fail(self, proc: _Proc, exc: BaseException, last: Any, report: bool = True) -> Any:
        """End `proc` because its code raised `exc`; returns the exit reason.

        `Stop(reason)` ends it with that reason quietly; any other exception is the
        reason itself, with a crash report (unless `report` is False)."""
        reason: Any = exc.reason if isinstance(exc, Stop) else exc
        if proc._procreg_st < EXITING:
            if report and reason is exc:
                self._crash_report(proc, exc, last)
            self._end(proc, reason)
        return reason

    def _crash_report(self, proc: _Proc, exc: BaseException, last: Any) -> None:
        self.crashed += 1
        log.error(
            "process %r (%s) crashed: %r; last message: %r",
            proc._procreg_pid,
            proc._procreg_kind,
            exc,
            last,
            exc_info=exc,
            extra=log_fields(self, proc),
        )

    def exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal to `pid`; see `procreg.exit`."""
        proc = self._procs.get(pid)
        if proc is None:
            remote = self._dist(pid)
            if remote is not None:
                me = self.me()
                remote.exit(me._procreg_pid if me is not None else None, pid, reason)
            return
        me = self.me()
        sender = me._procreg_pid if me is not None else None
        if proc is me and reason == "normal":
            self._end(proc, "normal")
            return
        self._exit_signal(proc, sender, reason, linked=False)

    def _exit_signal(self, target: _Proc, sender: Pid | None, reason: Any, linked: bool) -> None:
        if target._procreg_st >= EXITING:
            if reason == "kill" and not linked and target._procreg_st == EXITING:
                target._procreg_kill_exiting()  # cut a running terminate / unwinding short
            return
        if reason == "kill" and not linked:
            self._end(target, "kill")
            return
        ext = target._procreg_ext
        if ext is not None and ext.trap:
            target._procreg_info(Exit(sender, reason))
        elif reason != "normal":
            self._end(target, reason)

    def _link_signal(self, other: Pid, sender: Pid, reason: Any) -> None:
        proc = self._procs.get(other)
        if proc is None:
            if self._remote is not None and other[0] != self.name:
                self._remote.link_exit(sender, other, reason)
            return
        ext = proc._procreg_ext
        if ext is not None and ext.links is not None:
            ext.links.discard(sender)
        self._exit_signal(proc, sender, reason, linked=True)

    def _add_link(self, a: _Proc, b: _Proc) -> None:
        ea, eb = a._procreg_extra(), b._procreg_extra()
        if ea.links is None:
            ea.links = set()
        if eb.links is None:
            eb.links = set()
        ea.links.add(b._procreg_pid)
        eb.links.add(a._procreg_pid)

    def link(self, pid: Pid) -> None:
        """Link the calling process and `pid`; see `procreg.link`."""
        me = self._me_or_raise("link()")
        proc = self._lookup(pid)
        remote = self._dist(pid) if proc is None else None
        if remote is not None:
            if not remote.reachable(pid):
                self._exit_signal(me, pid, "noconnection", linked=True)
                return
            self.runtime.attach_link(me._procreg_pid, pid)
            remote.link(me._procreg_pid, pid)
            return
        if proc is None or proc._procreg_st >= EXITING:
            ext = me._procreg_ext
            if ext is not None and ext.trap:
                me._procreg_info(Exit(pid, "noproc"))
                return
            raise NoProcess(f"cannot link to {pid!r}: no such process")
        if proc is me:
            return
        self._add_link(me, proc)

    def unlink(self, pid: Pid) -> None:
        """Remove the link between the calling process and `pid`, if any."""
        me = self._me_or_raise("unlink()")
        if me._procreg_ext is not None and me._procreg_ext.links:
            me._procreg_ext.links.discard(pid)
        proc = self._procs.get(pid)
        if proc is None:
            remote = self._dist(pid)
            if remote is not None:
                remote.unlink(me._procreg_pid, pid)
            return
        if proc._procreg_ext is not None and proc._procreg_ext.links:
            proc._procreg_ext.links.discard(me._procreg_pid)

    def _add_monitor(self, watcher: _Proc, target: _Proc) -> Ref:
        ref = Ref(self.name)
        et, ew = target._procreg_extra(), watcher._procreg_extra()
        if et.monitors is None:
            et.monitors = {}
        if ew.watching is None:
            ew.watching = {}
        et.monitors[ref] = watcher._procreg_pid
        ew.watching[ref] = target._procreg_pid
        return ref

    def monitor(self, pid: Pid) -> Ref:
        """Monitor `pid` from the calling process; see `procreg.monitor`."""
        me = self._me_or_raise("monitor()")
        proc = self._lookup(pid)
        remote = self._dist(pid) if proc is None else None
        if remote is not None:
            ref = Ref(self.name)
            if not remote.reachable(pid):
                me._procreg_info(Down(ref, pid, "noconnection"))
                return ref
            self.runtime.attach_watch(me._procreg_pid, ref, pid)
            remote.monitor(me._procreg_pid, ref, pid)
            return ref
        if proc is None or proc._procreg_st >= EXITING:
            ref = Ref(self.name)
            me._procreg_info(Down(ref, pid, "noproc"))
            return ref
        return self._add_monitor(me, proc)

    def demonitor(self, ref: Ref, *, flush: bool = False) -> bool:
        """Stop a monitor (of a process, or of a key: `procreg.monitor_key`); True if
        it was active. ``flush=True`` also removes a `Down` for it (the `KeyEvent`
        messages of a key monitor) already in the caller's mailbox."""
        me = self._me_or_raise("demonitor()")
        ext = me._procreg_ext
        if ext is not None and ext.key_monitors and ref in ext.key_monitors:
            removed = self.registry.demonitor_key(ref, me._procreg_pid)
            if flush and me._procreg_mail:
                me._procreg_flush_key_events(ref)
            return removed
        target = ext.watching.pop(ref, None) if ext is not None and ext.watching else None
        if target is not None:
            self._drop_monitor(target, ref)
        if flush and me._procreg_mail:
            me._procreg_flush_down(ref)
        return target is not None

    def _drop_monitor(self, target: Pid, ref: Ref) -> None:
        proc = self._procs.get(target)
        if proc is None and self._remote is not None and target[0] != self.name:
            self._remote.demonitor(ref, target)
            return
        if proc is not None and proc._procreg_ext is not None and proc._procreg_ext.monitors:
            proc._procreg_ext.monitors.pop(ref, None)

    def _down(self, watcher: Pid, ref: Ref, pid: Pid, reason: Any) -> None:
        proc = self._procs.get(watcher)
        if proc is None:
            if self._remote is not None and watcher[0] != self.name:
                self._remote.down(watcher, ref, pid, reason)
            return
        ext = proc._procreg_ext
        if ext is not None and ext.watching:
            ext.watching.pop(ref, None)
        proc._procreg_info(Down(ref, pid, reason))

    def is_alive(self, pid: Pid) -> bool:
        """True while `pid` is a live local process."""
        proc = self._procs.get(pid)
        return proc is not None and proc._procreg_st < EXITING

    # -- registry hook ------------------------------------------------------------
    def _drop_registrations(self, proc: _Proc) -> None:
        self.registry.process_ended(proc)
