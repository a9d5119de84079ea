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
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from ..api import publish as _publish
from ..api import receive
from ..node import Node
from ..pid import Pid
from ..registry import check_key
from .context import node_from_scope, use_node
from .session import SESSION_SCOPE_KEY, Session

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "CometEndpoint",
    "Connection",
    "Frame",
    "comet_route",
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
SCOPES: Final = ("local", "global")
DEFAULT_MAX_FRAME: Final = 64 * 1024

OnMessage = Callable[[WebSocket, Any, "Connection"], Awaitable[Any]]
OnConnect = Callable[[WebSocket, "Connection"], Awaitable[Any]]
PoolOf = Callable[[WebSocket], Hashable | Awaitable[Hashable]]


@dataclass(frozen=True, slots=True)
class Frame:
    """A message already encoded as JSON text; `publish` sends these, so a message
    fanned out to many sockets is encoded once."""

    text: str


@dataclass(frozen=True, slots=True)
class _Incoming:
    data: Any


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


_GOING_AWAY: Final = _Close(CLOSE_GOING_AWAY, "the server is stopping")
_PROCESS_ENDED: Final = _Close(CLOSE_INTERNAL_ERROR, "the connection process ended")


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

    Both scopes use this group today. Once the cluster backend lands, ``"global"``
    pools will span every node of the cluster and ``"local"`` ones stay on one node.
    """
    _check_scope(scope)
    return ("pool", pool)


async def publish(pool: Hashable, message: Any, *, scope: str = "local") -> int:
    """Send `message` (JSON-encodable) to every connection in `pool`; returns how many
    connections it reached. Usable from anywhere code runs on the node: a request
    handler, a connection's ``on_message``, a timer or `pi` process.

    The message is encoded once (a `TypeError` here if it is not JSON), then fanned
    out with `procreg.publish`. An empty or unknown pool reaches 0 connections.
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

    def __repr__(self) -> str:
        return f"<Connection {self.pid!r} pool={self.pool!r}>"

    async def publish(self, message: Any) -> int:
        """Publish `message` to this connection's pool (this socket included)."""
        return await publish(self.pool, message, scope=self.scope)

    def send(self, message: Any) -> None:
        """Send `message` (JSON-encodable) to this socket only, in order with the pool's
        messages (it goes through the connection process's mailbox)."""
        self.node.send(self.pid, Frame(encode(message)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End this connection: the process stops after the messages already queued,
        and the socket is closed with `code`."""
        self.node.send(self.pid, _Close(code, reason))

    def _finish(self, close: _Close | None) -> None:
        if not self._done.done():
            self._done.set_result(close)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


async def _connection_process(
    conn: Connection, on_message: OnMessage | None, on_connect: OnConnect | None
) -> None:
    """The body of a connection process (see the module docstring)."""
    ws = conn.websocket
    close: _Close | None = _Close(1000, "")
    try:
        await conn._accepted
        if on_connect is not None:
            await on_connect(ws, conn)
        while True:
            msg = await receive()
            cls = type(msg)
            if cls is Frame:
                text = msg.text
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
            try:
                await ws.send_text(text)
            except Exception:  # the socket is gone: nothing more to say
                close = None
                return
    except asyncio.CancelledError:  # ended by a signal: kill, shutdown, a linked exit
        close = _GOING_AWAY if conn.node.stopping else _PROCESS_ENDED
        raise
    except BaseException:  # a crash in a callback: the runtime logs the crash report
        close = _PROCESS_ENDED
        raise
    finally:
        conn._finish(close)


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
    ) -> None:
        for name, fn in (("on_message", on_message), ("on_connect", on_connect)):
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise TypeError(f"{name} must be an `async def` function, got {fn!r}")
        if not isinstance(max_frame, int) or max_frame < 1:
            raise ValueError(f"max_frame must be a positive int, got {max_frame!r}")
        if not isinstance(max_backlog, int) or max_backlog < 1:
            raise ValueError(f"max_backlog must be a positive int, got {max_backlog!r}")
        _check_scope(scope)
        self.pool = pool
        self.on_message = on_message
        self.on_connect = on_connect
        self.max_frame = max_frame
        self.max_backlog = max_backlog
        self.scope = scope
        self.allowed_origins = None if allowed_origins is None else list(allowed_origins)

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
        with use_node(node):
            conn.pid = node.spawn(_connection_process, conn, self.on_message, self.on_connect)
            try:
                await node.registry.join(pool_group(pool, self.scope), conn.pid)
                await websocket.accept()
                conn._accepted.set_result(None)
                close = await self._read(websocket, conn)
                if close is not None:
                    await _close(websocket, close)
            finally:
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


async def _close(websocket: WebSocket, close: _Close) -> None:
    if websocket.application_state is WebSocketState.DISCONNECTED:
        return
    try:
        await websocket.close(code=close.code, reason=close.reason)
    except Exception:  # the client is already gone
        pass


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
    `allowed_origins`).

    >>> import procreg.web
    >>> route = procreg.web.comet_route("/ws/{room}", pool=lambda ws: ws.path_params["room"])
    """
    return WebSocketRoute(path, CometEndpoint(pool, on_message, **options), name=name)
