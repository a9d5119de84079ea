"""Direct node-to-node frames over TCP (opt-in: ``listen=host:port`` in the URL).

A node with the option listens on a TCP address and publishes it in the store
(``addr``, next to its membership record; `Membership` reads the others'). The first
frame for a peer that has an address opens a connection to it (a task: connecting
and the handshake); until it is up, and whenever it is down, frames go through Redis
pub/sub as without the option. Each connection carries one direction of frames (the
connecting node's), so each node chooses its path to each peer by itself; the
accepting side only answers heartbeats.

Records on the socket: ``u32 length | u8 type | payload``. Frames are the pub/sub
path's own (`codec`: signed, addressed, sequenced); `Transport.receive` checks them
in the socket's I/O callback, with no task in between.

Handshake (``hello`` -> ``welcome`` -> ``ack``, each HMAC-signed under the cluster
secret with both names and creations, the session number and the nonces): a fresh
random nonce each way, so a replayed ``hello`` gets a ``welcome`` it cannot answer
(or a refusal, if its session was accepted already); only the ``ack`` makes an
accepted connection the sender's session, replacing its previous one.
Refused: a bad signature, another destination or creation than the listener's, a
sender incarnation known to be older than the live one or down (or, for a sender
name we know nothing of, at or below the floor of forgotten creations,
`Cluster.prune`), and anything while the listener is fenced.

Ordering across the two paths (one path per peer at a time):

- *pub/sub -> direct*: once the handshake is done, the frames queued for the peer
  and then a *cutover marker* (a signed frame naming the session) leave on pub/sub;
  later frames go on the connection. The receiver holds the connection's frames
  until the marker arrives through Redis (after every earlier pub/sub frame: one
  publishing connection keeps its order), then delivers them. A marker that reached
  nobody, or that does not come within two intervals, ends the session as lost.
- *direct -> pub/sub*: a connection lost, silent (no answer to a heartbeat for two
  intervals) or too far behind (`MAX_BACKLOG`) may have lost frames: as when a
  pub/sub frame reaches nobody, `on_lost(peer)` ends our side (calls fail with
  `NodeDown`, links and monitors get ``noconnection``) and sends a ``RESET`` (on
  pub/sub now), which ends the peer's side before it delivers anything newer. A
  frame of the old session that arrives later carries a lower sequence number than
  the ``RESET`` and is dropped as a replay: never twice, never out of order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .directlink import (
    ACK,
    BYE,
    FRAME,
    HELLO,
    PING,
    PONG,
    REFUSE,
    WELCOME,
    Link,
    opened,
    signed,
    wire_replies,
)
from .transport import MAX_BACKLOG

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["Direct", "Link"]

log = logging.getLogger("procreg.cluster")

MAX_STRANGERS = 256  # accepted connections that have not sent a valid hello yet


class Direct:
    """The node's direct connections: a listener, one outbound `Link` per peer we
    send to, the accepted ones; heartbeats; the cutover."""

    def __init__(
        self,
        transport: Transport,
        listen: tuple[str, int],
        advertise: tuple[str, int] | None,
        fenced: Callable[[], bool],
        on_lost: Callable[[str], None],
        down_creation: Callable[[str], int],
    ) -> None:
        self.transport = transport
        self.key = transport.key
        self.name = transport.name
        self.listen = listen
        self.address = advertise  # published; set from the bound port if None
        self.fenced = fenced
        self.on_lost = on_lost  # (peer): frames to it may be lost (see the docstring)
        self.down_creation = down_creation  # (peer): its newest incarnation known down
        self.interval = transport.interval
        self.addresses: dict[str, tuple[int, str, int]] = {}  # name -> (creation, host, port)
        self.out: dict[str, Link] = {}  # outbound, connecting or up
        self.inbound: dict[str, Link] = {}  # accepted (after a valid hello and its ack)
        # accepted, a valid hello, no ack yet: they replace `inbound` only once acked
        # (a replayed hello, never acked, must not end the live session)
        self.pending: set[Link] = set()
        self._accepted: dict[str, tuple[int, int]] = {}  # peer -> its (creation, session)
        # accepted, no valid hello yet: closed if none within two intervals (a client
        # that connects and never speaks, or trickles bytes, must not hold a socket)
        self.strangers: set[Link] = set()
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._sessions = 0
        self.counts: dict[str, int] = {
            "frames_out": 0,
            "frames_in": 0,
            "sessions": 0,
            "lost": 0,
            "refused": 0,
        }
        self._server: asyncio.Server | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_warning = 0.0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on `listen` (`OSError` if it cannot: the cluster raises
        `ClusterUnavailable`), set `address` from the bound port if no ``advertise=``
        was given, and start the heartbeat task (every `interval` seconds)."""
        loop = asyncio.get_running_loop()
        host, port = self.listen
        self._server = await loop.create_server(lambda: Link(self, False), host, port)
        bound = self._server.sockets[0].getsockname()
        if self.address is None:
            self.address = (host, int(bound[1]))
        self._keeper = loop.create_task(self._keep())

    async def close(self) -> None:
        """Leave: close every connection quietly (a ``BYE`` on ours), stop the
        heartbeat and connect tasks, and stop listening."""
        self._closing = True
        self.close_all()
        if self._keeper is not None:
            self._keeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()

    def close_all(self) -> None:
        """Close every connection quietly (fenced, a new creation, leaving)."""
        for link in [*self.out.values(), *self.inbound.values(), *self.pending]:
            link.close()
        for link in list(self.strangers):
            link.close(bye=False)

    def peer_down(self, name: str, creation: int | None = None) -> None:
        """`name`'s incarnation `creation` is down (all of them if None: forgotten):
        close its connections (and older ones) quietly and forget what we kept for it.
        A newer incarnation's connections stay: it may have opened them before our
        membership poll saw the old one go."""
        for table in (self.out, self.inbound):
            link = table.get(name)
            if link is not None and (creation is None or link.creation <= creation):
                link.close()
        for link in [x for x in self.pending if x.peer == name]:
            if creation is None or link.creation <= creation:
                link.close()
        accepted = self._accepted.get(name)
        if accepted is not None and (creation is None or accepted[0] <= creation):
            del self._accepted[name]
        self._retry_at.pop(name, None)
        self._backoff.pop(name, None)

    def accepted(self, link: Link) -> bool:
        """A connection was accepted: False (refuse it) if too many are waiting for
        their hello."""
        if len(self.strangers) >= MAX_STRANGERS or self._closing:
            self.counts["refused"] += 1
            return False
        self.strangers.add(link)
        return True

    def forget(self, link: Link) -> None:
        """Drop `link` from our tables (it closed); a newer link of its peer stays."""
        self.pending.discard(link)
        self.strangers.discard(link)
        table = self.out if link.outbound else self.inbound
        if table.get(link.peer) is link:
            del table[link.peer]

    # -- sending ----------------------------------------------------------------------------
    def want(self, name: str) -> None:
        """A frame for `name` left on pub/sub: open a connection to it if it has an
        address and we may."""
        if name in self.out or self._closing or self.fenced():
            return
        addr = self.addresses.get(name)
        if addr is None or addr[0] != self.transport.peer_creation.get(name):
            return
        if time.monotonic() < self._retry_at.get(name, 0.0) or not self.transport.store.up:
            return
        link = Link(self, True)
        link.peer, link.creation = name, addr[0]
        self._sessions += 1
        link.session = self._sessions
        self.out[name] = link
        task = asyncio.get_running_loop().create_task(self._connect(link, addr[1], addr[2]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, link: Link, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: link, host, port), 2 * self.interval
            )
        except (OSError, TimeoutError) as exc:
            self._failed(link, repr(exc))
            return
        if link.closed:
            return
        t = self.transport
        link.write(
            HELLO,
            signed(
                self.key,
                "hello",
                self.name,
                t.creation,
                link.peer,
                link.creation,
                link.session,
                link.nonce,
            ),
        )

    def _failed(self, link: Link, why: str | None = None) -> None:
        """Connecting or the handshake failed (nothing went on it): back off. With
        `why`, the first failure since the peer last answered is a warning (a wrong
        advertise=, a firewall, another service at that address), the retries are
        DEBUG: frames still flow, through Redis."""
        if why is not None:
            addr = self.addresses.get(link.peer)
            where = f"{addr[1]}:{addr[2]}" if addr is not None else "?"
            log.log(
                logging.DEBUG if link.peer in self._backoff else logging.WARNING,
                "%s: no direct connection to %s at %s (%s): its frames go through "
                "Redis; retrying with backoff (is its advertise= reachable from here?)",
                self.name,
                link.peer,
                where,
                why,
            )
        if not link.closed:
            link.closed = True
            if link.transport is not None:
                link.transport.abort()
        self.forget(link)
        if link.peer not in self.addresses:
            return  # (down meanwhile: nothing to retry)
        backoff = min(self._backoff.get(link.peer, self.interval / 2) * 2, 10 * self.interval)
        self._backoff[link.peer] = backoff
        self._retry_at[link.peer] = time.monotonic() + backoff

    def send(self, link: Link, frame: bytes) -> None:
        """Write one frame on an outbound link that is up."""
        if link.backlog() > MAX_BACKLOG:
            self.transport.dropped["backlog"] += 1
            link.lose("the peer does not read (write backlog)")
            return
        link.write(FRAME, frame)
        self.counts["frames_out"] += 1
        self.transport.sent_frames += 1

    # -- receiving --------------------------------------------------------------------------
    def record(self, link: Link, kind: int, payload: bytes) -> None:
        """Handle one record (`kind`, its `payload`) that came on `link`, in the
        socket's I/O callback: frames go to `Transport.receive` (held until the
        cutover marker), handshake records advance the handshake, anything out of
        place ends the connection as lost."""
        if kind == FRAME:
            if not link.up or link.outbound:
                link.lose("a frame before the handshake")
            elif link.marked:
                self.counts["frames_in"] += 1
                self.transport.receive(payload, link)
            else:
                link.held.append(payload)
                link.held_bytes += len(payload)
                if link.held_bytes > MAX_BACKLOG:
                    link.lose("too many frames held before the cutover marker")
        elif kind == PING:
            link.write(PONG, b"")
        elif kind == PONG:
            link.probed = 0.0
            self._backoff.pop(link.peer, None)
        elif kind == BYE:
            if link.outbound:  # the receiver closes it: what it had not read is lost
                link.lose("closed by the peer")
            else:
                link.close(bye=False)
        elif kind == HELLO and not link.outbound and not link.peer:
            self._hello(link, payload)
        elif kind == WELCOME and link.outbound and not link.up:
            self._welcome(link, payload)
        elif kind == ACK and not link.outbound and link.peer and not link.up:
            fields = opened(self.key, payload, "ack")
            t = self.transport
            expect = [link.peer, link.creation, self.name, t.creation, link.session, link.nonce]
            if fields is None or fields[1:] != [str(x) for x in expect]:
                self._refuse(link, "a bad ack (a replayed hello?)")
                return
            accepted = self._accepted.get(link.peer)
            if accepted is not None and accepted >= (link.creation, link.session):
                self._refuse(link, "an ack for an old session")
                return
            self.pending.discard(link)
            old = self.inbound.get(link.peer)
            if old is not None:  # its previous session ended (the sender knows it)
                old.close(bye=False)
            self._accepted[link.peer] = (link.creation, link.session)
            self.inbound[link.peer] = link
            link.up = True
        elif kind == REFUSE:
            # (unsigned: it counts only as the answer to our hello; anywhere else it
            # ends the connection as lost, never quietly)
            if not link.outbound or link.up:
                link.lose("a refusal after the handshake")
                return
            self._failed(link, f"refused: {payload[:200].decode(errors='replace')}")
        else:
            link.lose(f"an unexpected record {kind}")

    def _refuse(self, link: Link, why: str) -> None:
        self.counts["refused"] += 1
        now = time.monotonic()
        if now - self._last_warning >= 1.0:  # (a scanner must not flood the log)
            self._last_warning = now
            log.warning(
                "%s: refused a direct connection: %s (%d refused so far)",
                self.name,
                why,
                self.counts["refused"],
            )
        link.write(REFUSE, why.encode())
        link.closed = True
        if link.transport is not None:
            link.transport.close()
        self.forget(link)

    def _hello(self, link: Link, payload: bytes) -> None:
        fields = opened(self.key, payload, "hello")
        if fields is None or len(fields) != 7:
            self._refuse(link, "a bad signature (another cluster secret?)")
            return
        _, peer, creation_text, me, mine, session, nonce = fields
        t = self.transport
        known = t.peer_creation.get(peer)
        creation = int(creation_text)  # (signed by a node that holds the secret)
        if self.fenced() or self._closing:
            self._refuse(link, f"{self.name} is fenced")
        elif me != self.name or mine != str(t.creation):
            self._refuse(link, f"meant for {me}.{mine}, this is {self.name}.{t.creation}")
        elif (known is not None and creation < known) or creation <= self.down_creation(peer):
            self._refuse(link, f"{peer}.{creation} is an old incarnation")
        elif self._accepted.get(peer, (0, 0)) >= (creation, int(session)):
            self._refuse(link, f"{peer}.{creation} session {session} was accepted already")
        else:
            # (`inbound` changes only on its ack: a replayed hello is never acked)
            link.peer, link.creation, link.session = peer, creation, int(session)
            self.strangers.discard(link)
            self.pending.add(link)
            link.write(
                WELCOME,
                signed(
                    self.key,
                    "welcome",
                    peer,
                    creation,
                    self.name,
                    t.creation,
                    session,
                    nonce,
                    link.nonce,
                ),
            )

    def _welcome(self, link: Link, payload: bytes) -> None:
        fields = opened(self.key, payload, "welcome")
        t = self.transport
        expect = [self.name, t.creation, link.peer, link.creation, link.session, link.nonce]
        if fields is None or len(fields) != 8 or fields[1:7] != [str(x) for x in expect]:
            self._failed(link, "a bad welcome")
            return
        theirs = fields[7]
        link.write(
            ACK,
            signed(
                self.key,
                "ack",
                self.name,
                t.creation,
                link.peer,
                link.creation,
                link.session,
                theirs,
            ),
        )
        marker = t.cut_over(link.peer, link.session)
        if marker is None:
            self._failed(link)  # (the marker could not leave now: stay on pub/sub)
            return
        link.marker = marker
        link.up = True
        self.counts["sessions"] += 1

    def on_marker(self, sender: str, creation: int, session: int) -> None:
        """A cutover marker from `sender` arrived on pub/sub: deliver what its
        connection held, and what comes on it from now on."""
        link = self.inbound.get(sender)
        if link is None or link.creation != creation or link.session != session:
            # (the marker may come through Redis before the ack on the connection)
            key = (sender, creation, session)
            link = next((x for x in self.pending if (x.peer, x.creation, x.session) == key), None)
            if link is None:
                return
        link.marked = True
        held, link.held, link.held_bytes = link.held, [], 0
        for frame in held:
            if link.closed:
                break
            self.counts["frames_in"] += 1
            self.transport.receive(frame, link)

    def on_pubsub(self, sender: str) -> None:
        """A frame from `sender` came on pub/sub after its connection's cutover: it
        switched back (its session ended): close ours."""
        link = self.inbound.get(sender)
        if link is not None and link.marked:
            link.close(bye=False)

    def publisher_lost(self, wire: object) -> None:
        """The publishing connection `wire` was lost: a cutover marker it had not
        confirmed may be lost with it, and the receiver would hold our frames for
        good: those sessions end as lost."""
        for link in list(self.out.values()):
            marker = link.marker
            if marker is not None and marker[0] is wire and wire_replies(wire) < marker[1]:
                link.lose("the cutover marker may be lost (the store connection closed)")

    def unreachable(self, name: str) -> None:
        """A pub/sub frame for `name` reached nobody (a marker, maybe): a session being
        cut over cannot be trusted."""
        link = self.out.get(name)
        if link is not None:
            link.lose("a frame on pub/sub reached nobody")

    # -- failures -----------------------------------------------------------------------------
    def lost(self, link: Link, why: str) -> None:
        """`link` ended as lost (`why`, for the log): an outbound session that was
        up may have lost frames, so `on_lost(peer)` ends our side and a ``RESET``
        follows, and the peer is tried again after an interval; one not up yet
        backs off (`_failed`); an accepted one is just forgotten (its sender sees
        the close)."""
        self.forget(link)
        if not link.outbound:
            # our side of a session from `peer` ended: the sender finds out too (it
            # gets no more heartbeat answers) and ends both sides (a RESET)
            return
        if not link.up:
            self._failed(link, f"lost during the handshake: {why}")
            return
        self.counts["lost"] += 1
        self._retry_at[link.peer] = time.monotonic() + self.interval
        log.warning("%s: direct connection to %s lost (%s)", self.name, link.peer, why)
        self.on_lost(link.peer)

    async def _keep(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.interval)
            try:
                self._beat()
            except Exception:
                log.exception("direct heartbeat failed")

    def _beat(self) -> None:
        now = time.monotonic()
        limit = 2 * self.interval
        for link in list(self.out.values()):
            if not link.up:
                if now - link.opened > limit:
                    self._failed(link, "the handshake did not finish")
                continue
            if link.marker is not None and wire_replies(link.marker[0]) >= link.marker[1]:
                link.marker = None  # confirmed
            if link.probed and link.heard < link.probed < now - limit:
                link.lose(f"no answer for {now - link.heard:.1f} s")
                continue
            link.write(PING, b"")
            if not link.probed:
                link.probed = now
        for link in list(self.pending):
            if now - link.opened > limit:
                link.close(bye=False)  # no ack in time
        for link in list(self.strangers):
            if now - link.opened > limit:
                link.close(bye=False)  # no valid hello in time
        for link in list(self.inbound.values()):
            if not link.up and now - link.opened > limit:
                link.close(bye=False)  # the handshake did not finish
            elif now - link.heard > limit + self.interval:
                link.close(bye=False)  # silent: the sender ends it too
            elif link.up and not link.marked and now - link.opened > limit:
                link.lose("no cutover marker")  # the sender sees the close: lost
