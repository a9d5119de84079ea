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
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ..node import Node
from .context import NODE_STATE_KEY

__all__ = ["NodeLifespan", "lifespan"]

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


def lifespan(inner: AppLifespan | None = None, **node_options: Any) -> NodeLifespan:
    """A lifespan for ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)`` that starts
    a `procreg.Node` (``procreg.Node(**node_options)``) on the server's loop at startup,
    runs `inner` (your own lifespan, if any) inside it, and stops the node at shutdown.

    >>> from starlette.applications import Starlette
    >>> import procreg.web
    >>> app = Starlette(lifespan=procreg.web.lifespan(name="web1"))
    """
    return NodeLifespan(inner, **node_options)
