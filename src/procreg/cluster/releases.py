"""Releases of one node's registry entries, batched: a process ended, a key was
unregistered, a member left a group. The local view changes at once; the store at the
end of the loop turn, `RELEASE_BATCH` releases to a `scripts.RELEASE` script call. What
cannot reach the store (it is down) is reconciled from the owned set on reconnect
(`recovery.reconcile`)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..errors import ClusterUnavailable
from ..pid import Pid
from .codec import canon, pid_str

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["RELEASE_BATCH", "Releases"]

RELEASE_BATCH = 500  # releases per script call


class Releases:
    """The releases of one `RedisBackend` waiting for the store."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.store = backend.store
        self._loop = backend.runtime.loop
        # (table, key, pid, kind): kind "t" (ended), "u" (unregistered) or "g" (group)
        self._queue: list[tuple[str, Hashable, Pid, str]] = []
        self._pending = False
        self._lock = asyncio.Lock()

    def queue(
        self, table: str, key: Hashable, pid: Pid, group: bool, unregistered: bool = False
    ) -> None:
        """Release `key` of `table` held by `pid` (`group`: `pid` left group `key`;
        `unregistered`: unregistered rather than ended) at the end of the loop turn."""
        kind = "g" if group else "u" if unregistered else "t"
        self._queue.append((table, key, pid, kind))
        if not self._pending:
            self._pending = True
            self._loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self.store.tasks.spawn(self.flush(), self._loop)

    async def flush(self) -> None:
        """Send the queued releases, `RELEASE_BATCH` to a script call. Returns once
        every release queued before the call has reached the store (or the store is
        down: they are reconciled from the owned set on reconnect)."""
        self._pending = False
        async with self._lock:  # an earlier flush may hold some of ours
            batch, self._queue = self._queue, []
            if not batch or not self.store.up:
                return
            store = self.store
            backend = self.backend
            owned = backend.owned()
            head = [store.key("inval"), store.prefix]
            for start in range(0, len(batch), RELEASE_BATCH):
                args = list(head)
                for table, key, pid, kind in batch[start : start + RELEASE_BATCH]:
                    if kind == "g":
                        args += ("g", canon(key), "", pid_str(pid))
                    else:
                        args += (kind, backend.tkey(table)[1], canon(key), pid_str(pid))
                try:
                    await store.script("release", [owned], args)
                except ClusterUnavailable:
                    return
