"""procreg in a FastAPI app (``pip install fastapi`` first): sessions, a chat pool and
the observer.

    python examples/web_fastapi.py        # then: http://127.0.0.1:8000/docs

``install`` adds the node, the session middleware and the observer; the WebSocket
route hands each connection to a `CometEndpoint`, which runs it as a procreg process
joined to the room's pool.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI, Request, WebSocket

import procreg.web

app = FastAPI()


async def say(websocket: WebSocket, data: Any, conn: procreg.web.Connection) -> None:
    nick = await conn.session.get("nick", "anonymous") if conn.session else "anonymous"
    await conn.publish({"nick": html.escape(nick), "text": html.escape(str(data))})


chat = procreg.web.CometEndpoint(lambda ws: ws.path_params["room"], on_message=say)


@app.post("/nick/{nick}")
async def set_nick(nick: str, request: Request) -> dict[str, str]:
    await procreg.web.session(request).set("nick", nick)
    return {"nick": nick}


@app.post("/rooms/{room}")
async def announce(room: str, text: str) -> dict[str, int]:
    return {"reached": await procreg.web.publish(room, {"nick": "server", "text": text})}


@app.websocket("/ws/{room}")
async def room(websocket: WebSocket) -> None:
    await chat.serve(websocket)


procreg.web.install(app, secret="change me: a long random secret", observer=True)

if __name__ == "__main__":
    procreg.web.serve(app, host="127.0.0.1", port=8000)
