"""`install`: add procreg's node, sessions and (optionally) the observer to an existing
Starlette or FastAPI application in one call.

::

    app = FastAPI()                      # or Starlette(routes=...)
    procreg.web.install(app, secret=os.environ["APP_SECRET"], observer=True)
"""

from __future__ import annotations

from typing import Any, TypeVar

from starlette.applications import Starlette

from .comet import LIMITS_STATE_KEY, check_limits
from .context import NodeMiddleware
from .lifespan import NodeLifespan
from .middleware import SessionMiddleware
from .observer import Observer

__all__ = ["install"]

App = TypeVar("App", bound=Starlette)


def install(
    app: App,
    *,
    secret: str | bytes | None = None,
    sessions: bool = True,
    cookie_name: str = "procreg_session",
    idle_timeout: float | None = 1200.0,
    secure: bool = False,
    session_scope: str = "cluster",
    observer: bool = False,
    observer_path: str = "/observer",
    observer_writable: bool = False,
    observer_token: str | None = None,
    comet_max_queue: int | None = None,
    comet_max_queue_bytes: int | None = None,
    comet_send_timeout: float | None = None,
    **node_options: Any,
) -> App:
    """Equip `app` (a `Starlette` or `FastAPI` application, before it starts) with:

    - a `procreg.Node` for the application's lifetime (made with `node_options`); the
      app's own lifespan runs inside it, so its startup code can spawn processes;
    - `SessionMiddleware` (`secret`, `cookie_name`, `idle_timeout`, `secure`,
      `session_scope`: ``"node"`` opts out of sessions that survive a rolling restart), or only
      `NodeMiddleware` with ``sessions=False``; either way handlers run with the
      app's node as the current node;
    - with ``observer=True``, the `Observer` mounted at `observer_path`, read-only
      unless ``observer_writable=True`` with an `observer_token`;
    - `comet_max_queue`, `comet_max_queue_bytes`, `comet_send_timeout`: the
      back-pressure limits of the app's `CometEndpoint` s that set none of their own
      (see `CometEndpoint`; None keeps the defaults). `node_options` may also bound
      every process's mailbox (``max_mailbox=``, ``overflow=``: see `procreg.Node`).

    Returns `app`.

    >>> from starlette.applications import Starlette
    >>> import procreg.web
    >>> app = procreg.web.install(Starlette(), secret="0123456789abcdef-example")
    """
    if not isinstance(app, Starlette):
        raise TypeError(f"install() needs a Starlette or FastAPI application, got {app!r}")
    if getattr(app.state, "procreg_installed", False):
        raise RuntimeError("procreg.web.install() was already called on this application")
    check_limits(comet_max_queue, comet_max_queue_bytes, comet_send_timeout)
    if sessions:
        app.add_middleware(
            SessionMiddleware,
            secret=secret,
            cookie_name=cookie_name,
            idle_timeout=idle_timeout,
            secure=secure,
            session_scope=session_scope,
        )
    else:
        app.add_middleware(NodeMiddleware)
    app.router.lifespan_context = NodeLifespan(app.router.lifespan_context, **node_options)
    if observer:
        app.mount(observer_path, Observer(writable=observer_writable, token=observer_token))
    limits = {
        "max_queue": comet_max_queue,
        "max_queue_bytes": comet_max_queue_bytes,
        "send_timeout": comet_send_timeout,
    }
    setattr(app.state, LIMITS_STATE_KEY, {k: v for k, v in limits.items() if v is not None})
    app.state.procreg_installed = True
    return app
