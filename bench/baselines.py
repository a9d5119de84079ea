"""The designs procreg is measured against.

`QueueNode` is the plain asyncio design that serves as the baseline: each
process is a task reading its own `asyncio.Queue`; a call puts a Future in the
queue and awaits it; a cast puts the message; the node keeps ``serial -> process``
and the registry ``key -> (task, queue)``, each entry removed by a done-callback
when the task ends. It has no timeouts, links or monitors: it is the cheapest
honest version of "a task per process".

The Pykka baseline lives in `bench.actors` (imported only when Pykka is installed).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable
from functools import partial
from typing import Any

from .measure import Tally

__all__ = ["Handle", "QueueNode", "QueueServer"]

CALL = 0
CAST = 1
INFO = 2


class QueueServer:
    """What runs inside a baseline process: the same callbacks as a procreg Server."""

    tally: Tally | None = None

    def init(self, *args: Any) -> None:
        if args:
            self.tally = args[0]

    def handle_call(self, request: Any) -> Any:
        return request

    def handle_cast(self, msg: Any) -> None:
        t = self.tally
        assert t is not None
        t.n += 1
        if t.n == t.target:
            t.finish()

    handle_info = handle_cast


async def _body(server: QueueServer, queue: asyncio.Queue[Any]) -> None:
    while True:
        item = await queue.get()
        tag = item[0]
        if tag == CALL:
            fut = item[1]
            if not fut.done():
                fut.set_result(server.handle_call(item[2]))
        elif tag == CAST:
            server.handle_cast(item[1])
        else:
            server.handle_info(item[1])


Handle = tuple["asyncio.Task[None]", "asyncio.Queue[Any]"]
"""A baseline process: its task and its queue (the 'pid')."""


class QueueNode:
    """The plain asyncio design: a task and a queue per process, dicts for the rest.

    >>> async def main():
    ...     node = QueueNode()
    ...     h = node.spawn(QueueServer)
    ...     return await node.call(h, "ping")
    >>> asyncio.run(main())
    'ping'
    """

    def __init__(self) -> None:
        self.procs: dict[int, Handle] = {}
        self.registry: dict[Hashable, Handle] = {}
        self.groups: dict[Hashable, dict[asyncio.Task[None], Handle]] = {}
        self._serial = itertools.count()
        self._loop = asyncio.get_running_loop()

    # -- processes --------------------------------------------------------------
    def spawn(self, cls: type[QueueServer], *args: Any, maxsize: int = 0) -> Handle:
        server = cls()
        server.init(*args)
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        task = self._loop.create_task(_body(server, queue))
        serial = next(self._serial)
        handle = (task, queue)
        self.procs[serial] = handle
        task.add_done_callback(partial(self._forget, serial))
        return handle

    def _forget(self, serial: int, _task: asyncio.Task[None]) -> None:
        del self.procs[serial]

    def count(self) -> int:
        return len(self.procs)

    async def call(self, handle: Handle, request: Any) -> Any:
        task, queue = handle
        if task.done():
            raise LookupError("no process")
        fut = self._loop.create_future()
        queue.put_nowait((CALL, fut, request))
        return await fut

    @staticmethod
    def cast(handle: Handle, msg: Any) -> None:
        handle[1].put_nowait((CAST, msg))

    @staticmethod
    def exit(handle: Handle) -> None:
        handle[0].cancel()

    # -- registry ---------------------------------------------------------------
    async def get_or_spawn(self, key: Hashable, cls: type[QueueServer], *args: Any) -> Handle:
        handle = self.registry.get(key)
        if handle is not None:
            return handle
        handle = self.spawn(cls, *args)
        self.registry[key] = handle
        handle[0].add_done_callback(partial(self._unregister, key))
        return handle

    def _unregister(self, key: Hashable, _task: asyncio.Task[None]) -> None:
        del self.registry[key]

    async def whereis(self, key: Hashable) -> Handle | None:
        return self.registry.get(key)

    def join(self, group: Hashable, handle: Handle) -> None:
        members = self.groups.get(group)
        if members is None:
            members = self.groups[group] = {}
        members[handle[0]] = handle

    async def publish(self, group: Hashable, msg: Any) -> int:
        members = self.groups.get(group)
        if not members:
            return 0
        item = (INFO, msg)
        for _task, queue in members.values():
            queue.put_nowait(item)
        return len(members)

    async def shutdown(self) -> None:
        tasks = [h[0] for h in self.procs.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
