"""`lifespan`: run a procreg node for as long as the ASGI application runs.

::

    from starlette.applications import Starlette
    import procreg.web

    app = Starlette(routes=[...], lifespan=procreg.web.lifespan(name="web1"))

The node starts on the server's event loop before the first request and stops (its
processes end with reason ``"shutdown"``) when the server shuts down. Its handle is
put in the lifespan state under `NODE_STATE_KEY` (so ``request.state.procreg_node``
is the node). An application lifespan of your own can run inside the node, so that
its startup code may spawn processes::

    @contextlib.asynccontextmanager
    async def startup(app):
        await procreg.pi.start(...)
        yield {"greeting": "hello"}

    app = Starlette(lifespan=procreg.web.lifespan(startup))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ..node import Node
from .context import NODE_STATE_KEY

__all__ = ["NodeLifespan", "describe_registry", "lifespan"]

log = logging.getLogger("procreg.web")

AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""A Starlette-style lifespan: ``app -> async context manager`` yielding state or None."""


class NodeLifespan:
    """A Starlette ``lifespan=`` callable that runs a `procreg.Node` (made with
    `node_options`) around the application, and `inner` (another lifespan) inside it.

    `node` is the running node, None while the application is not running.
    """

    def __init__(self, inner: AppLifespan | None = None, **node_options: Any) -> None:
        self.inner = inner
        self.node_options = node_options
        self.node: Node | None = None

    def __call__(self, app: Any) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        """Enter the lifespan of `app` (called by Starlette)."""
        return self._run(app)

    @contextlib.asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        node = Node(**self.node_options)
        async with node:
            log.info("procreg.web: node %r uses %s", node.name, describe_registry(node))
            self.node = node
            try:
                state: dict[str, Any] = {NODE_STATE_KEY: node}
                if self.inner is None:
                    yield state
                    return
                async with self.inner(app) as inner_state:
                    if inner_state:
                        state.update(inner_state)
                    yield state
            finally:
                self.node = None


def describe_registry(node: Node) -> str:
    """Which registry `node` uses, for the startup log line (a cluster URL without
    its password).

    >>> describe_registry(Node("web1"))
    'the embedded registry (this process only: no cluster URL)'
    """
    if node.cluster is None:
        return "the embedded registry (this process only: no cluster URL)"
    from ..cluster.url import parse_url

    try:
        where = parse_url(node.cluster).describe()
    except ValueError:
        where = "(an unparsable URL)"
    return f"the cluster registry at {where}"


def lifespan(inner: AppLifespan | None = None, **node_options: Any) -> NodeLifespan:
    """A lifespan for ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)`` that starts
    a `procreg.Node` (``procreg.Node(**node_options)``) on the server's loop at startup,
    runs `inner` (your own lifespan, if any) inside it, and stops the node at shutdown.

    >>> from starlette.applications import Starlette
    >>> import procreg.web
    >>> app = Starlette(lifespan=procreg.web.lifespan(name="web1"))
    """
    return NodeLifespan(inner, **node_options)
