"""Deployment checks: an embedded node inside one of several server workers.

An embedded node (no cluster URL) keeps its registry in its own process. A server
started with several worker processes (``uvicorn --workers 2``, gunicorn with
``-w 4``, hypercorn ``--workers 2``) runs one such node per worker, and each worker
then has registries of its own: a key (a session, a cart, a room) is a different
process in each worker, and a request sees the state of whichever worker answers
it. When a node starts without a cluster, `warn_if_several_workers` looks for a
multi-worker server and, if it finds one, logs a warning on the
``procreg.deployment`` logger, once per process.

The detection (`several_workers`), in this order:

1. **The server's own settings, on the call stack.** The node starts on the event
   loop that the worker's server runs, so the frames of the server's code are below
   the caller: uvicorn's ``Server.run`` (its ``config.workers``; ``--reload`` runs
   a single process whatever ``--workers`` says), gunicorn's arbiter in the forked
   worker (``num_workers``, which ``-w``, ``WEB_CONCURRENCY``, ``GUNICORN_CMD_ARGS``
   and config files all set) and its worker object (``cfg.workers``), hypercorn's
   worker function (``config.workers``). When such frames are found, the outermost
   one's count decides (the process's own server: gunicorn's arbiter rather than the
   uvicorn worker class it runs): more than one worker warns, exactly one does not.
2. **Otherwise, ``WEB_CONCURRENCY``** (the worker count that uvicorn and gunicorn
   default to, and that platforms such as Heroku set) above 1 warns, but only if a
   server (uvicorn, gunicorn or hypercorn) is imported in this process: a script
   run with ``procreg.run`` on such a platform is left alone.

Nothing else is looked at (no other process is inspected), so a node started in a
thread of its own inside a worker, or a server not listed here, goes undetected;
the check never raises. Silence it with
``logging.getLogger("procreg.deployment").setLevel(logging.ERROR)`` when per-worker
registries are what you want. docs/DEPLOYING.md explains the choices.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

__all__ = ["several_workers", "warn_if_several_workers"]

log = logging.getLogger("procreg.deployment")

SERVERS = ("uvicorn", "gunicorn", "hypercorn")
"""The servers whose worker counts are recognised."""

_warned = False


def _server_of(obj: Any) -> str | None:
    module = type(obj).__module__
    server = module.partition(".")[0] if isinstance(module, str) else ""
    return server if server in SERVERS else None


def _counts(obj: Any) -> list[int]:
    """The worker counts that an object of a known server's code carries: a gunicorn
    arbiter's ``num_workers`` (in a forked worker, the master's), the ``workers`` of
    a uvicorn, gunicorn or hypercorn config, directly or as ``.config``/``.cfg``."""
    counts: list[int] = []
    if _server_of(obj) is None:
        return counts
    num = getattr(obj, "num_workers", None)
    if isinstance(num, int) and not isinstance(num, bool):
        counts.append(num)
    for holder in (obj, getattr(obj, "config", None), getattr(obj, "cfg", None)):
        if holder is None or _server_of(holder) is None:
            continue
        try:
            workers = getattr(holder, "workers", None)
            reload = _server_of(holder) == "uvicorn" and bool(getattr(holder, "reload", False))
        except Exception:  # a config property that cannot answer here
            continue
        if isinstance(workers, int) and not isinstance(workers, bool):
            counts.append(1 if reload else workers)  # --reload: a single server process
    return counts


def _from_stack(frame: FrameType | None) -> tuple[str, int] | None:
    """``(server, workers)`` from the outermost frame of a known server's code below
    `frame` whose objects (``self``, ``config``, ``cfg``) carry a worker count: the
    outermost is the process's own server (gunicorn's arbiter, not the uvicorn
    worker class it runs, whose config only echoes ``WEB_CONCURRENCY``)."""
    found: tuple[str, int] | None = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        server = module.partition(".")[0] if isinstance(module, str) else ""
        if server in SERVERS:
            scope = frame.f_locals
            counts = [c for name in ("self", "config", "cfg") for c in _counts(scope.get(name))]
            if counts:
                found = (server, max(counts))
        frame = frame.f_back
    return found


def several_workers(
    frame: FrameType | None = None,
    environ: Mapping[str, str] | None = None,
    modules: Mapping[str, Any] | None = None,
) -> str | None:
    """Why this process looks like one of several server workers (``"uvicorn with
    2 workers"``, ``"WEB_CONCURRENCY=4 (gunicorn)"``), or None. `frame` (default:
    the caller's), `environ` (default: `os.environ`) and `modules` (default:
    `sys.modules`) are for tests. The rules are in this module's docstring.

    >>> several_workers(environ={}, modules={}) is None
    True
    """
    try:
        found = _from_stack(frame if frame is not None else sys._getframe(1))
    except Exception:  # never let a check break a start
        found = None
    if found is not None:
        server, count = found
        return f"{server} with {count} workers" if count > 1 else None
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    raw = environ.get("WEB_CONCURRENCY", "").strip()
    loaded = [name for name in SERVERS if name in modules]
    if raw.isdigit() and int(raw) > 1 and loaded:
        return f"WEB_CONCURRENCY={int(raw)} ({', '.join(loaded)})"
    return None


def warn_if_several_workers(node_name: str) -> bool:
    """Log the warning (once per process) if `several_workers` finds a multi-worker
    server; called when a node starts without a cluster. True if it warned now."""
    global _warned
    if _warned:
        return False
    why = several_workers(sys._getframe(1))
    if why is None:
        return False
    _warned = True
    log.warning(
        "procreg: node %r keeps its registry in this process only (no cluster URL), but "
        "this process is one of several server workers (%s). Each worker then has its "
        "own processes and registry: the same key (a session, a cart, a room) is a "
        "different process in each worker, and a request sees whichever worker answers "
        "it. Give every worker the same cluster URL (PROCREG_CLUSTER=redis://... or "
        "Node(cluster=...)) and, for procreg.web sessions, the same secret "
        "(PROCREG_WEB_SECRET), or run a single worker. See docs/DEPLOYING.md.",
        node_name,
        why,
    )
    return True
