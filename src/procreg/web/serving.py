"""`serve`: run an ASGI application with uvicorn on this machine's loopback interface
(what ``procreg demo`` and ``procreg observer`` do)."""

from __future__ import annotations

import sys
from typing import Any

from .responses import is_loopback

__all__ = ["serve"]


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `app` with uvicorn at `host`:`port` until interrupted.

    The default host is the loopback address: only this machine can connect. Another
    host is allowed, with a warning: the observer refuses remote clients anyway
    unless it was made with ``allow_remote=True``.
    """
    import uvicorn

    if not is_loopback(host):
        print(
            f"procreg: warning: serving on {host}, reachable from other machines",
            file=sys.stderr,
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
