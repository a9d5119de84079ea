"""Frames between nodes over Redis pub/sub: one channel per node.

The transport holds two raw connections of its own (`wire.Wire`): one publishes
frames, one is subscribed to this node's channel and to the registry's ``inval``
channel.

Sending: items for a node are queued (already pickled, so errors surface at the call
site); at the end of the loop turn (`call_soon`) each destination's items become one
signed frame, and the turn's frames are written at once as PUBLISH commands on the
publishing connection. One connection written in order, and Redis's per-connection
ordering, keep the messages of each pair of nodes in the order they were sent. The
replies (receiver counts) are only counted; an error reply is counted as dropped.

Receiving: messages on the subscribed connection are handled in the socket's I/O
callback, with no task in between: each frame is checked (`codec.decode_frame`:
signature, shape, destination) and then against the sender's last sequence number
and current creation, and only then are its items unpickled and handed, in order,
to the `Remote` dispatcher. Rejected frames are dropped and counted by reason in
`dropped`, and logged at most once per second. Invalidations go to `on_inval`.

A lost connection marks the store down (cluster operations fail fast, the store
reconnects and the node re-syncs); a keeper task opens it again with backoff and,
for the subscribed one, subscribes again; once Redis confirms the subscription to
``inval``, `on_resubscribe` is called (invalidations may have been missed meanwhile).
A publishing connection lost with no command in flight (a server closing idle
clients) is re-opened without marking the store down. Frames made while the store is
down are dropped (``store_down``); while the publishing connection is being re-opened
they wait, up to `MAX_WAITING` frames (dropped if the store went down meanwhile);
beyond `MAX_BACKLOG` bytes not yet taken by the socket they are dropped
(``backlog``).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .codec import BadFrame, decode_frame, encode_frame
from .store import stop_tasks
from .wire import Wire

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Transport"]

log = logging.getLogger("procreg.cluster")

MAX_WAITING = 10_000  # frames kept while the publishing connection re-opens
MAX_BACKLOG = 64 << 20  # bytes written but not yet sent before frames are dropped


def _ignore(*_: Any) -> None:
    return None


class Transport:
    """The node's end of the frame channel."""

    def __init__(
        self,
        store: Store,
        key: bytes,
        name: str,
        deliver: Callable[[str, int, Any], None],
    ) -> None:
        self.store = store
        self.key = key
        self.name = name
        self.creation = 0
        self._deliver = deliver  # (sender, creation, item) for each item, in order
        self.on_inval: Callable[[bytes], None] = _ignore  # an ``inval`` message
        self.on_resubscribe: Callable[[], None] = _ignore  # after re-subscribing
        self._out: dict[str, list[bytes]] = {}
        self._flush_pending = False
        self._waiting: list[tuple[str, str, bytes]] = []
        self._waiting_since = 0  # store.failures when the first of them was kept
        self._subscribed = False  # the first subscription was confirmed
        self._seq = 0
        self._last_seq: dict[tuple[str, int], int] = {}
        self.peer_creation: dict[str, int] = {}  # filled by membership
        self.dropped: dict[str, int] = defaultdict(int)
        self.sent_frames = 0
        self.received_frames = 0
        self._last_log = 0.0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pub: Wire | None = None
        self._sub: Wire | None = None
        self._channels: dict[str, str] = {}
        self._mine = self.channel(name).encode()
        self._inval = store.key("inval").encode()
        self._lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    def channel(self, node: str) -> str:
        found = self._channels.get(node)
        if found is None:
            found = self._channels[node] = self.store.key("ch", node)
        return found

    async def start(self) -> None:
        """Open the connections, subscribe, and start the keeper."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except BaseException:
            for wire in (self._pub, self._sub):
                if wire is not None:
                    wire.abort()
            self._pub = self._sub = None
            raise
        self._keeper = self._loop.create_task(self._keep())

    async def _open(self) -> None:
        """Open whichever connection is missing (subscribing the subscribed one)."""
        if self._pub is None:
            self._pub = await Wire.open(self.store, self._published, self._wire_lost)
        if self._sub is None:
            sub = await Wire.open(self.store, self._pushed, self._wire_lost)
            sub.send(("SUBSCRIBE", self._mine, self._inval))
            self._sub = sub

    async def _keep(self) -> None:
        """Re-open lost connections, with backoff."""
        while not self._closing:
            await self._lost.wait()
            self._lost.clear()
            delay = 0.05
            while not self._closing and (self._pub is None or self._sub is None):
                try:
                    await self._open()
                except Exception as exc:
                    log.debug("re-opening the transport failed: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                try:
                    self._send_waiting()
                except Exception:
                    log.exception("sending the frames kept while re-opening failed")

    def _wire_lost(self, wire: Wire, exc: BaseException) -> None:
        if wire is self._pub:
            self._pub = None
            # a publishing connection with no command in flight lost nothing: the
            # server may close an idle one (redis.conf `timeout`); re-open it quietly.
            # Otherwise frames may be lost: the store is marked down, and the re-sync
            # ends links and monitors across nodes, as for any outage.
            quiet = wire.outstanding == 0
        elif wire is self._sub:
            self._sub = None  # what was published to us meanwhile is lost
            quiet = False
        else:
            return
        if self._closing:
            return
        if not quiet:
            self.store.mark_down(exc)
        self._lost.set()

    async def close(self) -> None:
        """Flush what is queued (best effort), stop the keeper, close the connections."""
        self._flush()
        self._closing = True
        pub = self._pub
        if pub is not None and self.store.up:
            deadline = time.monotonic() + 1.0
            while pub.outstanding > 0 and not pub.closed and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
        await stop_tasks(self._keeper)
        for wire in (self._pub, self._sub):
            if wire is not None:
                wire.close()
        self._pub = self._sub = None

    # -- sending ------------------------------------------------------------------
    def enqueue(self, node: str, item: bytes) -> None:
        """Queue one pickled item for `node`; it leaves at the end of this loop turn."""
        queue = self._out.get(node)
        if queue is None:
            queue = self._out[node] = []
        queue.append(item)
        if not self._flush_pending:
            self._flush_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._out:
            return
        out, self._out = self._out, {}
        if not self.store.up:
            self.dropped["store_down"] += len(out)
            return
        commands = []
        for node, items in out.items():
            self._seq += 1
            frame = encode_frame(self.key, self.name, self.creation, self._seq, node, items)
            commands.append(("PUBLISH", self.channel(node), frame))
        self._send(commands)

    def _send(self, commands: list[tuple[str, str, bytes]]) -> None:
        pub = self._pub
        if pub is None or self._waiting:  # re-opening: keep them, in order
            if not self._waiting:
                self._waiting_since = self.store.failures
            room = MAX_WAITING - len(self._waiting)
            if room < len(commands):
                self.dropped["backlog"] += len(commands) - max(room, 0)
                commands = commands[: max(room, 0)]
            self._waiting.extend(commands)
            return
        if pub.backlog() > MAX_BACKLOG:
            self.dropped["backlog"] += len(commands)
            return
        try:
            pub.send(*commands)
        except ConnectionError:
            self.dropped["store_down"] += len(commands)
            return
        self.sent_frames += len(commands)

    def _send_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        if not self.store.up or self.store.failures != self._waiting_since:
            # the store went down since they were made: the re-sync ended links and
            # monitors across nodes, and frames from before it must not follow
            self.dropped["store_down"] += len(waiting)
            return
        self._send(waiting)

    def _published(self, reply: Any) -> None:
        if isinstance(reply, Exception):  # an error reply (hiredis.ReplyError)
            self._reject("publish_error", repr(reply))

    # -- receiving ------------------------------------------------------------------
    def _pushed(self, reply: Any) -> None:
        """A message on the subscribed connection (in the socket's I/O callback)."""
        if isinstance(reply, list) and len(reply) == 3:
            kind, channel = reply[0], reply[1]
            if kind == b"message":
                if channel == self._mine:
                    self.receive(reply[2])
                elif channel == self._inval:
                    self.on_inval(reply[2])
            elif kind == b"subscribe" and channel == self._inval:
                if self._subscribed:
                    # from now on no invalidation is missed: forget what may have
                    # gone stale while we were not subscribed
                    self.on_resubscribe()
                self._subscribed = True
        elif isinstance(reply, Exception):
            self._reject("subscribe_error", repr(reply))

    def receive(self, frame: Any) -> bool:
        """Check one frame and deliver its items; False (and counted) if rejected."""
        try:
            sender, creation, seq, items = decode_frame(self.key, frame, self.name)
            known = self.peer_creation.get(sender)
            if known is not None and creation < known:
                raise BadFrame("stale")
            last = self._last_seq.get((sender, creation), 0)
            if seq <= last:
                raise BadFrame("replay")
            self._last_seq[(sender, creation)] = seq
        except BadFrame as bad:
            self._reject(bad.reason)
            return False
        self.received_frames += 1
        for raw in items:
            try:
                item = pickle.loads(raw)  # signed by a node that holds the secret
            except Exception:
                self._reject("item")
                continue
            try:
                self._deliver(sender, creation, item)
            except Exception:
                log.exception("delivering %r from %s failed", item[:1], sender)
        return True

    def _reject(self, reason: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.warning(
                "dropped a frame on %s (%s%s); dropped so far: %s",
                self.name,
                reason,
                f": {detail}" if detail else "",
                dict(self.dropped),
            )
