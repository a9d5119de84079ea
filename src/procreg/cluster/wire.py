"""Raw RESP connections for the transport's hot path.

redis-py's asyncio pub/sub reader costs tens of microseconds per message (a timeout
context, a future and a task wake-up for each), and its pipelines as much again per
batch of PUBLISHes: a remote call crosses Redis twice, so those costs add up to most
of its round trip. A `Wire` is one Redis connection driven directly instead:

- it is opened by redis-py (so TLS, passwords, the database and the client name in
  the URL all work the same as for every other connection of the node), then its
  socket's asyncio transport is handed to this protocol;
- commands are packed by hiredis and written at once, with no task in between;
- replies and pushed messages are parsed by hiredis inside the I/O callback
  (`data_received`) and handed to `on_reply` in order.

A `Wire` never blocks and never waits: its owner (`transport.Transport`) decides what
a lost connection means and opens a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Wire", "kill_clients"]

log = logging.getLogger("procreg.cluster")

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is part of the cluster extra
    hiredis = None


class Wire(asyncio.Protocol):
    """One Redis connection: `send` writes commands, `on_reply` gets every reply and
    pushed message (``[b"message", channel, data]`` on a subscribed connection) in
    order, ``on_lost(wire, error)`` is called once when the connection ends for any
    reason other than `close` or `abort`; `on_batch` (if given) once the replies that
    arrived together have all been handled."""

    def __init__(
        self,
        on_reply: Callable[[Any], None],
        on_lost: Callable[[Wire, BaseException], None],
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        if hiredis is None:  # pragma: no cover - hiredis is part of the cluster extra
            raise ImportError("the cluster needs hiredis: pip install 'procreg[cluster]'")
        self._parser = hiredis.Reader()
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._on_batch = on_batch
        self._transport: asyncio.Transport | None = None
        self._conn: Any = None  # the redis-py connection that opened the socket
        self.closed = False
        self.sent = 0  # commands written
        self.replies = 0  # replies received
        self.heard = time.monotonic()  # when data last arrived (or the wire opened)

    @classmethod
    async def open(
        cls,
        store: Store,
        on_reply: Callable[[Any], None],
        on_lost: Callable[[Wire, BaseException], None],
        on_batch: Callable[[], None] | None = None,
    ) -> Wire:
        """Connect through redis-py (handshake included) and take the socket over."""
        wire = cls(on_reply, on_lost, on_batch)
        conn = await store.raw_connection()
        writer = getattr(conn, "_writer", None)
        reader = getattr(conn, "_reader", None)
        if writer is None or reader is None:  # pragma: no cover - a redis-py change
            raise RuntimeError("this redis-py version does not expose its connection streams")
        buffered = bytes(getattr(reader, "_buffer", b""))
        transport = writer.transport
        if transport.is_closing() or reader.at_eof():  # lost before we took it over
            writer.close()
            raise ConnectionError("the store closed the connection while it was opened")
        wire._conn = conn  # keeps redis-py's stream objects (and so the socket) alive
        wire._transport = transport
        transport.set_protocol(wire)
        if buffered:
            wire.data_received(buffered)
        return wire

    # -- writing ------------------------------------------------------------------------
    def send(self, *commands: tuple[Any, ...]) -> None:
        """Write `commands` (each a tuple of arguments) in one go."""
        transport = self._transport
        if transport is None or self.closed:
            raise ConnectionError("the connection is closed")
        assert hiredis is not None
        if len(commands) == 1:
            transport.write(hiredis.pack_command(commands[0]))
        else:
            transport.write(b"".join([hiredis.pack_command(c) for c in commands]))
        self.sent += len(commands)

    def backlog(self) -> int:
        """Bytes written but not yet taken by the socket."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def outstanding(self) -> int:
        """Commands whose reply has not arrived (on a connection that is not
        subscribed: pushed messages count as replies too)."""
        return self.sent - self.replies

    def close(self) -> None:
        """Close after what was written has gone out; `on_lost` is not called."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        self._release()

    def abort(self) -> None:
        """Close at once, dropping what was not sent; `on_lost` is not called."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # the socket is ours to close: redis-py must not warn
            conn._reader = conn._writer = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        """Declare the connection dead (say, silent for too long): it is aborted and
        `on_lost` is called, as if the peer had closed it."""
        self._lose(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        parser = self._parser
        parser.feed(data)
        on_reply = self._on_reply
        while True:
            try:
                reply = parser.gets()
            except Exception as exc:  # hiredis.ProtocolError: the stream is unusable
                log.error("bad reply stream from the cluster store: %r", exc)
                self._lose(exc)
                return
            if reply is False:
                break
            self.replies += 1
            try:
                on_reply(reply)
            except Exception:
                log.exception("handling a reply from the cluster store failed")
        if self._on_batch is not None and not self.closed:
            try:
                self._on_batch()
            except Exception:
                log.exception("handling replies from the cluster store failed")

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc if exc is not None else ConnectionError("the store closed the connection"))

    def _lose(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        self._release()
        self._on_lost(self, exc)


async def kill_clients(owner: Any, ids: list[int]) -> None:
    """Close the transport `owner`'s earlier subscribed connections that the server may still hold
    (``CLIENT KILL ID``), so that a frame for us that reaches none of our live
    connections is reported as undeliverable instead of counted as received."""
    # the store is usually still marked down right after a lost connection
    # (re-subscribing is quicker than its reconnection): wait for it
    for _ in range(50):
        if owner.store.up or owner._closing:
            break
        await asyncio.sleep(owner.interval / 5)
    for client_id in ids:

        async def kill(r: Any, client_id: int = client_id) -> Any:
            return await r.execute_command("CLIENT", "KILL", "ID", client_id)

        try:
            await owner.store.run(kill)
        except ClusterUnavailable:
            owner._stale_ids.append(client_id)  # tried again at the next confirmation
        except Exception as exc:  # long gone ("No such client")
            log.debug("CLIENT KILL ID %s: %r", client_id, exc)
