"""`Observer`: the observer as an ASGI application, mountable anywhere.

Routes (relative to where it is mounted):

=================================================  ====================================
``GET /``                                          the page (polls the JSON below
                                                   every second)
``GET /api/overview``                              every live node of the cluster
                                                   with its figures and live rates,
                                                   tables and pools counted over all
                                                   nodes, rate history per node,
                                                   recent cluster events
``GET /api/processes?node=&offset=&limit=``        a page of a node's processes,
                                                   oldest first (default: this node)
``GET /api/processes?node=&q=&cursor=&limit=``     a bounded search on a node (see
                                                   `procreg.observe.snapshot`)
``GET /api/processes/{pid}``                       one process, asked of its node
``GET /api/tree?node=``                            a node's supervision trees
``GET /api/scoped?offset=&limit=``                 a page of the cluster's cluster-scoped
                                                   processes with their node, home
                                                   node, behaviour and the moves this
                                                   node saw (`scoped.scoped_page`)
``POST /api/processes/{pid}/kill``                 ``exit(pid, "kill")``: only when
                                                   `writable`, with the token (header
                                                   ``X-Procreg-Token`` or query
                                                   ``token``); otherwise 403
=================================================  ====================================

Other nodes answer through their `procreg.observe.agent.ObserverAgent` (started on
first need, ended when idle): a node that does not answer within `timeout` seconds is
listed as not answering. Requests from other machines get 403 unless
``allow_remote=True`` (behind a reverse proxy every client looks local: protect the
mount point there).
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from ...errors import ClusterUnavailable, NodeDown, NoNode
from ...node import Node
from ...observe.agent import ClusterView, describe_error
from ...observe.snapshot import SCAN_LIMIT, RateMeter, parse_pid
from ..context import node_from_scope, use_node
from ..lifespan import lifespan
from ..responses import asset, client_is_local, page
from . import assets
from .scoped import BehaviourCache, scoped_page

__all__ = ["TOKEN_HEADER", "Observer", "create_observer_app"]

TOKEN_HEADER = "x-procreg-token"
"""The header carrying the observer's token for write actions."""

EVENTS_SHOWN = 50
"""The most cluster events the overview returns (newest)."""


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


def _no_store(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, headers={"cache-control": "no-store"})


def _unanswered(name: str, exc: BaseException) -> JSONResponse:
    """The JSON answer when node `name` could not answer."""
    status = 404 if isinstance(exc, NodeDown) else 504 if isinstance(exc, TimeoutError) else 502
    return _no_store({"error": f"node {name}: {describe_error(exc)}", "node": name}, status)


class Observer:
    """The observer: a read-only view of the cluster's nodes (or the one embedded
    node) with their figures and rates, the registry's tables and pools, each node's
    processes and supervision trees, and the cluster's events, as an ASGI app::

        app.mount("/observer", procreg.web.Observer())

    - `writable`: allow actions that change things (the "kill" button); needs `token`.
    - `token`: the secret a write request must carry (at least 16 characters).
    - `allow_remote`: serve clients that are not on this machine (off by default).
    - `scan_limit`: the most processes one search request looks at.
    - `timeout`: seconds to wait for another node's answer.
    """

    def __init__(
        self,
        *,
        writable: bool = False,
        token: str | None = None,
        allow_remote: bool = False,
        scan_limit: int = SCAN_LIMIT,
        timeout: float = 2.0,
    ) -> None:
        if writable and not token:
            raise ValueError("a writable observer needs a token (token=...)")
        if token is not None and len(token) < 16:
            raise ValueError("the observer token must be at least 16 characters long")
        self.writable = writable
        self._token = token
        self.allow_remote = allow_remote
        self.scan_limit = scan_limit
        self.view = ClusterView(timeout)
        self.meters: dict[str, RateMeter] = {}  # node name -> its rates
        self.behaviours = BehaviourCache()  # of cluster-scoped processes, by pid
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

    @property
    def meter(self) -> RateMeter:
        """The rates of the first node observed (kept for old code)."""
        return next(iter(self.meters.values()), RateMeter())

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

    def _target(self, request: Request, node: Node) -> str:
        """The node a request is about (``node=``; default: this one)."""
        name = request.query_params.get("node", "").strip() or node.name
        if name != node.name and name not in node.nodes():
            raise _NotLive(name)
        return name

    async def _overview(self, request: Request) -> Response:
        node = self._node(request)
        names = node.nodes()
        answers = await self.view.ask_all(node, names, ("overview",))
        for gone in set(self.meters) - set(names):
            del self.meters[gone]
        rows: list[dict[str, Any]] = []
        history: dict[str, list[dict[str, float]]] = {}
        table_counts: dict[str, dict[str, Any]] = {}  # table -> count, nodes
        pool_counts: dict[str, int] = {}
        events: list[dict[str, Any]] = []
        groups_total = 0
        for name in names:
            found = answers[name]
            me = name == node.name
            if isinstance(found, Exception):
                rows.append({"node": name, "self": me, "answered": False,
                             "error": describe_error(found)})  # fmt: skip
                continue
            stats = found["stats"]
            meter = self.meters.setdefault(name, RateMeter())
            rates = meter.sample(stats)
            history[name] = meter.history()
            rows.append(
                {**stats, "rates": rates, "self": me, "answered": True, "cluster": found["cluster"]}
            )
            for row in found["tables"]:
                entry = table_counts.setdefault(row["table"], {"count": 0, "nodes": {}})
                entry["count"] += row["count"]
                entry["nodes"][name] = row["count"]
            for row in found["pools"]:
                pool_counts[row["group"]] = pool_counts.get(row["group"], 0) + row["members"]
            groups_total += found["groups_total"]
            # this node's view of everything; the others' events about themselves
            events += [e for e in found["events"] if me or e["node"] == name]
        events.sort(key=lambda e: e["time"])
        body: dict[str, Any] = {
            "self": node.name,
            "clustered": node._cluster is not None,
            "nodes": rows,
            "history": history,
            "tables": [
                {"table": t, "count": c["count"], "nodes": c["nodes"]}
                for t, c in sorted(table_counts.items(), key=lambda tc: (-tc[1]["count"], tc[0]))
            ],
            "pools": [
                {"group": g, "members": m}
                for g, m in sorted(pool_counts.items(), key=lambda gm: (-gm[1], gm[0]))[:100]
            ],
            "groups_total": groups_total,
            # tables, pools and groups leave out the nodes that did not answer
            "partial": any(not row["answered"] for row in rows),
            "events": events[-EVENTS_SHOWN:],
            "writable": self.writable,
            "scan_limit": self.scan_limit,
        }
        return _no_store(body)

    async def _processes(self, request: Request) -> Response:
        node = self._node(request)
        try:
            name = self._target(request, node)
        except _NotLive as gone:
            return _unanswered(gone.name, NodeDown("not a live node of this cluster"))
        limit = _int(request, "limit", 50, 1, 500)
        query = request.query_params.get("q", "").strip()
        if query:
            cursor = _int(request, "cursor", 0, 0, 1 << 62)
            ask: tuple[Any, ...] = ("search", query[:200], cursor, limit, self.scan_limit)
        else:
            ask = ("processes", _int(request, "offset", 0, 0, 1 << 62), limit)
        try:
            body = await self.view.ask(node, name, ask)
        except Exception as exc:  # NodeDown, CallTimeout, or its own error
            return _unanswered(name, exc)
        return _no_store(body)

    async def _process(self, request: Request) -> Response:
        node = self._node(request)
        pid = parse_pid(request.path_params["pid"])
        if pid is None:
            return JSONResponse({"error": "no such process"}, 404)
        if pid[0] != node.name and pid[0] not in node.nodes():
            return JSONResponse({"error": f"node {pid[0]} is not live"}, 404)
        try:
            row = await self.view.ask(node, pid[0], ("process", str(pid)))
        except Exception as exc:
            return _unanswered(pid[0], exc)
        if row is None:
            return JSONResponse({"error": "no such process"}, 404)
        return _no_store(row)

    async def _tree(self, request: Request) -> Response:
        node = self._node(request)
        try:
            name = self._target(request, node)
            trees = await self.view.ask(node, name, ("tree",))
        except _NotLive as gone:
            return _unanswered(gone.name, NodeDown("not a live node of this cluster"))
        except Exception as exc:
            return _unanswered(request.query_params.get("node", node.name), exc)
        return _no_store({"node": name, "trees": trees})

    async def _scoped(self, request: Request) -> Response:
        offset = _int(request, "offset", 0, 0, 1 << 62)
        limit = _int(request, "limit", 50, 1, 200)
        try:
            body = await scoped_page(self._node(request), self.view, self.behaviours, offset, limit)
        except ClusterUnavailable as exc:
            return JSONResponse({"error": describe_error(exc)}, 503)
        return _no_store(body)

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
        if pid is None:
            return JSONResponse({"error": "no such process"}, 404)
        if pid[0] == node.name:
            alive = node.is_alive(pid)
        elif pid[0] in node.nodes():
            try:
                alive = await self.view.ask(node, pid[0], ("process", str(pid))) is not None
            except Exception as exc:
                return _unanswered(pid[0], exc)
        else:
            alive = False
        if not alive:
            return JSONResponse({"error": "no such process"}, 404)
        node.exit(pid, "kill")
        return JSONResponse({"killed": str(pid)})


class _NotLive(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def create_observer_app(
    *, writable: bool = False, token: str | None = None, **node_options: Any
) -> Starlette:
    """A stand-alone application serving the observer at ``/`` (and Prometheus
    metrics at ``/metrics`` when ``prometheus_client`` is installed), with a node of
    its own (``procreg observer``); `node_options` go to `procreg.Node`
    (``cluster=`` joins the cluster: the observer then shows every node of it)."""
    observer = Observer(writable=writable, token=token)
    routes: list[Any] = []
    try:
        from ..metrics import metrics_route
    except ImportError:  # no prometheus_client: no /metrics
        pass
    else:
        routes.append(metrics_route())
    routes.append(Mount("/", observer))
    return Starlette(routes=routes, lifespan=lifespan(**node_options))
