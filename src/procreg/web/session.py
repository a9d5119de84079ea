"""Sessions as processes: `SessionProcess` holds one browser session's data; `Session`
is the handle a request uses to talk to it.

Each session id has at most one process, found (or started) with
``procreg.get_or_spawn(("session", sid), SessionProcess, table="sessions",
idle_timeout=...)`` — Nitrogen's ``get_pid/4`` — so concurrent requests of one
browser meet the same process and see each other's writes in order. The process ends
after `idle_timeout` seconds without a request (reason ``"idle"``); its registry entry
goes with it, and the next request of that browser starts a new, empty one.

Values are kept by reference in the session process (local sends do not copy): store
values you will not mutate afterwards (numbers, strings, tuples, or fresh dicts).

In a cluster, session processes are cluster-scoped by default (`procreg.scope`): a
graceful stop of a node (a rolling deploy) hands each session's data off to the
session's new home node, so a rolling restart of every node keeps every session
without an external session store; a node that dies loses the data of the sessions
it held (they start again empty on a survivor). The data must be picklable to move
(a session whose data is not starts empty, logged). ``session_scope="node"`` on
`SessionMiddleware` / `procreg.web.install` opts out: sessions then live and die with
their node, as before.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from starlette.requests import HTTPConnection

from ..api import get_or_spawn
from ..errors import NoProcess, ProcessExited
from ..node import Node
from ..pid import Pid
from ..scope import check_scope, takeover
from ..server import Server
from .context import use_node

__all__ = ["SESSIONS_TABLE", "SESSION_SCOPE_KEY", "Session", "SessionProcess", "session"]

SESSIONS_TABLE: Final = "sessions"
"""The registry table holding the session processes, under ``("session", sid)``."""

SESSION_SCOPE_KEY: Final = "procreg.session"
"""Where the middleware puts the `Session` handle in the ASGI scope."""

_MISSING: Final = object()


class SessionProcess(Server):
    """The process of one session: a dict, read and written through calls.

    Requests (what `Session` sends): ``("get", key, default)``, ``("set", key,
    value)``, ``("delete", key)`` (returns whether it was there), ``("clear",)``,
    ``("items",)`` (a copy of the dict) and ``("incr", key, by)`` (adds `by` to a
    number, 0 if missing, and returns the new value: an atomic read-modify-write).
    """

    data: dict[Hashable, Any]

    def init(self) -> None:
        """Start empty, or with the data handed off by the session's previous
        process (a graceful stop of its node: `procreg.takeover`)."""
        moved = takeover()
        self.data = dict(moved.state) if moved is not None and moved.state else {}

    def handoff(self) -> dict[Hashable, Any]:
        """The data, to move to the session's new home node on a graceful stop."""
        return self.data

    def handle_call(self, request: Any) -> Any:
        """Answer one request (see the class docstring)."""
        op = request[0]
        data = self.data
        if op == "get":
            return data.get(request[1], request[2])
        if op == "set":
            data[request[1]] = request[2]
            return None
        if op == "incr":
            value = data.get(request[1], 0) + request[2]
            data[request[1]] = value
            return value
        if op == "delete":
            return data.pop(request[1], _MISSING) is not _MISSING
        if op == "clear":
            data.clear()
            return None
        if op == "items":
            return dict(data)
        raise ValueError(f"unknown session request {request!r}")


# what the observer and the metrics call it (`ProcessInfo.behaviour`); set here, since
# a Server subclass may not define runtime (``_procreg_``) names
SessionProcess._procreg_kind = "session"


class Session:
    """A request's handle on its session process.

    The process is looked up (or started) on first use, not when the request arrives,
    so requests that never touch the session cost no process. If the process has just
    ended (its idle timeout struck between lookup and call), the call is retried once
    with a fresh `get_or_spawn`: the new process starts empty.

    In a handler::

        handle = procreg.web.session(request)
        visits = await handle.incr("visits")
        nick = await handle.get("nick", "anonymous")

    Attributes: `sid` (the session id, the part of the cookie before the
    signature), `node` (the node serving the request), `idle_timeout` (seconds without
    a request after which the session process ends), `fresh` (True when the request
    came without a valid cookie, so a new id was issued) and `scope` (``"cluster"``:
    the session moves on a rolling restart; ``"node"``: it lives and dies with its
    node).
    """

    __slots__ = ("_pid", "fresh", "idle_timeout", "node", "scope", "sid")

    def __init__(
        self,
        sid: str,
        node: Node,
        idle_timeout: float | None,
        fresh: bool,
        scope: str = "cluster",
    ) -> None:
        check_scope(scope)
        self.sid = sid
        self.node = node
        self.idle_timeout = idle_timeout
        self.fresh = fresh
        self.scope = scope
        self._pid: Pid | None = None

    def __repr__(self) -> str:
        return f"<Session {self.sid[:6]}…>"

    @property
    def key(self) -> tuple[str, str]:
        """The registry key of the session process: ``("session", sid)``."""
        return ("session", self.sid)

    async def pid(self) -> Pid:
        """The pid of the session process, started if needed."""
        with use_node(self.node):
            self._pid = await get_or_spawn(
                self.key,
                SessionProcess,
                table=SESSIONS_TABLE,
                idle_timeout=self.idle_timeout,
                scope=self.scope,
            )
        return self._pid

    async def _call(self, request: tuple[Any, ...]) -> Any:
        pid = self._pid if self._pid is not None else await self.pid()
        try:
            return await self.node.call(pid, request)
        except (NoProcess, ProcessExited):
            # ended between lookup and call (idle, or moved to another node by a
            # rolling restart): once more, with the current process
            return await self.node.call(await self.pid(), request)

    async def get(self, key: Hashable, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        return await self._call(("get", key, default))

    async def set(self, key: Hashable, value: Any) -> None:
        """Store `value` under `key`."""
        await self._call(("set", key, value))

    async def delete(self, key: Hashable) -> bool:
        """Remove `key`; True if it was there."""
        return bool(await self._call(("delete", key)))

    async def clear(self) -> None:
        """Remove everything."""
        await self._call(("clear",))

    async def items(self) -> dict[Hashable, Any]:
        """A copy of the session's data."""
        result: dict[Hashable, Any] = await self._call(("items",))
        return result

    async def incr(self, key: Hashable, by: int | float = 1) -> Any:
        """Add `by` to the number under `key` (0 if missing) and return the result, in
        one step of the session process (safe against concurrent requests)."""
        return await self._call(("incr", key, by))


def session(conn: HTTPConnection) -> Session:
    """The `Session` of a request or WebSocket (needs `SessionMiddleware`)::

    async def home(request):
        visits = await procreg.web.session(request).incr("visits")
    """
    handle = conn.scope.get(SESSION_SCOPE_KEY)
    if handle is None:
        raise RuntimeError(
            "no procreg session on this request: add procreg.web.SessionMiddleware "
            "(or use procreg.web.install(app))"
        )
    return handle  # type: ignore[no-any-return]
