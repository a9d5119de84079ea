"""Which node serves a request: the node in the ASGI scope, made current for the handler.

`procreg.web.lifespan` starts a node when the server starts and puts it in the
lifespan state under `NODE_STATE_KEY`; ASGI servers (uvicorn) and Starlette's
`TestClient` copy that state into every request's ``scope["state"]``. The web layer's
ASGI pieces (`NodeMiddleware`, `SessionMiddleware`, `CometEndpoint`, the observer)
read it back with `node_from_scope` and make it the current node (the one
`procreg.current_node()` returns) while the request runs, so ``procreg.spawn`` and
friends in a handler reach the application's node even when several nodes run in one
interpreter (tests, or two apps). Without lifespan state they fall back to
`procreg.current_node()` (which finds the node when exactly one is running).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import NoNode
from ..kernel import _node_var
from ..node import Node, current_node

__all__ = ["NODE_STATE_KEY", "NodeMiddleware", "node_from_scope", "use_node"]

NODE_STATE_KEY = "procreg_node"
"""The key of the node in the lifespan state and in ``request.state``."""


def node_from_scope(scope: Scope) -> Node:
    """The node serving this request: the lifespan's node if the scope carries one,
    else `procreg.current_node()` (raises `procreg.NoNode` if none can be found)."""
    state: dict[str, Any] | None = scope.get("state")
    if state is not None:
        node = state.get(NODE_STATE_KEY)
        if node is not None and node._running:
            return node  # type: ignore[no-any-return]
    return current_node()


@contextlib.contextmanager
def use_node(node: Node) -> Iterator[Node]:
    """Make `node` the current node for the code inside the ``with`` block (in this
    task, and in the tasks and processes it starts)."""
    token = _node_var.set(node)
    try:
        yield node
    finally:
        try:
            _node_var.reset(token)
        except ValueError:  # the block's end ran in another context: nothing to undo
            pass


class NodeMiddleware:
    """ASGI middleware: run each HTTP and WebSocket request with the application's
    node as the current node. `procreg.web.install` adds it for you.

    >>> from starlette.applications import Starlette
    >>> import procreg.web
    >>> app = Starlette(lifespan=procreg.web.lifespan())
    >>> app.add_middleware(procreg.web.NodeMiddleware)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            node = node_from_scope(scope)
        except NoNode:  # no node at all: the handler may not need one
            await self.app(scope, receive, send)
            return
        with use_node(node):
            await self.app(scope, receive, send)
