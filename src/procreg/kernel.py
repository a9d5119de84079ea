"""The kernel: the runtime core of a node. One event loop's processes, their
scheduling, messaging and lifecycle, without any backend.

A `Kernel` owns a table ``pid -> process``, a run queue of server processes that have
mail, and the bookkeeping for calls in flight. Its collaborators are given to it by
the composition root, `procreg.node.Node` (the class users construct), through typed
slots: ``registry`` (a `RegistryBackend`), the distribution layer (a
`seams.Distribution`, when clustered) and the lease guard. Backends act on its
processes through ``runtime`` (`surface.NodeRuntime`, the `seams.Runtime` protocol).

The kernel's methods live in modules by concept and are bound in its class body:
`spawning` (spawn and the spawn options), `signals` (exits, links, monitors) and,
here, the process table, scheduling, messaging and introspection; `waits` detects
waits that could never end, `deadlines` times calls out.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import signals, spawning
from .deadlines import Deadlines
from .errors import Deadlock, NodeDown, NoNode, NoProcess, NotInProcess
from .gcpolicy import GcPolicy
from .introspection import NodeStats, ProcessInfo, ProcessStatus, new_node_stats, new_process_info
from .messages import NodeEvent
from .options import check_bound, check_timeout
from .pid import Pid
from .process import EXITING, IDLE, _Proc, behaviour, current_caller, current_process
from .surface import NodeRuntime
from .waits import TaskLock, check_call

if TYPE_CHECKING:
    from .backends import RegistryBackend
    from .seams import Distribution

__all__ = ["DEFAULT_BATCH", "Kernel", "current_node"]

log = logging.getLogger("procreg")

DEFAULT_BATCH = 64
_node_var: contextvars.ContextVar[Kernel | None] = contextvars.ContextVar(
    "procreg_node", default=None
)
_running: list[Kernel] = []
_make_pid = tuple.__new__  # Pid(...) without a Python-level __new__ call
INLINE_BUDGET = 64  # direct-dispatched calls in a row before a caller must yield
_LAZY = object()  # node._caller during a direct call, until caller() asks for a future
_creations = itertools.count(1)
_STATUS: tuple[ProcessStatus, ...] = ("idle", "runnable", "busy", "exiting", "dead")  # by _st


def current_node() -> Kernel:
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


class Kernel:
    """The runtime core of a node (see the module). Not constructed directly: a
    `procreg.Node` is one, with its backends wired in. `name`, `batch`,
    `gc_policy`, `max_mailbox` and `overflow` are `procreg.Node`'s options."""

    def __init__(
        self,
        name: str,
        *,
        batch: int = DEFAULT_BATCH,
        gc_policy: bool = True,
        max_mailbox: int | None = None,
        overflow: str = "drop",
    ) -> None:
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        check_bound(max_mailbox, overflow)
        # (the attributes read on the hot paths first)
        self._procs: dict[Pid, _Proc] = {}
        self._current: _Proc | None = None  # the server whose sync handler is running
        self._caller: Any = None  # the caller of the sync handle_call running
        self._inline = INLINE_BUDGET
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._runq: deque[Any] = deque()
        self._drain_pending = False
        self._batch = batch
        self._max_mailbox: int | None = max_mailbox or None  # read by every new process
        self._overflow = overflow
        self._serial = itertools.count(1)
        self.name = name
        self.creation = next(_creations)
        # the cluster's lease check (`Membership.check`): a registered process calls it
        # before it handles a message, so a node woken from a pause past its lease
        # deadline fences itself before any registered process acts
        self._lease_guard: Callable[[], bool] | None = None
        # run after each pass over the run queue (the cluster sends the frames the
        # handlers made in that pass at once, rather than one loop turn later)
        self._after_drain: Callable[[], None] | None = None
        self._remote: Distribution | None = None  # operations on other nodes' pids
        self.registry: RegistryBackend = None  # type: ignore[assignment]
        self.runtime = NodeRuntime(self)  # what backends may do to local processes
        # who waits on whom, to raise Deadlock instead of waiting forever (`waits`)
        self._starting: dict[tuple[str, Any], asyncio.Task[Any]] = {}  # key -> init task
        self._waiting: dict[asyncio.Task[Any], Any] = {}  # task -> key, task or TaskLock
        self._held: set[TaskLock] = set()  # the node's task locks held now
        self._endq: deque[tuple[_Proc, Any]] = deque()
        self._ending = False
        self._terminating: set[asyncio.Task[Any]] = set()
        self._deadlines: Deadlines = None  # type: ignore[assignment]
        self._ctx: contextvars.Context = None  # type: ignore[assignment]
        self._next_freeze = 1 << 62
        self._unfreeze_below = -1
        self._gc_policy = gc_policy
        self._node_watchers: set[Pid] = set()  # processes that get NodeEvent messages
        # what `info` calls processes whose class does not say what they are (a
        # supervisor is a coroutine process): pid -> kind
        self.kinds: dict[Pid, str] = {}
        # run first by `stop`, given its deadline (loop time): a supervision layer
        # stops its trees top-down there
        self.shutdown_hooks: list[Callable[[float], Awaitable[None]]] = []
        # the per-node state of the layers above, by layer (the registry handler's
        # slot, the supervision state): kept here, where it dies with the node (a
        # module-level WeakKeyDictionary whose values refer to the node never lets
        # the node go)
        self.layers: dict[str, Any] = {}
        self._running = False
        self.stopping = False  # True while stop() ends the processes
        self.spawned = 0
        self.exited = 0
        self.crashed = 0
        self.handled = 0  # messages handled by all processes
        self.dropped = 0  # messages refused by full mailboxes
        self.overloaded = 0  # processes ended with reason "overload"
        self.calls = 0  # calls handled by servers
        self.restarts = 0  # children restarted by supervisors
        self.exits: dict[str, int] = {}  # processes ended, by `exit_class` but "normal"
        self.killed = 0  # ... and those ended with the reason object "kill" (not in exits)
        self.started_at = 0.0
        self._born_at: float | None = None  # start time of this loop turn's new processes
        self._token: contextvars.Token[Kernel | None] | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name}.{self.creation} processes={len(self._procs)}>"

    # -- lifecycle (the steps `procreg.Node.start` and `stop` take) ------------------
    def _begin(self) -> None:
        """Take the running loop and become the current node of this context."""
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._loop = asyncio.get_running_loop()
        self.started_at = self._loop.time()
        self._deadlines = Deadlines(self._loop)
        self._token = _node_var.set(self)
        self._ctx = contextvars.copy_context()

    def _unbegin(self) -> None:
        """Undo `_begin` (the start failed)."""
        if self._token is not None:
            _node_var.reset(self._token)
            self._token = None

    def _open(self) -> None:
        """Running from now on: processes may be spawned."""
        if self._gc_policy:
            GcPolicy.acquire()
            self._next_freeze = GcPolicy.next_freeze()
        self._running = True
        _running.append(self)

    async def _end_processes(self, timeout: float) -> None:
        """End every process with reason ``"shutdown"`` (the `shutdown_hooks` first,
        then the rest newest first), waiting up to `timeout` seconds for their
        ``terminate`` callbacks."""
        self.stopping = True
        deadline = self._loop.time() + timeout
        for hook in list(self.shutdown_hooks):
            try:
                await hook(deadline)
            except Exception:  # the rest of the stop must still happen
                log.exception("a shutdown hook of %r failed", self)
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

    def _close(self) -> None:
        """Stopped: no longer running nor current."""
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

    # -- introspection ------------------------------------------------------------
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
            self.kinds.get(pid) or type(proc).__name__,  # kind
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

    def nodes(self) -> list[str]:
        """The live nodes of the cluster (this one included), sorted; just this one
        on the embedded default."""
        return [self.name]

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
            if self._after_drain is not None:
                self._after_drain()
        finally:  # even if KeyboardInterrupt escapes a handler, the queue keeps going
            if runq:
                self._loop.call_soon(self._drain, context=self._ctx)
            else:
                self._drain_pending = False

    # -- spawning (`spawning`) ----------------------------------------------------
    spawn = spawning.spawn
    _start_body = spawning.start_body
    spawn_main = spawning.spawn_main
    start_with_pid = spawning.start_with_pid
    starts_now = staticmethod(spawning.starts_now)
    start_now = spawning.start_now
    setup = spawning.setup
    bound = spawning.bound

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
            check_call(self, proc)
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

    # -- exits, links, monitors (`signals`) ---------------------------------------
    _end = signals.end
    _finish_after = signals.finish_after
    _fail = signals.fail
    _crash_report = signals.crash_report
    exit = signals.exit
    _exit_signal = signals.exit_signal
    _link_signal = signals.link_signal
    _add_link = signals.add_link
    link = signals.link
    unlink = signals.unlink
    _add_monitor = signals.add_monitor
    monitor = signals.monitor
    demonitor = signals.demonitor
    _drop_monitor = signals.drop_monitor
    _down = signals.down

    def is_alive(self, pid: Pid) -> bool:
        """True while `pid` is a live local process."""
        proc = self._procs.get(pid)
        return proc is not None and proc._procreg_st < EXITING

    # -- registry hook ------------------------------------------------------------
    def _drop_registrations(self, proc: _Proc) -> None:
        self.registry.process_ended(proc)
