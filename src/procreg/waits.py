"""Waits that could never end: the node's wait graph, and `Deadlock` instead.

A task that awaits a get_or_spawn attempt of another caller, a `TaskLock` (the
Nitrogen registry handler's), or a process's start waits on another task: the async
``init`` of the process being started for that key (``node._starting``), the task
holding the lock (``lock.holder``), or the starting process's init (or, for a
supervisor, its body). ``node._waiting`` records, for each task waiting so, on
what. Before a task waits, or calls a process whose serving task (a coroutine
process's body, a server's running handler) is waiting, it follows that chain;
reaching itself means the wait could never end (an init waiting on its own key,
directly or through other keys or the handler lock; a child's init calling the
supervisor or process waiting for it), and `Deadlock` is raised instead, as for a
process calling itself. Tasks, not processes, are the unit: two tasks of one
process (``gather``) may wait on each other's lock, and a helper task may wait on
a start while the process's body still answers calls. A wait made through a
helper task (``asyncio.wait_for`` around it) is not linked to the task awaiting
the helper, so such a cycle is not detected.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .errors import Deadlock

if TYPE_CHECKING:
    from .kernel import Kernel
    from .process import _Proc

__all__ = ["TaskLock", "check_call", "check_wait", "serving_task", "started_for", "waiting_on"]


class TaskLock:
    """An asyncio lock that knows the task holding it, so that a wait for it joins
    the node's wait graph: a task that would wait for a lock held, through a chain
    of waits, by itself raises `Deadlock` instead (`check_wait`). `name` says what
    the lock guards, in that error. The node's ``_held`` is the set of its locks
    held now (its fast paths skip the wait graph while it and ``_starting`` are
    empty)."""

    __slots__ = ("_lock", "_node", "holder", "name")

    def __init__(self, node: Kernel, name: str) -> None:
        self.name = name
        self.holder: asyncio.Task[Any] | None = None
        self._lock = asyncio.Lock()
        self._node = node

    async def acquire(self) -> None:
        """Wait for the lock, recorded as a wait on it (`waiting_on`): raises
        `Deadlock` if it could never be had."""
        with waiting_on(self._node, self):
            await self._lock.acquire()
        self.holder = asyncio.current_task()
        self._node._held.add(self)

    def release(self) -> None:
        """Release the lock (by the task holding it)."""
        self.holder = None
        self._node._held.discard(self)
        self._lock.release()


def _next_task(node: Kernel, waits_on: Any) -> asyncio.Task[Any] | None:
    if type(waits_on) is TaskLock:
        return waits_on.holder
    if isinstance(waits_on, asyncio.Task):
        return waits_on
    return node._starting.get(waits_on)


def check_wait(node: Kernel, waits_on: Any) -> None:
    """Raise `Deadlock` if the calling task waiting on `waits_on` (a ``(table, key)``,
    a `TaskLock` or a task) would wait, through any chain of waits, on itself."""
    me = asyncio.current_task()
    if me is None:
        return
    seen: set[asyncio.Task[Any]] = set()
    task = _next_task(node, waits_on)
    while task is not None and task not in seen:
        if task is me:
            if type(waits_on) is TaskLock:
                what = waits_on.name
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

    def __init__(self, node: Kernel, waits_on: Any) -> None:
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

    def __init__(self, node: Kernel, key: tuple[str, Any], proc: _Proc) -> None:
        self._node = node
        self._key = key
        self._task = serving_task(proc)

    def __enter__(self) -> None:
        if self._task is not None:
            self._node._starting[self._key] = self._task

    def __exit__(self, *exc: object) -> None:
        if self._node._starting.get(self._key) is self._task:
            del self._node._starting[self._key]


def check_call(node: Kernel, proc: _Proc) -> None:
    """Raise `Deadlock` if the task that would answer a call to `proc` waits,
    through any chain of waits, on the caller (a child's ``init`` calling the
    supervisor that waits for it)."""
    task = serving_task(proc)
    if task is not None and task in node._waiting:
        check_wait(node, task)
