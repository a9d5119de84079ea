"""The observer's view of cluster-scoped processes (``GET /api/scoped``).

- `scoped_view`: those on one node with their key's home node, and the moves
  (takeovers on graceful stops, failovers) that node has made or taken
  (`procreg.cluster.scoped.Scoped.history`).
- `scoped_page`: every cluster-scoped process of the cluster, read from the store's
  records (``scoped:pid``, the pid of each key's current instance), a page at a
  time, each with its current node, its key's home node, its behaviour (asked of its
  node) and the moves of its key this node has seen; what the page shows.

Session ids in keys are cut to their first 4 characters, as everywhere in the
observer (`scoped_page` shows keys as `procreg.introspection.readable_key` writes
them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any, Final

from ...introspection import readable_key
from ...kernel import Kernel
from ...node import Node
from ...observe.agent import ClusterView
from ...observe.snapshot import mask_key, parse_pid

__all__ = ["MOVES_SHOWN", "SCAN_CAP", "BehaviourCache", "scoped_page", "scoped_view"]

SCAN_CAP: Final = 10_000
"""The most records one `scoped_page` reads from the store (the rest: ``truncated``)."""

MOVES_SHOWN: Final = 10
"""The most moves shown per process (newest first)."""


def _scoped(node: Kernel) -> Any:
    return getattr(getattr(node, "_cluster", None), "scoped", None)


def _move(event: Any, readable: bool = True) -> dict[str, Any]:
    key = readable_key(event.key, event.table) if readable else mask_key(repr(event.key))
    return {**event.as_dict(), "key": key}


def scoped_view(node: Kernel, limit: int = 200) -> dict[str, Any]:
    """``{"clustered": bool, "local": [{table, key, pid, home}], "history": [...],
    "failovers", "takeovers", "handed_off"}`` about `node` only; pids as text, keys
    as their repr with session ids cut (`procreg.observe.snapshot.mask_key`).
    `home` is the key's home node among the live nodes now (rendezvous hashing),
    where it would be placed again; `history` is newest first, at most `limit` of
    each."""
    scoped = _scoped(node)
    if scoped is None:
        return {"clustered": False, "local": [], "history": []}
    from ...cluster.backend import home_node

    live = scoped.cluster.live_nodes()
    local = [
        {
            "table": table,
            "key": mask_key(repr(key)),
            "pid": str(pid),
            "home": home_node(key, live),
        }
        for (table, key), pid in list(scoped.local.items())[:limit]
    ]
    history = [_move(event, False) for event in list(scoped.history)[::-1][:limit]]
    return {
        "clustered": True,
        "local": local,
        "history": history,
        "failovers": scoped.failovers,
        "takeovers": scoped.takeovers,
        "handed_off": scoped.handed_off,
    }


class BehaviourCache:
    """Pid text -> its behaviour (a pid never changes behaviour), so that a page
    refreshed every second does not ask other nodes again; at most `size` pids."""

    def __init__(self, size: int = 5000) -> None:
        self.size = size
        self._known: dict[str, str] = {}

    def get(self, pid: str) -> str | None:
        return self._known.get(pid)

    def put(self, pid: str, behaviour: str) -> None:
        if len(self._known) >= self.size:
            self._known.pop(next(iter(self._known)))
        self._known[pid] = behaviour


async def _records(scoped: Any, cap: int) -> tuple[int, dict[str, str]]:
    """(how many records the store holds, up to `cap` of them as field -> pid text)."""
    key = scoped.records.k("pid")
    total = int(await scoped.store.run(lambda r: r.hlen(key)))
    found: dict[str, str] = {}
    cursor = 0
    while True:
        cursor, batch = await scoped.store.run(
            lambda r, c=cursor: r.hscan(key, c, count=min(1000, cap))
        )
        for field, pid in batch.items():
            found[field.decode() if isinstance(field, bytes) else field] = (
                pid.decode() if isinstance(pid, bytes) else pid
            )
        if not cursor or len(found) >= cap:
            return total, dict(list(found.items())[:cap])


async def scoped_page(
    node: Node,
    view: ClusterView,
    behaviours: BehaviourCache,
    offset: int = 0,
    limit: int = 50,
    cap: int = SCAN_CAP,
) -> dict[str, Any]:
    """The body of ``GET /api/scoped``: `scoped_view` of `node` plus

    - ``total``: the records in the store; ``read``: how many were read (at most
      `cap`); ``truncated``: more than `cap` (only those read are sorted and paged);
    - ``offset``, ``limit``, ``self`` (`node`'s name);
    - ``processes``: a page of every cluster-scoped process of the cluster, sorted by
      key (sessions last, being the many), each ``{table, key, pid, node, home,
      behaviour, local, moves}``: ``node`` runs its current instance, ``home`` is
      its key's home node among the live nodes now, ``behaviour`` as that node
      reports it (None if it did not answer within the view's timeout, or the
      process is ending), ``moves`` the last `MOVES_SHOWN` moves of its key that
      `node` made or took (newest first).

    Raises `procreg.ClusterUnavailable` while the store is unreachable."""
    body = scoped_view(node)
    scoped = _scoped(node)
    body.update(self=node.name, total=0, read=0, offset=offset, limit=limit, truncated=False)
    body["processes"] = []
    if scoped is None:
        return body
    from ...cluster.backend import home_node
    from ...cluster.codec import pid_from_str, uncanon

    total, records = await _records(scoped, cap)
    rows: list[tuple[tuple[bool, str], str, Hashable, str]] = []
    for field, pid_text in records.items():
        tk = uncanon(field)
        if not isinstance(tk, tuple) or len(tk) != 2:
            continue
        table, key = tk
        text = readable_key(key, table)
        is_session = type(key) is tuple and len(key) == 2 and key[0] == "session"
        rows.append(((is_session, text), table, key, pid_text))
    rows.sort(key=lambda row: row[0])
    live = scoped.cluster.live_nodes()
    moves: dict[tuple[str, Hashable], list[dict[str, Any]]] = {}
    for event in reversed(scoped.history):
        try:
            shown = moves.setdefault((event.table, event.key), [])
        except TypeError:  # an unhashable key cannot be cluster-scoped; skip it
            continue
        if len(shown) < MOVES_SHOWN:
            shown.append(_move(event))
    page: list[dict[str, Any]] = []
    for (_, text), table, key, pid_text in rows[offset : offset + limit]:
        pid = pid_from_str(pid_text)
        page.append(
            {
                "table": table,
                "key": text,
                "pid": str(pid),
                "node": pid[0],
                "home": home_node(key, live),
                "local": pid[0] == node.name,
                "behaviour": None,
                "moves": moves.get((table, key), []),
            }
        )
    await _behaviours(node, view, behaviours, page)
    body.update(total=total, read=len(records), truncated=total > len(records), processes=page)
    return body


async def _behaviours(
    node: Node, view: ClusterView, cache: BehaviourCache, page: list[dict[str, Any]]
) -> None:
    """Fill in each row's ``behaviour``: from the cache, this node, or its node."""

    async def one(row: dict[str, Any]) -> None:
        known = cache.get(row["pid"])
        if known is not None:
            row["behaviour"] = known
            return
        pid = parse_pid(row["pid"])
        if pid is None:
            return
        try:
            if row["local"]:
                info = node.info(pid)
                found = info.behaviour if info is not None else None
            elif row["node"] in node.nodes():
                answer = await view.ask(node, row["node"], ("process", row["pid"]))
                found = answer.get("behaviour") if isinstance(answer, dict) else None
            else:
                found = None
        except Exception:  # not answering: shown as unknown, asked again next time
            return
        if found is not None:
            row["behaviour"] = found
            cache.put(row["pid"], found)

    await asyncio.gather(*(one(row) for row in page))
