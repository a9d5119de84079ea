"""The demo application: chat rooms, a visit counter and a server clock, all made of
procreg processes, with the observer at ``/observer/``.

==========================  ========================================================
``GET /``                   the page (plain HTML and JavaScript served by the app)
``POST /api/visit``         count a visit in the session process; returns
                            ``{"visits": n, "nick": ...}``
``POST /api/nick``          keep ``{"nick": ...}`` in the session process
``GET /api/rooms``          the rooms that have a process, with their listeners
``WS /ws/{room}``           a comet connection: joins the room's pool and the clock's
``/observer/``              the observer (read-only unless a token is configured)
``GET /metrics``            Prometheus metrics (when ``prometheus_client`` is
                            installed: the ``metrics`` or ``demo`` extra)
==========================  ========================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import pi
from ...api import entries, members
from ..comet import comet_route, pool_group
from ..mount import install
from ..responses import asset, page
from ..session import session
from . import assets
from .clock import clock_pi
from .rooms import ROOMS_TABLE, clean_nick, on_connect, on_message, room_of

__all__ = ["create_app"]


async def index(request: Request) -> Response:
    """The demo page."""
    return page(request, assets.INDEX_HTML)


async def script(request: Request) -> Response:
    """The page's script."""
    return asset(request, assets.SCRIPT, "text/javascript; charset=utf-8")


async def style(request: Request) -> Response:
    """The page's stylesheet."""
    return asset(request, assets.STYLE, "text/css; charset=utf-8")


async def _json_body(request: Request) -> Any:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return None  # also keeps cross-site HTML forms out: they cannot send JSON
    try:
        return await request.json()
    except ValueError:
        return None


async def visit(request: Request) -> Response:
    """Count a visit (the page calls this on every load) and say who we are."""
    handle = session(request)
    visits = await handle.incr("visits")
    return JSONResponse({"visits": visits, "nick": await handle.get("nick")})


async def set_nick(request: Request) -> Response:
    """Keep the nickname in the session process."""
    body = await _json_body(request)
    nick = clean_nick(body.get("nick")) if isinstance(body, dict) else None
    if nick is None:
        return JSONResponse({"error": 'send JSON {"nick": "a non-empty name"}'}, 400)
    await session(request).set("nick", nick)
    return JSONResponse({"nick": nick})


async def rooms(request: Request) -> Response:
    """The rooms that have a process, with how many connections listen to each."""
    found: list[tuple[int, str]] = []
    for key, _pid in entries(ROOMS_TABLE)[:200]:
        name = str(key[1]) if isinstance(key, tuple) and len(key) == 2 else str(key)
        found.append((len(await members(pool_group(key))), name))
    found.sort(key=lambda r: (-r[0], r[1]))
    return JSONResponse({"rooms": [{"room": n, "listeners": c} for c, n in found[:50]]})


def create_app(
    *,
    secret: str | bytes | None = None,
    observer: bool = True,
    observer_token: str | None = None,
    idle_timeout: float | None = 1200.0,
    clock_interval: float = 1.0,
    **node_options: Any,
) -> Starlette:
    """The demo as a Starlette application (serve it with ``procreg demo`` or any ASGI
    server). `node_options` go to `procreg.Node` (``name=``, ``cluster=``, ...); an
    `observer_token` makes the observer writable (its "kill" buttons)."""

    @contextlib.asynccontextmanager
    async def start_clock(app: Starlette) -> AsyncIterator[None]:
        started = await pi.start(clock_pi(clock_interval))
        already = isinstance(started, pi.Error) and (
            isinstance(started.code, tuple) and started.code[0] == "already_started"
        )
        if isinstance(started, pi.Error) and not already:
            raise RuntimeError(f"the demo clock did not start: {started.code!r}")
        # in a cluster one clock serves every node: its pool spans the cluster
        yield

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/static/demo.js", script),
            Route("/static/demo.css", style),
            Route("/api/visit", visit, methods=["POST"]),
            Route("/api/nick", set_nick, methods=["POST"]),
            Route("/api/rooms", rooms),
            comet_route("/ws/{room}", pool=room_of, on_message=on_message, on_connect=on_connect),
        ],
        lifespan=start_clock,
    )
    try:
        from ..metrics import metrics_route
    except ImportError:  # prometheus_client is not installed: no /metrics
        pass
    else:
        app.routes.append(metrics_route())
    if node_options.get("cluster") is None:  # in a cluster each node needs its own name
        node_options.setdefault("name", "demo")
    return install(
        app,
        secret=secret,
        idle_timeout=idle_timeout,
        observer=observer,
        observer_writable=observer_token is not None,
        observer_token=observer_token,
        **node_options,
    )
