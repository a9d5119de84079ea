"""procreg for the web (ASGI, on Starlette; FastAPI apps are Starlette apps).

What Nitrogen used its process registry for, in today's Python web stack:

- `lifespan` runs a `procreg.Node` for as long as the application runs;
- `SessionMiddleware` gives each browser a signed cookie and a session *process*
  (``get_or_spawn(("session", sid), SessionProcess, table="sessions")``), reached
  through ``procreg.web.session(request)``;
- `CometEndpoint` / `comet_route` run one process per WebSocket connection, joined to
  a pool; `publish` sends to a pool from anywhere;
- `install` puts all of this (and optionally the `Observer`) into an existing app.

::

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    import procreg.web

    async def home(request):
        visits = await procreg.web.session(request).incr("visits")
        await procreg.web.publish("visits", {"visits": visits})
        return JSONResponse({"visits": visits})

    app = Starlette(routes=[
        Route("/", home),
        procreg.web.comet_route("/ws", pool="visits"),
    ])
    procreg.web.install(app, secret="change me: at least 16 bytes", observer=True)

See ``docs/WEB.md`` for the design and its guarantees.
"""

from __future__ import annotations

from . import observer
from .comet import (
    CometEndpoint,
    Connection,
    Frame,
    comet_route,
    pool_group,
    publish,
)
from .context import NODE_STATE_KEY, NodeMiddleware, node_from_scope, use_node
from .lifespan import NodeLifespan, lifespan
from .middleware import SessionMiddleware
from .mount import install
from .observer import Observer
from .serving import serve
from .session import SESSIONS_TABLE, Session, SessionProcess, session
from .signing import CookieSigner

__all__ = [
    "NODE_STATE_KEY",
    "SESSIONS_TABLE",
    "CometEndpoint",
    "Connection",
    "CookieSigner",
    "Frame",
    "NodeLifespan",
    "NodeMiddleware",
    "Observer",
    "Session",
    "SessionMiddleware",
    "SessionProcess",
    "comet_route",
    "install",
    "lifespan",
    "node_from_scope",
    "observer",
    "pool_group",
    "publish",
    "serve",
    "session",
    "use_node",
]
