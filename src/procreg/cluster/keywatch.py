"""Key monitors across the cluster (`procreg.monitor_key` on a cluster node).

`LocalBackend` already tells a node's watchers about the changes its own processes
make. This module adds the changes made on other nodes:

- **Recording.** The first local watcher of a key records it in the store with the
  `scripts.WATCH` script: a ``w`` member in this incarnation's owned set, counted (once
  per incarnation) in the ``kw`` hash. The last one gone removes it (`scripts.UNWATCH`,
  batched at the end of the loop turn). A dead incarnation's watches are counted out
  by `scripts.PURGE` with the rest of what it held.
- **Events.** `CLAIM`, `RELEASE` and `PURGE` test ``kw`` once per call (``EXISTS``)
  and, only if some key is watched, each changed key (``HEXISTS``); for a watched one
  they publish key events on ``kev``: ``code\\ntable\\nkey\\npid`` records, newline
  separated, ``code`` one of ``r`` (registered), ``u`` (unregistered), ``e`` (ended).
  Unwatched keys cost one ``EXISTS`` per script call while nothing is watched.
- **Markers.** `WATCH` also publishes on ``kev`` a marker, ``m<node>\\n<token>\\n<grace
  PTTL>\\n<holder>...``, with the live holder of each key it recorded. The node applies
  the marker when it arrives: events before it in the stream were published before
  the script ran (its holders include them), events after it are newer. So a node
  knows, per watched key, the holder its watchers last heard of (`known`), in the
  order of the stream, with no race between the script's reply and the events.
- **Delivery.** Events for our own pids are skipped (`LocalBackend` reported them
  when they happened). Others go to `LocalBackend.deliver_key_event`, except duplicates: a
  ``registered`` for the holder already known (a re-registration after a data loss
  or a failover), and the end of a holder while none is known.
- **Gaps.** Events published while our subscription was down are lost. Every time the
  node is back in touch — re-subscribed, re-synced with the store, rejoined after a
  fence, after a data loss or a failover — it re-checks every watched key (`recheck`:
  `WATCH` again, which also re-records the watches) and reports the difference with
  what its watchers last heard: the end of the old holder (``ended`` if its node
  incarnation is gone or its end is known here, ``unregistered`` otherwise), then the
  new holder's registration. While the store's ``grace`` key exists (nodes are
  re-registering after a data loss or a failover) the comparison waits for its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final

from ..errors import ClusterUnavailable
from ..pid import Pid
from .codec import canon, pid_from_str, uncanon

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["KeyWatch"]

log = logging.getLogger("procreg.cluster")

WATCH_BATCH = 512  # keys per WATCH / UNWATCH script call

_EVENTS: Final = {"r": "registered", "u": "unregistered", "e": "ended"}

Entry = tuple[str, Hashable]


class _Pending:
    """A watched key whose first marker has not arrived yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = _Pending()
_MISSING: Final = object()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KeyWatch:
    """The cluster side of one node's key monitors (owned by `RedisBackend`)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.cluster = backend.cluster
        self.store = backend.store
        self.node = backend.node
        # per key watched on this node: the holder its watchers last heard of (None:
        # free), or PENDING until the first marker
        self.known: dict[Entry, Pid | _Pending | None] = {}
        # first watches: those of this loop turn (`_batch`), then in flight, by key
        self._watching: dict[Entry, asyncio.Future[None]] = {}
        self._batch: list[Entry] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._markers: dict[str, tuple[str, list[Entry]]] = {}  # token -> (mode, keys)
        self._unwatch: set[Entry] = set()  # to remove from the store
        self._unwatch_pending = False
        self._lock = asyncio.Lock()  # one WATCH / UNWATCH at a time, in order
        self._recheck_task: asyncio.Task[None] | None = None
        self._recheck_later: asyncio.TimerHandle | None = None
        self._again = False
        self._serial = 0
        self._head = "m" + self.node.name + "\n"
        self.closed = False
        # counters (tests, stats)
        self.events = 0  # key-event records received on ``kev`` (any key, any node)
        self.delivered = 0  # remote events and re-check differences sent to watchers
        self.rechecks = 0  # re-checks completed

    # -- watching ----------------------------------------------------------------------
    async def watch(self, table: str, key: Hashable) -> None:
        """Record `key` in the store as watched by this node, if it is not yet (a
        local watcher was just added). The keys first watched in one loop turn go in
        one script call. `ClusterUnavailable` if the store cannot be reached or this
        node is fenced."""
        entry = (table, key)
        done = self._watching.get(entry)
        if entry not in self.known:  # (a WATCH in flight for earlier watchers, all gone
            # since, may skip it: it goes in this turn's batch in any case)
            if not self.cluster.membership.check():
                raise ClusterUnavailable(
                    f"cannot monitor {key!r}: this node fenced itself and has not rejoined"
                )
            self.known[entry] = PENDING
            if done is None or done is not self._batch_done:
                done = self._batch_done
                if done is None:
                    loop = self.node.runtime.loop
                    done = self._batch_done = loop.create_future()
                    loop.call_soon(self._send_batch)
                self._batch.append(entry)
                self._watching[entry] = done
        elif done is None:
            return  # recorded already
        await asyncio.shield(done)

    def _send_batch(self) -> None:
        done, batch = self._batch_done, self._batch
        self._batch_done, self._batch = None, []
        assert done is not None
        task = self.store.tasks.spawn(self._watch_first(batch), self.node.runtime.loop)

        def finished(task: asyncio.Task[None]) -> None:
            for entry in batch:
                if self._watching.get(entry) is done:
                    del self._watching[entry]
            if done.done():
                return
            if task.cancelled():
                done.cancel()
            elif (error := task.exception()) is not None:
                done.set_exception(error)
                done.exception()  # retrieved: every waiter gets it (or was cancelled)
            else:
                done.set_result(None)

        task.add_done_callback(finished)

    async def _watch_first(self, batch: list[Entry]) -> None:
        async with self._lock:
            entries = [e for e in batch if e in self.known]  # (watchers may be gone)
            for start in range(0, len(entries), WATCH_BATCH):
                await self._watch_script(entries[start : start + WATCH_BATCH], "init")

    async def _watch_script(self, entries: list[Entry], mode: str) -> None:
        """Run `scripts.WATCH` for `entries`; its marker is applied in `mode` ("init":
        learn the holders; "diff": report changes) when it arrives."""
        store = self.store
        backend = self.backend
        self._serial += 1
        token = str(self._serial)
        args: list[Any] = [
            self.cluster.creation,
            store.key("lease", ""),
            store.key("t", ""),
            self._head + token,
        ]
        for table, key in entries:
            args += (backend.tkey(table)[1], canon(key))
        keys = [
            backend.owned(),
            store.key("lease", self.node.name),
            store.key("kw"),
            store.key("grace"),
            store.key("kev"),
        ]
        self._markers[token] = (mode, entries)  # the marker may come before the reply
        try:
            result = await store.script("watch", keys, args)
        except BaseException:
            self._markers.pop(token, None)
            raise
        if _text(result) != "ok":
            self._markers.pop(token, None)
            raise ClusterUnavailable(
                "cannot watch keys: this node's lease does not hold (it is fenced, or "
                "the store lost its data) and it has not rejoined yet"
            )

    def key_unwatched(self, entry: Entry) -> None:
        """The last local watcher of `entry` is gone: forget it, and remove it from
        the store at the end of the loop turn."""
        self.known.pop(entry, None)
        self._unwatch.add(entry)
        if not self._unwatch_pending and not self.closed:
            self._unwatch_pending = True
            loop = self.node.runtime.loop
            loop.call_soon(lambda: self.store.tasks.spawn(self.flush(), loop))

    async def flush(self) -> None:
        """Remove from the store the watches no local watcher needs any more (those
        that failed stay queued: the next re-check tries again)."""
        self._unwatch_pending = False
        async with self._lock:
            gone = [e for e in self._unwatch if e not in self.known]  # (not watched again)
            self._unwatch.clear()
            if not gone or not self.store.up:
                self._unwatch.update(gone)
                return
            store = self.store
            keys = [self.backend.owned(), store.key("kw")]
            for start in range(0, len(gone), WATCH_BATCH):
                chunk = gone[start : start + WATCH_BATCH]
                args: list[Any] = []
                for table, key in chunk:
                    args += (self.backend.tkey(table)[1], canon(key))
                try:
                    await store.script("unwatch", keys, args)
                except ClusterUnavailable:
                    self._unwatch.update(gone[start:])
                    return

    # -- events ------------------------------------------------------------------------
    def on_message(self, data: bytes) -> None:
        """A ``kev`` message: key events, or a marker (in the transport's callback)."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return
        if text[:1] == "m":
            if text.startswith(self._head):
                self._marker(text[len(self._head) :])
            return
        parts = text.split("\n")
        n = len(parts) // 4
        self.events += n
        if not self.known:
            return
        me = self.node.name
        for i in range(0, 4 * n, 4):
            event = _EVENTS.get(parts[i])
            if event is None:
                continue
            try:
                pid = pid_from_str(parts[i + 3])
                table = uncanon(parts[i + 1])
                key = uncanon(parts[i + 2])
            except (ValueError, IndexError):
                continue
            if pid[0] == me or not isinstance(table, str):
                continue  # our own pids: reported locally when they changed
            self._remote(table, key, event, pid)

    def _remote(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        entry = (table, key)
        known = self.known.get(entry, _MISSING)
        if known is _MISSING or known is PENDING:
            return  # not watched here, or published before our marker (it counts it)
        if event == "registered":
            if known == pid:
                return  # a re-registration (after a data loss or a failover)
            self.known[entry] = pid
        elif known == pid:
            self.known[entry] = None
        elif known is None:
            return  # already free for our watchers
        # (else: the end of a holder we had not heard of, after our own registration
        # of the key won over its lapsed entry: report it, keep ours)
        self.delivered += 1
        self.backend.local.deliver_key_event(table, key, event, pid)

    def key_changed(self, table: str, key: Hashable, event: str, pid: Pid) -> None:
        """A change made on this node (reported by the local view itself: this is its
        `RedisBackend` forwards its `registry.ViewListener` calls here)."""
        entry = (table, key)
        known = self.known.get(entry, _MISSING)
        if known is _MISSING or known is PENDING:
            return
        if event == "registered":
            self.known[entry] = pid
        elif known == pid:
            self.known[entry] = None

    def _marker(self, body: str) -> None:
        parts = body.split("\n")
        job = self._markers.pop(parts[0], None)
        if job is None or len(parts) < 2:
            return
        mode, entries = job
        holders = parts[2:]
        if len(holders) != len(entries):
            return
        try:
            grace = int(parts[1])
        except ValueError:
            grace = 0
        deferred = False
        for entry, text in zip(entries, holders, strict=True):
            known = self.known.get(entry, _MISSING)
            if known is _MISSING:
                continue  # no longer watched here
            try:
                current = self._current(entry, text)
            except (ValueError, IndexError):
                continue
            if known is PENDING:
                self.known[entry] = current
                continue
            if mode != "diff" or known == current:
                continue
            if grace > 0:
                deferred = True  # nodes are re-registering: compare once they are done
                continue
            self.known[entry] = current
            table, key = entry
            if isinstance(known, Pid):
                self.delivered += 1
                self.backend.local.deliver_key_event(table, key, self._end_of(known), known)
            if current is not None:
                self.delivered += 1
                self.backend.local.deliver_key_event(table, key, "registered", current)
        if deferred:
            self.recheck(delay=grace / 1000 + 0.05)

    def _current(self, entry: Entry, text: str) -> Pid | None:
        """The holder our watchers should know of, given the store's (`text`): our
        own local view for our keys (it reports its own changes), else the store's
        live holder unless we know it ended."""
        table, key = entry
        backend = self.backend
        proc = backend.local.held(key, table)
        if proc is not None:
            return proc.pid
        if not text:
            return None
        pid = pid_from_str(text)
        if pid[0] == self.node.name or pid in backend.keys.dead:
            return None  # ours but gone from the local view (its release is on its way)
        return pid

    def _end_of(self, pid: Pid) -> str:
        """How a holder that went away while we could not hear it is reported."""
        if pid in self.backend.keys.dead or not self.cluster.is_live(pid):
            return "ended"
        return "unregistered"

    # -- re-checks ---------------------------------------------------------------------
    def recheck(self, delay: float = 0.0) -> None:
        """Re-record every watched key and report what changed while events may have
        been missed (soon, in a task; after `delay` seconds if given)."""
        if self.closed or (not self.known and not self._unwatch):
            return
        loop = asyncio.get_running_loop()
        if delay > 0:
            if self._recheck_later is not None:
                self._recheck_later.cancel()
            self._recheck_later = loop.call_later(delay, self.recheck)
            return
        if self._recheck_task is not None and not self._recheck_task.done():
            self._again = True  # once the running one is done
            return
        self._recheck_task = loop.create_task(self._recheck())

    async def _recheck(self) -> None:
        while True:
            self._again = False
            try:
                await self.flush()
                async with self._lock:
                    # markers still in flight would arrive before ours: ours covers them
                    self._markers.clear()
                    entries = list(self.known)
                    for start in range(0, len(entries), WATCH_BATCH):
                        chunk = [e for e in entries[start : start + WATCH_BATCH] if e in self.known]
                        if chunk:
                            await self._watch_script(chunk, "diff")
                self.rechecks += 1
            except ClusterUnavailable as exc:
                # the next reconnection, re-subscription or rejoin checks again
                log.debug("re-checking watched keys failed for now: %r", exc)
                return
            except Exception:
                log.exception("re-checking watched keys failed")
                return
            if not self._again:
                return

    async def close(self) -> None:
        """Leaving the cluster: remove our watches (best effort), stop re-checking."""
        try:
            await self.flush()
        except Exception:
            pass
        self.closed = True
        if self._recheck_later is not None:
            self._recheck_later.cancel()
        task = self._recheck_task
        if task is not None and not task.done():
            task.cancel()
