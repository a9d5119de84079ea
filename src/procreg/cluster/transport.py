"""Frames between nodes over Redis pub/sub: one channel per node.

Sending: items for a node are queued (already pickled, so errors surface at the call
site); at the end of the loop turn (`call_soon`) each destination's items become one
signed frame; one writer task publishes the frames in order through a pipeline. One
writer and Redis's per-connection ordering keep the messages of each pair of nodes
in the order they were sent.

Receiving: a reader task listens on the node's channel; each frame is checked
(`codec.decode_frame`: signature, shape, destination) and then against the sender's
last sequence number and current creation, and only then are its items unpickled and
handed, in order, to the `Remote` dispatcher. Rejected frames are dropped and counted
by reason in `dropped`, and logged at most once per second.
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

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Transport"]

log = logging.getLogger("procreg.cluster")


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
        self._out: dict[str, list[bytes]] = {}
        self._flush_pending = False
        self._frames: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        self._seq = 0
        self._last_seq: dict[tuple[str, int], int] = {}
        self.peer_creation: dict[str, int] = {}  # filled by membership
        self.dropped: dict[str, int] = defaultdict(int)
        self.sent_frames = 0
        self.received_frames = 0
        self._last_log = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._pubsub: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def channel(self, node: str) -> str:
        return self.store.key("ch", node)

    async def start(self) -> None:
        """Subscribe to our channel and start the reader and writer."""
        self._loop = asyncio.get_running_loop()
        client = self.store.client()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel(self.name))
        self._tasks = [
            self._loop.create_task(self._reader()),
            self._loop.create_task(self._writer()),
        ]

    async def close(self) -> None:
        """Flush what is queued (best effort), stop the tasks, close the connection."""
        self._flush()
        if self._frames and self.store.up:
            try:
                await self._publish(self._frames)
            except Exception:
                pass
            self._frames = []
        self._closing = True
        await stop_tasks(*self._tasks)
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except Exception:
                pass

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
        for node, items in out.items():
            self._seq += 1
            frame = encode_frame(self.key, self.name, self.creation, self._seq, node, items)
            self._frames.append((self.channel(node), frame))
        self._wake.set()

    async def _writer(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            frames, self._frames = self._frames, []
            if not frames:
                continue
            if not self.store.up:
                self.dropped["store_down"] += len(frames)
                continue
            try:
                await self._publish(frames)
            except Exception as exc:
                self.dropped["store_down"] += len(frames)
                self.store.mark_down(exc)

    async def _publish(self, frames: list[tuple[str, bytes]]) -> None:
        pipe = self.store.redis.pipeline(transaction=False)
        for channel, frame in frames:
            pipe.publish(channel, frame)
        await pipe.execute()
        self.sent_frames += len(frames)

    # -- receiving ------------------------------------------------------------------
    async def _reader(self) -> None:
        pubsub = self._pubsub
        while not self._closing:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.store.mark_down(exc)
                await asyncio.sleep(0.2)
                try:
                    await pubsub.subscribe(self.channel(self.name))
                except Exception:
                    pass
                continue
            if message is None or message.get("type") != "message":
                continue
            self.receive(message["data"])

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

    def _reject(self, reason: str) -> None:
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.warning(
                "dropped a frame on %s (%s); dropped so far: %s",
                self.name,
                reason,
                dict(self.dropped),
            )
