"""Timeouts of the calls in flight on a node (`Deadlines`), without a timer per call."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .errors import CallTimeout

__all__ = ["Deadlines"]


class Deadlines:
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
