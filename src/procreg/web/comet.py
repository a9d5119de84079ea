"""Comet pools over WebSocket: one process per connection, joined to a pool (a group).

::

    async def chat(websocket, data, conn):
        await conn.publish({"nick": "ann", "text": html.escape(data["text"])})

    routes = [procreg.web.comet_route("/ws/{room}", pool=lambda ws: ws.path_params["room"],
                                      on_message=chat)]
    ...
    await procreg.web.publish("lobby", {"text": "from anywhere"})   # -> sockets reached

Each connection gets its own *connection process* (a coroutine process, `procreg.spawn`)
that owns the sending side of the socket. It is joined to the group ``("pool", name)``
before the handshake is accepted, so a message published after the client saw the
connection open always reaches it. It handles its mailbox in order:

- a pool message (what `publish` sends, or anything sent to the pid) is written to
  the socket as one JSON text frame;
- a client frame (decoded JSON), forwarded by the endpoint, is given to
  ``on_message(websocket, data, conn)`` — so `on_message` runs *inside* the process
  (``procreg.self()`` works, a crash ends only this connection with a crash report,
  and it is serialised with the outgoing messages).

The endpoint's own task reads the socket: it rejects binary and non-JSON frames (close
code 1003) and frames over `max_frame` bytes (1009), then ends the process. When the
client goes away the process is ended (reason ``"shutdown"``) and so leaves its pool;
when the process ends first (killed, crashed, node stopping) the endpoint closes the
socket (1011, or 1001 while the node stops). Bad input never touches the pool.

Back-pressure (slow clients): the connection process's mailbox *is* the socket's
outbound queue. It is bounded in messages (`max_queue`) and in bytes of encoded
frames waiting (`max_queue_bytes`), and a write to the socket may block at most
`send_timeout` seconds. A client that falls behind (a frame finds the queue full, or
a write stays blocked) is dropped: its process ends with reason ``"overload"``
(counted in ``Node.stats().overloaded``), which takes it out of its pool at once,
and the socket is closed with code 1013 (try again later). `publish` does not count
a connection whose queue refused the message (see `procreg.Published`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from ..node import check_timeout
from ..process import EXITING
from ..registry import check_key
from .connection import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_SEND_TIMEOUT,
    CometProcess,
    Connection,
    Frame,
    OnConnect,
    OnMessage,
    _check_scope,
    _Close,
    _connection_process,
    _Incoming,
    _no_constant,
    encode,
    pool_group,
    publish,
)
from .connection import SCOPES as SCOPES  # (re-exported: it lived here)
from .context import node_from_scope, use_node

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
    "CometEndpoint",
    "Connection",
    "Frame",
    "comet_route",
    "encode",
    "pool_group",
    "publish",
]

log = logging.getLogger("procreg.web")

DEFAULT_MAX_FRAME: Final = 64 * 1024
LIMITS_STATE_KEY: Final = "procreg_comet_limits"
"""Where `procreg.web.install` keeps its comet defaults, in ``app.state``."""

PoolOf = Callable[[WebSocket], Hashable | Awaitable[Hashable]]


class CometEndpoint:
    """An ASGI WebSocket endpoint that runs one procreg process per connection and
    joins it to a pool. Use it as a route endpoint (see `comet_route`), or call
    ``await endpoint.serve(websocket)`` from a FastAPI ``@app.websocket`` handler.

    - `pool`: the pool's name, or a callable ``websocket -> name`` (may be async),
      e.g. ``lambda ws: ws.path_params["room"]``; any hashable name is fine.
    - `on_message`: ``async (websocket, data, conn)`` for each JSON frame from the
      client (runs in the connection process); without it client frames are only
      checked and dropped.
    - `on_connect`: ``async (websocket, conn)`` run first in the connection process
      (send a greeting or the room's history with ``conn.send``).
    - `max_frame`: the largest client frame accepted, in bytes (UTF-8); larger ones
      close the connection with code 1009.
    - `max_backlog`: client frames queued for `on_message` before the endpoint stops
      reading the socket (back-pressure).
    - `max_queue`, `max_queue_bytes`, `send_timeout`: how far a client may fall
      behind (messages and bytes waiting for its socket, seconds one write may stay
      blocked) before it is dropped with close code 1013; None takes the value given
      to `procreg.web.install`, else `DEFAULT_MAX_QUEUE` (1,000),
      `DEFAULT_MAX_QUEUE_BYTES` (1 MiB), `DEFAULT_SEND_TIMEOUT` (10 s). A stuck write
      is noticed within a quarter of `send_timeout` after it expires.
    - `scope`: ``"local"`` or ``"global"`` (see `pool_group`).
    - `allowed_origins`: origins allowed to open the socket from a browser; None (the
      default) allows only pages of the same host (or clients sending no Origin),
      ``["*"]`` allows every origin. A refused handshake gets HTTP 403.
    """

    def __init__(
        self,
        pool: Hashable | PoolOf,
        on_message: OnMessage | None = None,
        *,
        on_connect: OnConnect | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_backlog: int = 64,
        scope: str = "local",
        allowed_origins: Sequence[str] | None = None,
        max_queue: int | None = None,
        max_queue_bytes: int | None = None,
        send_timeout: float | None = None,
    ) -> None:
        for name, fn in (("on_message", on_message), ("on_connect", on_connect)):
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise TypeError(f"{name} must be an `async def` function, got {fn!r}")
        if not isinstance(max_frame, int) or max_frame < 1:
            raise ValueError(f"max_frame must be a positive int, got {max_frame!r}")
        if not isinstance(max_backlog, int) or max_backlog < 1:
            raise ValueError(f"max_backlog must be a positive int, got {max_backlog!r}")
        check_limits(max_queue, max_queue_bytes, send_timeout)
        _check_scope(scope)
        self.pool = pool
        self.on_message = on_message
        self.on_connect = on_connect
        self.max_frame = max_frame
        self.max_backlog = max_backlog
        self.scope = scope
        self.allowed_origins = None if allowed_origins is None else list(allowed_origins)
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.send_timeout = send_timeout
        self.closed_slow = 0  # clients dropped with 1013 (queue full or a write too slow)
        self.send_timeouts = 0  # of which: a write blocked over send_timeout
        self._live: dict[Connection, float] = {}  # open connections -> their send_timeout
        self._sweeper: asyncio.TimerHandle | None = None

    def stats(self) -> dict[str, int]:
        """``connections`` open now, ``closed_slow`` (clients dropped with close code
        1013 because they fell behind) and ``send_timeouts`` (of those, dropped
        because one write stayed blocked over `send_timeout`)."""
        return {
            "connections": len(self._live),
            "closed_slow": self.closed_slow,
            "send_timeouts": self.send_timeouts,
        }

    def limits(self, websocket: WebSocket) -> tuple[int, int, float]:
        """``(max_queue, max_queue_bytes, send_timeout)`` for a connection: this
        endpoint's own, else those given to `procreg.web.install`, else the defaults."""
        app = websocket.scope.get("app")
        state = getattr(app, "state", None)
        given: dict[str, Any] = getattr(state, LIMITS_STATE_KEY, None) or {}
        return (
            _pick(self.max_queue, given.get("max_queue"), DEFAULT_MAX_QUEUE),
            _pick(self.max_queue_bytes, given.get("max_queue_bytes"), DEFAULT_MAX_QUEUE_BYTES),
            _pick(self.send_timeout, given.get("send_timeout"), DEFAULT_SEND_TIMEOUT),
        )

    def _watch(self, conn: Connection, send_timeout: float) -> None:
        self._live[conn] = send_timeout
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(send_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        """Drop the clients whose write has been blocked for over `send_timeout`."""
        self._sweeper = None
        if not self._live:
            return
        now = asyncio.get_running_loop().time()
        shortest = float("inf")
        for conn, timeout in list(self._live.items()):
            shortest = min(shortest, timeout)
            since = conn._since
            if since and now - since > timeout:
                proc = conn.node._procs.get(conn.pid)
                if proc is not None and proc._procreg_st < EXITING:
                    self.send_timeouts += 1
                    log.info("%r: a write blocked over %s s", conn, timeout)
                    proc._procreg_overload(None)
        if self._live:
            self._sweeper = asyncio.get_running_loop().call_later(shortest / 4, self._sweep)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        await self.serve(WebSocket(scope, receive, send))

    def origin_allowed(self, websocket: WebSocket) -> bool:
        """Whether the handshake's ``Origin`` is acceptable (see `allowed_origins`)."""
        origin = websocket.headers.get("origin")
        if origin is None:
            return True  # not a browser: no cross-site risk
        allowed = self.allowed_origins
        if allowed is not None:
            return "*" in allowed or origin in allowed
        host = websocket.headers.get("host", "")
        return urlsplit(origin).netloc.lower() == host.lower() != ""

    async def _pool_name(self, websocket: WebSocket) -> Hashable:
        pool: Any = self.pool
        if callable(pool):
            pool = pool(websocket)
            if inspect.isawaitable(pool):
                pool = await pool
        check_key(pool, "pool")
        return pool  # type: ignore[no-any-return]

    async def serve(self, websocket: WebSocket) -> None:
        """Run one connection until either side ends it."""
        if not self.origin_allowed(websocket):
            await websocket.close(code=CLOSE_POLICY_VIOLATION)  # before accept: HTTP 403
            return
        node = node_from_scope(websocket.scope)
        pool = await self._pool_name(websocket)
        conn = Connection(websocket, pool, self.scope, node)
        max_queue, max_queue_bytes, send_timeout = self.limits(websocket)
        conn._endpoint = self
        conn._max_bytes = max_queue_bytes
        with use_node(node):
            proc = node._start_body(
                node._new_pid(),
                _connection_process,
                (conn, self.on_message, self.on_connect),
                None,
                CometProcess,
            )
            assert isinstance(proc, CometProcess)
            proc._conn = conn
            node.bound(proc, max_queue, "exit")
            conn.pid = proc.pid
            self._watch(conn, send_timeout)
            try:
                await node.registry.join(pool_group(pool, self.scope), conn.pid)
                await websocket.accept()
                conn._accepted.set_result(None)
                close = await self._read(websocket, conn)
                if close is not None:
                    await _close(websocket, close, send_timeout)
            finally:
                self._live.pop(conn, None)
                if node.is_alive(conn.pid):
                    node.exit(conn.pid, "shutdown")

    async def _read(self, websocket: WebSocket, conn: Connection) -> _Close | None:
        """Forward client frames to the process until the client leaves (returns None)
        or the connection must close (returns the close code)."""
        done = conn._done
        node = conn.node
        while True:
            if conn._backlog >= self.max_backlog:
                conn._drained = asyncio.get_running_loop().create_future()
                await asyncio.wait((conn._drained, done), return_when=asyncio.FIRST_COMPLETED)
                conn._drained = None
                continue
            recv = asyncio.ensure_future(websocket.receive())
            await asyncio.wait((recv, done), return_when=asyncio.FIRST_COMPLETED)
            if not recv.done():  # the process ended first: close with its code
                recv.cancel()
                return done.result()
            message = recv.result()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is None:
                return _Close(CLOSE_UNSUPPORTED, "binary frames are not supported: send JSON text")
            if len(text) > self.max_frame or len(text.encode()) > self.max_frame:
                return _Close(CLOSE_TOO_BIG, f"frame over {self.max_frame} bytes")
            try:
                data = json.loads(text, parse_constant=_no_constant)
            except (ValueError, RecursionError):  # not JSON, NaN/Infinity, or too deep
                return _Close(CLOSE_UNSUPPORTED, "frames must be JSON text")
            if self.on_message is not None and not done.done():
                conn._backlog += 1
                node.send(conn.pid, _Incoming(data))


async def _close(websocket: WebSocket, close: _Close, timeout: float) -> None:
    """Close the socket with `close`'s code; give up after `timeout` seconds (a client
    that does not read may never let the close frame through)."""
    if websocket.application_state is WebSocketState.DISCONNECTED:
        return
    try:
        async with asyncio.timeout(timeout):
            await websocket.close(code=close.code, reason=close.reason)
    except Exception:  # the client is already gone, or does not read
        pass


def _pick(own: Any, given: Any, default: Any) -> Any:
    return own if own is not None else given if given is not None else default


def check_limits(
    max_queue: int | None, max_queue_bytes: int | None, send_timeout: float | None
) -> None:
    """Raise `ValueError` for a bad `max_queue`/`max_queue_bytes` (None or a positive
    int) or `send_timeout` (None or seconds > 0)."""
    for name, value in (("max_queue", max_queue), ("max_queue_bytes", max_queue_bytes)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if send_timeout is not None:
        check_timeout(send_timeout, "send_timeout")
        if not send_timeout > 0:
            raise ValueError(f"send_timeout must be > 0, got {send_timeout!r}")


def comet_route(
    path: str,
    pool: Hashable | PoolOf,
    on_message: OnMessage | None = None,
    *,
    name: str | None = None,
    **options: Any,
) -> WebSocketRoute:
    """A Starlette `WebSocketRoute` serving a `CometEndpoint` at `path`; `options` are
    the endpoint's (`on_connect`, `max_frame`, `max_backlog`, `scope`,
    `allowed_origins`, `max_queue`, `max_queue_bytes`, `send_timeout`).

    >>> import procreg.web
    >>> route = procreg.web.comet_route("/ws/{room}", pool=lambda ws: ws.path_params["room"])
    """
    return WebSocketRoute(path, CometEndpoint(pool, on_message, **options), name=name)
