"""The procreg web demo: ``procreg demo`` serves `create_app()` on 127.0.0.1:8000.

Chat rooms (a comet pool per room, a `Room` process keeping each room's recent
lines), a nickname and a visit counter kept in the browser's session process, a
server clock pushed every second by an n2o_pi timer process, and the observer at
``/observer/``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
