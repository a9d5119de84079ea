"""The comet connection process: one per WebSocket, joined to its pool (a group).

The process owns the sending side of the socket and handles its mailbox in order:
pool messages (`Frame`s, what `publish` sends) are written as JSON text frames,
client frames are given to ``on_message`` inside the process. Its mailbox is the
socket's outbound queue, bounded in messages and in bytes (`CometProcess`). The
endpoint that reads the socket and starts these processes is
`procreg.web.comet.CometEndpoint`; the module docstring there tells the whole story.
These names are re-exported from `procreg.web.comet`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from starlette.websockets import WebSocket

from ..api import publish as _publish
from ..api import receive
from ..coroutines import Process
from ..node import Node
from ..pid import Pid
from ..process import EXITING, OVERLOAD, current_process
from ..registry import Published, check_key
from .session import SESSION_SCOPE_KEY, Session

if TYPE_CHECKING:
    from .comet import CometEndpoint

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNSUPPORTED",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_SEND_TIMEOUT",
    "CometProcess",
    "Connection",
    "Frame",
    "encode",
    "pool_group",
    "publish",
]

log = logging.getLogger("procreg.web")


CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED: Final = 1003  # a binary or non-JSON frame
CLOSE_POLICY_VIOLATION: Final = 1008  # a cross-site handshake
CLOSE_TOO_BIG: Final = 1009  # a frame over max_frame bytes
CLOSE_INTERNAL_ERROR: Final = 1011  # the connection process crashed or was killed
CLOSE_TRY_AGAIN_LATER: Final = 1013  # a client too slow to keep up: dropped
SCOPES: Final = ("local", "global")
DEFAULT_MAX_QUEUE: Final = 1000
"""Messages waiting for one socket before its client is dropped as too slow."""
DEFAULT_MAX_QUEUE_BYTES: Final = 1024 * 1024
"""Bytes of encoded frames waiting for one socket before its client is dropped."""
DEFAULT_SEND_TIMEOUT: Final = 10.0
"""Seconds one write to a socket may stay blocked before its client is dropped."""

OnMessage = Callable[[WebSocket, Any, "Connection"], Awaitable[Any]]
OnConnect = Callable[[WebSocket, "Connection"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Frame:
    """A message already encoded as JSON text; `publish` sends these, so a message
    fanned out to many sockets is encoded once. `size` is its length in UTF-8 bytes
    (computed once), what `max_queue_bytes` counts."""

    text: str
    size: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.size < 0:
            text = self.text
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class _Incoming:
    data: Any


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


_GOING_AWAY: Final = _Close(CLOSE_GOING_AWAY, "the server is stopping")
_PROCESS_ENDED: Final = _Close(CLOSE_INTERNAL_ERROR, "the connection process ended")
_TOO_SLOW: Final = _Close(CLOSE_TRY_AGAIN_LATER, "too slow: messages were piling up")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(message: Any) -> str:
    """`message` as compact JSON text; `TypeError`/`ValueError` if it is not JSON."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")


def pool_group(pool: Hashable, scope: str = "local") -> tuple[str, Hashable]:
    """The registry group of pool `pool`: ``("pool", pool)``.

    Both scopes use this group today, and a group spans the cluster on a clustered
    node, so both scopes do.
    """
    _check_scope(scope)
    return ("pool", pool)


async def publish(pool: Hashable, message: Any, *, scope: str = "local") -> Published:
    """Send `message` (JSON-encodable) to every connection in `pool`; returns how many
    connections it reached. Usable from anywhere code runs on the node: a request
    handler, a connection's ``on_message``, a timer or `pi` process.

    The message is encoded once (a `TypeError` here if it is not JSON), then fanned
    out with `procreg.publish`. An empty or unknown pool reaches 0 connections. The
    result is a `procreg.Published`, an int: its ``missed`` counts the connections
    the message did not reach, because their client had fallen behind (the queue
    was full: that client is being dropped with close code 1013) or the connection
    was closing.
    """
    group = pool_group(pool, scope)
    check_key(pool, "pool")
    return await _publish(group, Frame(encode(message)))


class Connection:
    """One WebSocket connection as its process sees it: given to `on_connect` and
    `on_message` as `conn`.

    Attributes: `websocket`, `pool` (its name), `scope` (``"local"``/``"global"``),
    `pid` (the connection process), `node`, and `session` (the `Session` of the
    handshake's cookie when `SessionMiddleware` is installed, else None).
    """

    __slots__ = (
        "_accepted",
        "_backlog",
        "_done",
        "_drained",
        "_endpoint",
        "_max_bytes",
        "_queued_bytes",
        "_since",
        "node",
        "pid",
        "pool",
        "scope",
        "session",
        "websocket",
    )

    def __init__(self, websocket: WebSocket, pool: Hashable, scope: str, node: Node) -> None:
        self.websocket = websocket
        self.pool = pool
        self.scope = scope
        self.node = node
        self.session: Session | None = websocket.scope.get(SESSION_SCOPE_KEY)
        self.pid: Pid = None  # type: ignore[assignment]  # set right after the spawn
        loop = asyncio.get_running_loop()
        self._accepted: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[_Close | None] = loop.create_future()  # how to close
        self._drained: asyncio.Future[None] | None = None
        self._backlog = 0
        self._endpoint: CometEndpoint | None = None
        self._max_bytes = DEFAULT_MAX_QUEUE_BYTES
        self._queued_bytes = 0  # bytes of frames accepted and not yet written
        self._since = 0.0  # loop time the write in progress began; 0.0: none

    def __repr__(self) -> str:
        return f"<Connection {self.pid!r} pool={self.pool!r}>"

    async def publish(self, message: Any) -> int:
        """Publish `message` to this connection's pool (this socket included)."""
        return await publish(self.pool, message, scope=self.scope)

    def send(self, message: Any) -> bool:
        """Send `message` (JSON-encodable) to this socket only, in order with the pool's
        messages (it goes through the connection process's mailbox). False if it was
        not queued: the client has fallen behind (it is being dropped) or the
        connection is closing."""
        return self.node.send(self.pid, Frame(encode(message)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End this connection: the process stops after the messages already queued,
        and the socket is closed with `code`."""
        self.node.send(self.pid, _Close(code, reason))

    def _finish(self, close: _Close | None) -> None:
        if not self._done.done():
            self._done.set_result(close)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


class CometProcess(Process):
    """A connection process: a coroutine process whose mailbox also counts the bytes
    of the frames waiting for the socket (`Connection._queued_bytes`). A frame that
    would take them over `max_queue_bytes` is refused like a message to a full
    mailbox: counted, and (the connection's policy is ``"exit"``) the process ends
    with reason ``"overload"``. A frame bigger than the budget still passes when
    nothing else waits, so that it can be sent at all."""

    __slots__ = ("_conn",)

    _conn: Connection
    _procreg_kind = "connection"
    _procreg_log_overload = False  # the connection logs "client too slow" itself

    def _procreg_info(self, msg: Any) -> bool:
        if msg.__class__ is not Frame:
            return Process._procreg_info(self, msg)
        conn = self._conn
        queued = conn._queued_bytes
        if queued and queued + msg.size > conn._max_bytes and self._procreg_st < EXITING:
            self._refuse_bytes()
            return False
        if Process._procreg_info(self, msg):
            conn._queued_bytes = queued + msg.size
            return True
        return False

    _procreg_cast = _procreg_info

    def _refuse_bytes(self) -> None:
        node = self._procreg_node
        node.dropped += 1
        self._procreg_extra().dropped += 1
        self._procreg_overload(None)

    def _procreg_finish(self, reason: Any) -> None:
        Process._procreg_finish(self, reason)
        conn = self._conn
        if not conn._done.done():  # ended before its body ran: say how to close here
            conn._finish(_ended(conn, reason))


def _ended(conn: Connection, reason: Any) -> _Close:
    """How to close the socket of a connection whose process was ended by a signal."""
    if reason == OVERLOAD:  # fell behind: queue full or a write too slow
        endpoint = conn._endpoint
        if endpoint is not None:
            endpoint.closed_slow += 1
        log.info("%r: client too slow: dropped (close 1013)", conn)
        return _TOO_SLOW
    return _GOING_AWAY if conn.node.stopping else _PROCESS_ENDED


def _exit_reason() -> Any:
    proc = current_process.get()
    ext = proc._procreg_ext if proc is not None else None
    return ext.exit_reason if ext is not None else None


async def _connection_process(
    conn: Connection, on_message: OnMessage | None, on_connect: OnConnect | None
) -> None:
    """The body of a connection process (see the module docstring)."""
    ws = conn.websocket
    loop = asyncio.get_running_loop()
    close: _Close | None = _Close(1000, "")
    try:
        await conn._accepted
        if on_connect is not None:
            await on_connect(ws, conn)
        while True:
            msg = await receive()
            cls = type(msg)
            size = 0
            if cls is Frame:
                text = msg.text
                size = msg.size
            elif cls is _Incoming:
                conn._backlog -= 1
                waiter = conn._drained
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if on_message is not None:
                    await on_message(ws, msg.data, conn)
                continue
            elif cls is _Close:
                close = msg
                return
            else:
                try:
                    text = encode(msg)
                except (TypeError, ValueError):
                    log.warning("%r: dropped a message that is not JSON: %r", conn, msg)
                    continue
            conn._since = loop.time()  # (watched by the endpoint: see send_timeout)
            try:
                await ws.send_text(text)
            except Exception:  # the socket is gone: nothing more to say
                close = None
                return
            conn._since = 0.0
            conn._queued_bytes -= size
    except asyncio.CancelledError:  # ended by a signal: kill, shutdown, a linked exit
        close = _ended(conn, _exit_reason())  # (1013 for "overload")
        raise
    except BaseException:  # a crash in a callback: the runtime logs the crash report
        close = _PROCESS_ENDED
        raise
    finally:
        conn._finish(close)
