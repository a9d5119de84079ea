"""`SessionMiddleware`: a signed cookie per browser and a `Session` handle per request.

::

    app = Starlette(routes=..., lifespan=procreg.web.lifespan())
    app.add_middleware(procreg.web.SessionMiddleware, secret=os.environ["APP_SECRET"])

    async def home(request):
        visits = await procreg.web.session(request).incr("visits")

The cookie holds ``<sid>.<signature>`` (see `procreg.web.signing`) and is sent
``HttpOnly; SameSite=Lax; Path=/`` (plus ``Secure`` with ``secure=True``) whenever the
request did not bring a valid one. A cookie that fails verification is ignored: the
request gets a fresh session id, never anyone else's. WebSocket handshakes get the
session of their cookie too; no cookie is set on a handshake, so a WebSocket without a
valid cookie gets a session for that connection only (load a page first).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import NoNode
from ..node import check_timeout
from ..scope import check_scope
from .context import node_from_scope, use_node
from .session import SESSION_SCOPE_KEY, Session
from .signing import CookieSigner, new_session_id

__all__ = ["SessionMiddleware"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class SessionMiddleware:
    """ASGI middleware giving every browser a signed session cookie and every request a
    `Session` handle (``procreg.web.session(request)``, also ``request.state.session``).

    - `secret`: signing secret (str or bytes, at least 16 bytes); default: env
      ``PROCREG_WEB_SECRET``, else a random per-process secret (with a warning).
    - `cookie_name`: the cookie's name.
    - `idle_timeout`: seconds without a request after which a session process ends
      (None: never); the next request then starts an empty one.
    - `secure`: add the ``Secure`` attribute (set it when serving over HTTPS).
    - `session_scope`: ``"cluster"`` (the default) makes session processes
      cluster-scoped, so a rolling restart keeps their data; ``"node"`` opts out
      (see `procreg.web.session`).

    The request also runs with the application's node as the current node.
    """

    def __init__(
        self,
        app: ASGIApp,
        secret: str | bytes | None = None,
        cookie_name: str = "procreg_session",
        idle_timeout: float | None = 1200.0,
        secure: bool = False,
        session_scope: str = "cluster",
    ) -> None:
        check_scope(session_scope)
        if not isinstance(cookie_name, str) or not _TOKEN.fullmatch(cookie_name):
            raise ValueError(f"not a valid cookie name: {cookie_name!r}")
        check_timeout(idle_timeout, "idle_timeout")
        self.app = app
        self.signer = CookieSigner(secret)
        self.cookie_name = cookie_name
        self.idle_timeout = idle_timeout
        self.secure = secure
        self.session_scope = session_scope

    def _cookie_value(self, scope: Scope) -> str | None:
        parts = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"cookie"]
        if not parts:
            return None
        return cookie_parser("; ".join(parts)).get(self.cookie_name)

    def set_cookie_header(self, sid: str) -> str:
        """The ``Set-Cookie`` value that gives a browser session id `sid`."""
        attrs = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if self.secure else "")
        return f"{self.cookie_name}={self.signer.sign(sid)}{attrs}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            node = node_from_scope(scope)
        except NoNode as exc:
            raise NoNode(
                "procreg.web.SessionMiddleware needs a running node: give the app "
                "lifespan=procreg.web.lifespan() (or use procreg.web.install(app))"
            ) from exc
        sid = self.signer.unsign(self._cookie_value(scope))
        fresh = sid is None
        handle = Session(
            sid or new_session_id(), node, self.idle_timeout, fresh, self.session_scope
        )
        scope[SESSION_SCOPE_KEY] = handle
        state: dict[str, Any] = scope.setdefault("state", {})
        state["session"] = handle

        if fresh and scope["type"] == "http":
            cookie = self.set_cookie_header(handle.sid)

            async def send_with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message).append("set-cookie", cookie)
                await send(message)

            with use_node(node):
                await self.app(scope, receive, send_with_cookie)
            return
        with use_node(node):
            await self.app(scope, receive, send)
