"""`Observer`: the observer as an ASGI application, mountable anywhere.

Routes (relative to where it is mounted):

========================================  =============================================
``GET /``                                 the page (polls the JSON below every second)
``GET /api/overview``                     nodes with counters and live rates, tables,
                                          pools, rate history
``GET /api/processes?offset=&limit=``     a page of processes, oldest first
``GET /api/processes?q=&cursor=&limit=``  a bounded search (see `snapshot`)
``GET /api/processes/{pid}``              one process
``GET /api/tree``                         the supervision tree
``GET /api/scoped``                       cluster-scoped processes here with their
                                          home node, and their moves (`scoped`)
``POST /api/processes/{pid}/kill``        ``exit(pid, "kill")``: only when `writable`,
                                          with the token (header ``X-Procreg-Token`` or
                                          query ``token``); otherwise 403
========================================  =============================================

Requests from other machines get 403 unless ``allow_remote=True`` (behind a reverse
proxy every client looks local: protect the mount point there).
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from ...errors import NoNode
from ...node import Node
from ..context import node_from_scope, use_node
from ..lifespan import lifespan
from ..responses import asset, client_is_local, page
from . import assets
from .scoped import scoped_view
from .snapshot import (
    SCAN_LIMIT,
    RateMeter,
    parse_pid,
    pools,
    process_page,
    process_row,
    search_processes,
    tables,
)
from .tree import supervision_tree

__all__ = ["TOKEN_HEADER", "Observer", "create_observer_app"]

TOKEN_HEADER = "x-procreg-token"
"""The header carrying the observer's token for write actions."""


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    return max(low, min(value, high))


class _BadRequest(Exception):
    pass


async def _bad_request(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(str(exc), 400)


class Observer:
    """The observer: a read-only view of the node's processes, tables, pools,
    supervision tree and rates, as an ASGI app::

        app.mount("/observer", procreg.web.Observer())

    - `writable`: allow actions that change things (the "kill" button); needs `token`.
    - `token`: the secret a write request must carry (at least 16 characters).
    - `allow_remote`: serve clients that are not on this machine (off by default).
    - `scan_limit`: the most processes one search request looks at.
    """

    def __init__(
        self,
        *,
        writable: bool = False,
        token: str | None = None,
        allow_remote: bool = False,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        if writable and not token:
            raise ValueError("a writable observer needs a token (token=...)")
        if token is not None and len(token) < 16:
            raise ValueError("the observer token must be at least 16 characters long")
        self.writable = writable
        self._token = token
        self.allow_remote = allow_remote
        self.scan_limit = scan_limit
        self.meter = RateMeter()
        self._app = Starlette(
            routes=[
                Route("/", self._index),
                Route("/observer.js", self._script),
                Route("/observer.css", self._style),
                Route("/api/overview", self._overview),
                Route("/api/processes", self._processes),
                Route("/api/processes/{pid}", self._process),
                Route("/api/processes/{pid}/kill", self._kill, methods=["POST"]),
                Route("/api/tree", self._tree),
                Route("/api/scoped", self._scoped),
            ],
            exception_handlers={_BadRequest: _bad_request},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        if not self.allow_remote and not client_is_local(request):
            await PlainTextResponse("the observer serves this machine only", 403)(
                scope, receive, send
            )
            return
        try:
            node = node_from_scope(scope)
        except NoNode:
            await PlainTextResponse("no procreg node is running", 503)(scope, receive, send)
            return
        with use_node(node):
            await self._app(scope, receive, send)

    # -- pages ------------------------------------------------------------------------
    async def _index(self, request: Request) -> Response:
        return page(request, assets.INDEX_HTML)

    async def _script(self, request: Request) -> Response:
        return asset(request, assets.SCRIPT, "text/javascript; charset=utf-8")

    async def _style(self, request: Request) -> Response:
        return asset(request, assets.STYLE, "text/css; charset=utf-8")

    # -- JSON -------------------------------------------------------------------------
    @staticmethod
    def _node(request: Request) -> Node:
        return node_from_scope(request.scope)

    async def _overview(self, request: Request) -> Response:
        node = self._node(request)
        stats = node.stats()
        rates = self.meter.sample(stats)
        body: dict[str, Any] = {
            "nodes": [{**stats.as_dict(), "rates": rates, "self": True}],
            "history": self.meter.history(),
            "tables": tables(node),
            "pools": await pools(node),
            "groups_total": len(node.registry.groups()),
            "writable": self.writable,
            "scan_limit": self.scan_limit,
        }
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def _processes(self, request: Request) -> Response:
        node = self._node(request)
        limit = _int(request, "limit", 50, 1, 500)
        query = request.query_params.get("q", "").strip()
        if query:
            cursor = _int(request, "cursor", 0, 0, 1 << 62)
            body = search_processes(node, query[:200], cursor, limit, self.scan_limit)
        else:
            body = process_page(node, _int(request, "offset", 0, 0, 1 << 62), limit)
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def _process(self, request: Request) -> Response:
        pid = parse_pid(request.path_params["pid"])
        row = process_row(self._node(request), pid) if pid is not None else None
        if row is None:
            return JSONResponse({"error": "no such process"}, 404)
        return JSONResponse(row)

    async def _tree(self, request: Request) -> Response:
        trees = await supervision_tree(self._node(request))
        return JSONResponse({"trees": trees}, headers={"cache-control": "no-store"})

    async def _scoped(self, request: Request) -> Response:
        body = scoped_view(self._node(request))
        return JSONResponse(body, headers={"cache-control": "no-store"})

    def _authorized(self, request: Request) -> str | None:
        """None if the request may change things, else why not."""
        if not self.writable or self._token is None:
            return "the observer is read-only (start it with writable=True and a token)"
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            return "a valid token is required"
        return None

    async def _kill(self, request: Request) -> Response:
        refusal = self._authorized(request)
        if refusal is not None:
            return JSONResponse({"error": refusal}, 403)
        node = self._node(request)
        pid = parse_pid(request.path_params["pid"])
        if pid is None or not node.is_alive(pid):
            return JSONResponse({"error": "no such process"}, 404)
        node.exit(pid, "kill")
        return JSONResponse({"killed": str(pid)})


def create_observer_app(
    *, writable: bool = False, token: str | None = None, **node_options: Any
) -> Starlette:
    """A stand-alone application serving only the observer at ``/``, with a node of its
    own (``procreg observer``); `node_options` go to `procreg.Node` (``cluster=`` joins
    the cluster; the observer shows this node's processes and the cluster's nodes)."""
    observer = Observer(writable=writable, token=token)
    return Starlette(routes=[Mount("/", observer)], lifespan=lifespan(**node_options))
