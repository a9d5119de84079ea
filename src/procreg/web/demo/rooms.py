"""Chat rooms of the demo: a pool per room for the live messages, and a `Room` process
per room (``get_or_spawn(("room", name), Room, table="rooms")``) keeping its recent
lines for newcomers. Texts travel as JSON strings, unchanged; the page inserts every
one with ``textContent`` (never ``innerHTML``), so what a user types is shown exactly as
typed and never becomes markup. (Escaping here as well would show ``&lt;b&gt;`` to
someone who typed ``<b>``.)
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final

from starlette.websockets import WebSocket

from ...api import call, cast, get_or_spawn, join
from ...server import Server
from ..comet import Connection, pool_group
from .clock import CLOCK_POOL

__all__ = [
    "MAX_NICK",
    "MAX_ROOM",
    "MAX_TEXT",
    "ROOMS_TABLE",
    "Room",
    "clean_nick",
    "clean_room",
    "on_connect",
    "on_message",
    "room_of",
]

MAX_TEXT: Final = 500
MAX_NICK: Final = 32
MAX_ROOM: Final = 40
HISTORY: Final = 50
ROOMS_TABLE: Final = "rooms"


class Room(Server):
    """The process of one chat room: its last `HISTORY` lines."""

    name: str
    lines: deque[dict[str, Any]]

    def init(self, name: str) -> None:
        """Start with no lines."""
        self.name = name
        self.lines = deque(maxlen=HISTORY)

    def handle_cast(self, line: dict[str, Any]) -> None:
        """Remember a line."""
        self.lines.append(line)

    def handle_call(self, request: Any) -> Any:
        """``"history"``: the remembered lines, oldest first."""
        if request == "history":
            return list(self.lines)
        raise ValueError(f"unknown request {request!r}")


def clean_room(value: Any) -> str:
    """A room name from user input: any text, trimmed and cut to `MAX_ROOM`
    characters; an empty name is the lobby."""
    name = " ".join(str(value).split())[:MAX_ROOM]
    return name or "lobby"


def room_of(websocket: WebSocket) -> tuple[str, str]:
    """The pool of the room named in the URL (``/ws/{room}``): ``("room", name)``, so
    that no room name can reach another pool (the clock's, say)."""
    return ("room", clean_room(websocket.path_params.get("room", "")))


def _name(conn: Connection) -> str:
    pool: Any = conn.pool
    return str(pool[1])


def clean_nick(value: Any) -> str | None:
    """A nickname from user input (trimmed, at most `MAX_NICK` characters), or None."""
    if not isinstance(value, str):
        return None
    nick = " ".join(value.split())[:MAX_NICK]
    return nick or None


async def _room(name: str) -> Any:
    return await get_or_spawn(("room", name), Room, name, table=ROOMS_TABLE, idle_timeout=600.0)


async def on_connect(websocket: WebSocket, conn: Connection) -> None:
    """A new connection: also join the clock's pool, and send the room's history."""
    await join(pool_group(CLOCK_POOL))
    history = await call(await _room(_name(conn)), "history")
    conn.send({"type": "history", "room": _name(conn), "lines": history})


async def on_message(websocket: WebSocket, data: Any, conn: Connection) -> None:
    """A frame from the browser: ``{"type": "say", "text": ...}`` is trimmed, stored in
    the room and published to everyone in it."""
    if not isinstance(data, dict) or data.get("type") != "say":
        conn.send({"type": "error", "error": 'expected {"type": "say", "text": ...}'})
        return
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        return
    nick = "anonymous"
    if conn.session is not None:
        nick = await conn.session.get("nick") or nick
    line = {
        "type": "chat",
        "room": _name(conn),
        "nick": nick,
        "text": text.strip()[:MAX_TEXT],
        "time": time.strftime("%H:%M:%S"),
    }
    cast(await _room(_name(conn)), line)
    await conn.publish(line)
