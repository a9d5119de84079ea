"""`serve`: run an ASGI application with uvicorn on this machine's loopback interface
(what ``procreg demo`` and ``procreg observer`` do)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from .responses import is_loopback

__all__ = ["serve"]


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `app` with uvicorn at `host`:`port` until interrupted.

    The default host is the loopback address: only this machine can connect. Another
    host is allowed, with a warning: the observer refuses remote clients anyway
    unless it was made with ``allow_remote=True``. Unless logging is configured
    already, the ``procreg`` loggers print at `log_level` as uvicorn's do (so the
    startup line naming the node's registry shows).
    """
    import uvicorn

    if not is_loopback(host):
        print(
            f"procreg: warning: serving on {host}, reachable from other machines",
            file=sys.stderr,
        )
    _show_procreg_logs(log_level)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")


def _show_procreg_logs(log_level: str) -> None:
    """Print the ``procreg`` loggers' records (the startup line naming the registry,
    warnings, crash reports) as uvicorn prints its own, unless the application has
    configured logging itself."""
    logger = logging.getLogger("procreg")
    if logger.handlers or logging.getLogger().handlers:
        return
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(log_level.upper())
