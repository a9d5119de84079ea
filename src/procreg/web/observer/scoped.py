"""The observer's view of cluster-scoped processes (``GET /api/scoped``): those on
this node with their key's home node, and the moves (takeovers on graceful stops,
failovers) this node has made or taken."""

from __future__ import annotations

from typing import Any

from ...kernel import Kernel

__all__ = ["scoped_view"]


def scoped_view(node: Kernel, limit: int = 200) -> dict[str, Any]:
    """``{"clustered": bool, "local": [{table, key, pid, home}], "history": [...],
    "failovers", "takeovers", "handed_off"}``; keys and pids as text. `home` is the
    key's home node among the live nodes now (rendezvous hashing), where it would
    be placed again; `history` is newest first, at most `limit` of each."""
    scoped: Any = getattr(getattr(node, "_cluster", None), "scoped", None)
    if scoped is None:
        return {"clustered": False, "local": [], "history": []}
    from ...cluster.backend import home_node

    live = scoped.cluster.live_nodes()
    local = [
        {"table": table, "key": repr(key), "pid": str(pid), "home": home_node(key, live)}
        for (table, key), pid in list(scoped.local.items())[:limit]
    ]
    history = [
        {**event.as_dict(), "key": repr(event.key)} for event in list(scoped.history)[::-1][:limit]
    ]
    return {
        "clustered": True,
        "local": local,
        "history": history,
        "failovers": scoped.failovers,
        "takeovers": scoped.takeovers,
        "handed_off": scoped.handed_off,
    }
