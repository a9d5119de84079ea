"""Frames between nodes over Redis pub/sub: one channel per node.

The transport holds two raw connections of its own (`wire.Wire`): one publishes
frames, one is subscribed to this node's channel and to the registry's ``inval`` and
``kev`` (key events, `keywatch`) channels.

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
`dropped`, and logged at most once per second. Invalidations go to `on_inval`, key
events to `on_kev`.

A lost connection marks the store down (cluster operations fail fast, the store
reconnects and the node re-syncs); a keeper task opens it again with backoff and,
for the subscribed one, subscribes again; once Redis confirms the subscription to
``inval``, `on_resubscribe` is called (invalidations may have been missed meanwhile).
A publishing connection lost with no command in flight (a server closing idle
clients) is re-opened without marking the store down.

Liveness: every `interval` (a third of the lease) the keeper PINGs the subscribed
connection and publishes a heartbeat on the node's own channel through the publishing
one. A connection that has received nothing for two intervals although a reply was
due (a half-open or frozen socket), or a heartbeat that reached no subscriber (our
subscription is gone), counts as lost, as above: the store is marked down, the
connection re-opened and re-subscribed, the cache dropped. PUBLISH answers how many
subscribers got the frame: a frame for another node that reached none (its
subscription is down) is lost, so `on_undeliverable(node)` is called, and the node
treats that peer as disconnected (calls fail with `NodeDown`, links and monitors get
``noconnection``) rather than let callers wait for a timeout. Frames made while the store is
down are dropped (``store_down``); while the publishing connection is being re-opened
they wait, up to `MAX_WAITING` frames (dropped if the store went down meanwhile);
beyond `MAX_BACKLOG` bytes not yet taken by the socket they are dropped
(``backlog``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from .codec import CUT, BadFrame, cut_marker, decode_frame, encode_frame, salvage
from .liveness import HEARTBEAT, keep
from .store import stop_tasks
from .wire import Wire, kill_clients

if TYPE_CHECKING:
    from .direct import Direct, Link
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
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self.interval = interval  # heartbeat period (seconds); silence bound is 2x
        self.key = key
        self.name = name
        self.creation = 0
        self._deliver = deliver  # (sender, creation, item) for each item, in order
        self.on_inval: Callable[[bytes], None] = _ignore  # an ``inval`` message
        self.on_kev: Callable[[bytes], None] = _ignore  # a ``kev`` message (key events)
        self.on_resubscribe: Callable[[], None] = _ignore  # after re-subscribing
        self.on_undeliverable: Callable[[str], None] = _ignore  # a frame reached nobody
        self.guard: Callable[[], object] = _ignore  # runs before anything received
        # (sender, creation, item with placeholders, error): an item we cannot unpickle
        self.on_undecodable: Callable[[str, int, Any, BaseException], None] = _ignore
        self._dests: deque[str] = deque()  # destination of each PUBLISH in flight
        self._confirmed: asyncio.Future[None] | None = None
        self.heartbeats = 0
        self._probed = 0.0  # when the oldest unanswered heartbeat was sent
        self.silent = 0  # connections found silent (half-open) and re-opened
        self._out: dict[str, list[bytes]] = {}
        self._flush_pending = False
        self._waiting: list[tuple[str, tuple[str, str, bytes]]] = []  # (dest, PUBLISH)
        self._waiting_since = 0  # store.failures when the first of them was kept
        self._subscribed = False  # the first subscription was confirmed
        self._seq = 0
        self._last_seq: dict[tuple[str, int], int] = {}
        self.peer_creation: dict[str, int] = {}  # filled by membership
        # creations at or below it are stale for a node we know nothing of (what
        # `prune` forgot is at or below it: see `Cluster.prune`)
        self.pruned_floor = 0
        self.direct: Direct | None = None  # direct connections (`direct`), if enabled
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
        self._me = name.encode()
        self._inval = store.key("inval").encode()
        self._kev = store.key("kev").encode()
        self._lost = asyncio.Event()
        self._sub_confirmed = asyncio.Event()  # the current subscribed connection's
        self._confirmed_at = math.inf  # when it was confirmed (monotonic)
        self._beats: deque[float] = deque()  # send times of heartbeats in flight
        self._sub_id: int | None = None  # its CLIENT ID
        self._stale_ids: list[int] = []  # earlier ones, to kill once re-subscribed
        self._keeper: asyncio.Task[None] | None = None

    def channel(self, node: str) -> str:
        found = self._channels.get(node)
        if found is None:
            found = self._channels[node] = self.store.key("ch", node)
        return found

    async def start(self, timeout: float = 5.0) -> None:
        """Open the connections, subscribe (waiting up to `timeout` seconds for Redis
        to confirm it, so frames sent to us from now on arrive), and start the
        keeper."""
        self._loop = asyncio.get_running_loop()
        self._confirmed = self._loop.create_future()
        try:
            await self._open()
            try:
                await asyncio.wait_for(asyncio.shield(self._confirmed), timeout)
            except TimeoutError:
                raise ConnectionError("the store did not confirm our subscription") from None
        except BaseException:
            for wire in (self._pub, self._sub):
                if wire is not None:
                    wire.abort()
            self._pub = self._sub = None
            raise
        self._keeper = self._loop.create_task(keep(self))

    async def _open(self) -> None:
        """Open whichever connection is missing (subscribing the subscribed one)."""
        if self._pub is None:
            self._pub = await Wire.open(self.store, self._published, self._wire_lost)
            self._dests.clear()
            self._beats.clear()
        if self._sub is None:
            # what the frames of one read made (replies, mostly) leaves at once
            sub = await Wire.open(self.store, self._pushed, self._wire_lost, self.flush_now)
            self._sub_confirmed.clear()
            self._confirmed_at = math.inf
            # its client id first: once a later connection's subscription is
            # confirmed, this one is killed if the server still holds it (a half-open
            # socket after a partition keeps counting as a receiver of our channel);
            # ``inval`` last: its confirmation (below) confirms the others too
            sub.send(("CLIENT", "ID"), ("SUBSCRIBE", self._mine, self._kev, self._inval))
            self._sub = sub

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
            self._sub_confirmed.clear()
            self._confirmed_at = math.inf
            if self._sub_id is not None:
                self._stale_ids.append(self._sub_id)
                self._sub_id = None
            quiet = False
        else:
            return
        if self._closing:
            return
        if not quiet:
            self.store.mark_down(exc)
        if self.direct is not None and not quiet:  # a cutover marker in flight may be lost
            self.direct.publisher_lost(wire)
        self._lost.set()

    @property
    def publishing(self) -> bool:
        """True while a frame published now leaves at once (not kept, not dropped)."""
        return self.store.up and self._pub is not None and not self._waiting

    async def close(self) -> None:
        """Flush what is queued (best effort), stop the keeper, close the connections."""
        self._flush()
        self._closing = True
        if self.direct is not None:
            await self.direct.close()
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
        """Queue one pickled item for `node`. It leaves at once if no frame is in
        flight on the publishing connection (every PUBLISH answered: a lone call or
        reply does not wait for the end of the loop turn), else with the others at
        the end of this loop turn, in one frame per node (so a burst is batched)."""
        queue = self._out.get(node)
        if queue is None:
            queue = self._out[node] = []
        queue.append(item)
        if not self._flush_pending:
            pub = self._pub
            if pub is not None and pub.sent == pub.replies and not self._waiting:
                self._flush()
                return
            direct = self.direct
            if direct is not None and (link := direct.out.get(node)) is not None and link.up:
                self._flush()  # the first of the turn leaves at once, the others batch
                self._flush_pending = True
                assert self._loop is not None
                self._loop.call_soon(self._flush)
                return
            self._flush_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def discard(self, node: str) -> None:
        """Drop what is queued for `node` (its direct connection was lost)."""
        items = self._out.pop(node, None)
        if items:
            self.dropped["direct_lost"] += len(items)

    def forget_names(self, names: set[str], keep: set[str]) -> None:
        """Forget what we keep for these nodes, and channel names of nodes not in
        `keep` (`Cluster.prune`)."""
        for name in names:
            self.peer_creation.pop(name, None)
        for k in [k for k in self._last_seq if k[0] in names]:
            del self._last_seq[k]
        for name in [n for n in self._channels if n not in keep and n != self.name]:
            del self._channels[name]

    def flush_now(self) -> None:
        """Send what is queued now instead of at the end of the loop turn (the node
        calls it after each pass over its run queue, so that a handler's reply leaves
        in the turn it was made; items stay in the order they were queued)."""
        if self._out:
            self._flush()

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._out:
            return
        out, self._out = self._out, {}
        if not self.store.up:
            self.dropped["store_down"] += len(out)
            return
        commands = []
        direct = self.direct
        for node, items in out.items():
            self._seq += 1
            frame = encode_frame(self.key, self.name, self.creation, self._seq, node, items)
            if direct is not None:
                link = direct.out.get(node)
                if link is not None and link.up:
                    direct.send(link, frame)
                    continue
                direct.want(node)  # (opens a connection to it, if it has an address)
            commands.append((node, ("PUBLISH", self.channel(node), frame)))
        if commands:
            self._send(commands)

    def cut_over(self, node: str, session: int) -> tuple[Wire, int] | None:
        """The direct session `session` to `node` is up: what is queued for it and then
        the cutover marker leave on pub/sub (`direct`). Returns the publishing
        connection and the count its replies reach once the marker is confirmed;
        None if they could not leave now."""
        pub = self._pub
        if not self.store.up or pub is None or self._waiting:
            return None
        items = self._out.pop(node, None)
        commands = []
        for batch in (items, [cut_marker(session)]):
            if batch:
                self._seq += 1
                frame = encode_frame(self.key, self.name, self.creation, self._seq, node, batch)
                commands.append((node, ("PUBLISH", self.channel(node), frame)))
        target = pub.sent + len(commands)  # (before `_send` counts them)
        return (pub, target) if self._send(commands) else None

    def _send(self, commands: list[tuple[str, tuple[str, str, bytes]]]) -> bool:
        """Write ``(destination, PUBLISH command)`` pairs, or keep them while the
        publishing connection re-opens; False if any was dropped."""
        pub = self._pub
        if pub is None or self._waiting:  # re-opening: keep them, in order
            if not self._waiting:
                self._waiting_since = self.store.failures
            room = MAX_WAITING - len(self._waiting)
            if room < len(commands):
                self.dropped["backlog"] += len(commands) - max(room, 0)
                self._waiting.extend(commands[: max(room, 0)])
                return False
            self._waiting.extend(commands)
            return True
        if pub.backlog() > MAX_BACKLOG:
            self.dropped["backlog"] += len(commands)
            return False
        try:
            pub.send(*[command for _, command in commands])
        except ConnectionError:
            self.dropped["store_down"] += len(commands)
            return False
        self._dests.extend([dest for dest, _ in commands])
        self.sent_frames += len(commands)
        return True

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
        """A PUBLISH answer: how many subscribers got the frame."""
        dest = self._dests.popleft() if self._dests else None
        sent = self._beats.popleft() if dest == self.name and self._beats else 0.0
        if isinstance(reply, Exception):  # an error reply (hiredis.ReplyError)
            self._reject("publish_error", repr(reply))
        elif reply == 0 and dest is not None:
            if dest == self.name:  # our own heartbeat reached nobody: not subscribed
                sub = self._sub
                # (a heartbeat sent before our current subscription was confirmed may
                # have run before it: only a later one proves the subscription gone)
                if sub is not None and not sub.closed and sent > self._confirmed_at:
                    sub.fail(ConnectionError("our channel has no subscriber"))
            else:
                self.dropped["no_receiver"] += 1
                self.on_undeliverable(dest)

    # -- receiving ------------------------------------------------------------------
    def _pushed(self, reply: Any) -> None:
        """A message on the subscribed connection (in the socket's I/O callback)."""
        self.guard()  # woken from a pause past our lease deadline: fence first
        if isinstance(reply, list) and len(reply) == 3:
            kind, channel = reply[0], reply[1]
            if kind == b"message":
                if channel == self._mine:
                    if reply[2] != HEARTBEAT:
                        self.receive(reply[2])
                elif channel == self._inval:
                    self.on_inval(reply[2])
                elif channel == self._kev:
                    self.on_kev(reply[2])
            elif kind == b"subscribe" and channel == self._inval:
                if self._confirmed is not None and not self._confirmed.done():
                    self._confirmed.set_result(None)
                if self._subscribed:
                    # from now on no invalidation is missed: forget what may have
                    # gone stale while we were not subscribed
                    self.on_resubscribe()
                self._subscribed = True
                self._sub_confirmed.set()
                self._confirmed_at = time.monotonic()
                if self._stale_ids and self._loop is not None:
                    stale, self._stale_ids = self._stale_ids, []
                    self.store.tasks.spawn(kill_clients(self, stale), self._loop)
        elif isinstance(reply, int) and self._sub_id is None:
            self._sub_id = reply  # CLIENT ID of this subscribed connection
        elif isinstance(reply, Exception):
            self._reject("subscribe_error", repr(reply))

    def reopen(self, why: str) -> None:
        """Re-open both connections (say, the primary changed: connections opened
        before may be talking to a server that is a replica now, where frames reach
        nobody and our subscription hears nothing)."""
        for wire in (self._pub, self._sub):
            if wire is not None and not wire.closed:
                wire.fail(ConnectionError(why))

    async def wait_subscribed(self, timeout: float) -> None:
        """Return once our current subscribed connection is confirmed by the store;
        `ClusterUnavailable` after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._sub_confirmed.wait(), timeout)
        except TimeoutError:
            raise ClusterUnavailable(
                f"{self.name}: not subscribed to the cluster store yet"
            ) from None

    def receive(self, frame: Any, link: Link | None = None) -> bool:
        """Check one frame (from pub/sub, or from the direct connection `link`) and
        deliver its items; False (and counted) if rejected."""
        try:
            sender, creation, seq, items = decode_frame(self.key, frame, self._me)
            known = self.peer_creation.get(sender)
            if known is not None:
                if creation < known:
                    raise BadFrame("stale")
            elif creation <= self.pruned_floor:
                raise BadFrame("stale")
            last = self._last_seq.get((sender, creation), 0)
            if seq <= last:
                raise BadFrame("replay")
            if link is not None and (sender != link.peer or creation != link.creation):
                raise BadFrame("misrouted")
            if not last and (known is None or creation > known):
                self._new_incarnation(sender, creation)  # (once per incarnation)
            self._last_seq[(sender, creation)] = seq
        except BadFrame as bad:
            self._reject(bad.reason)
            return False
        self.received_frames += 1
        if link is None and self.direct is not None:
            if len(items) == 1 and items[0][:4] == CUT:
                (session,) = struct.unpack_from(">Q", items[0], 4)
                self.direct.on_marker(sender, creation, session)
                return True
            self.direct.on_pubsub(sender)
        for raw in items:
            try:
                item = pickle.loads(raw)  # signed by a node that holds the secret
            except Exception as exc:
                self.dropped["undecodable"] += 1
                try:
                    self.on_undecodable(sender, creation, salvage(raw), exc)
                except Exception:
                    self._reject("item", f"{type(exc).__name__}: {exc}")
                continue
            try:
                self._deliver(sender, creation, item)
            except Exception:
                log.exception("delivering %r from %s failed", item[:1], sender)
        return True

    def _new_incarnation(self, sender: str, creation: int) -> None:
        """The first signed frame from incarnation `creation` of node `sender`, newer
        than any we knew of: its older incarnations are gone (a name's lease is taken
        with NX, so this one joined after the last of them lost its lease), and
        their frames still in flight are stale from now on, as after
        `Cluster.node_down` (which our membership poll may never call for an
        incarnation that came and went between two polls)."""
        self.peer_creation[sender] = creation
        self.forget_stale()

    def forget_stale(self) -> None:
        """Forget the sequence numbers of the incarnations older than the one
        `peer_creation` knows for their node: their frames are refused as stale
        before the number is read, and without this one entry would stay for every
        incarnation of every node that ever sent us a frame. Called when
        `peer_creation` changes."""
        known = self.peer_creation
        last = self._last_seq
        for stale in [k for k in last if k[1] < known.get(k[0], 0)]:
            del last[stale]

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
