"""Background tasks of a cluster node: kept while they run and stopped when it leaves.

The event loop holds only weak references to the tasks it runs, so a task nothing
else refers to can be garbage-collected before it finishes (see the note under
`asyncio.create_task` in Python's documentation). Every fire-and-forget task of the
cluster (a claim batch, a release flush, a key-watch write, a relayed call) is started
through a `Tasks` set, which holds it until it ends; when the node leaves, `drain`
lets them end (the store is closed first, so their store operations fail fast and
they answer their callers with that failure) and cancels only those still running
after a timeout, so none outlives `Cluster.stop`. (Cancelling them at once would
leave callers waiting for ever: a task cancelled before its first step never runs
the code that answers them.)
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Tasks", "stop_tasks"]

log = logging.getLogger("procreg.cluster")

T = TypeVar("T")


async def stop_tasks(*tasks: asyncio.Task[Any] | None, timeout: float = 1.0) -> None:
    """Cancel background tasks and wait for them, but not forever: a client library
    can swallow a cancellation (the task then goes on awaiting), so the loops also
    check a closing flag and this gives up after `timeout` seconds."""
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    if not live:
        return
    _, pending = await asyncio.wait(live, timeout=timeout)
    for task in pending:
        task.cancel()
        log.warning("background task %r did not stop in %s s", task.get_coro(), timeout)


class Tasks:
    """A set of running background tasks (the `Store`'s, shared by the components
    that use it; `Remote` keeps its own for remote spawns)."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        loop: asyncio.AbstractEventLoop | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        """Run `coro` as a task of `loop` (the running one by default), in `context`
        (a copy of the current one by default), kept until it ends; returns the task."""
        task = (loop or asyncio.get_running_loop()).create_task(coro, context=context)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    def __len__(self) -> int:
        """How many are running."""
        return len(self._running)

    async def stop(self, timeout: float = 1.0) -> None:
        """Cancel every task still running and wait for them (`stop_tasks`), also
        those they start while they unwind: for tasks that answer no one else."""
        for _ in range(3):
            if not self._running:
                return
            await stop_tasks(*self._running, timeout=timeout)

    async def drain(self, timeout: float = 1.0) -> None:
        """Wait up to `timeout` seconds for every task to end (also those they start
        meanwhile), then cancel the rest (`stop`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(list(self._running), timeout=left)
        await self.stop()
