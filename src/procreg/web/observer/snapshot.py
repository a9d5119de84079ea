"""What the observer shows, as JSON-ready dicts: node counters and rates, tables,
pools, and pages of processes — built so that a node with 100,000+ processes costs a
page's worth of work per request, not the whole table's.

- A page of processes slices `Node.processes()` (pids, oldest first) and builds
  `Node.info` only for the pids on the page.
- A search must look at each process, so it scans at most `scan_limit` processes per
  request, starting at a cursor, and says how far it got (``scanned``,
  ``next_cursor``, ``truncated``); the page asks for the next stretch on demand.
- Session ids are secrets' halves: keys of the ``"sessions"`` table are shown (and
  searched) with the id cut to its first characters.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Hashable
from typing import Any, Final

from ...introspection import NodeStats
from ...node import Node
from ...pid import Pid

__all__ = [
    "MAX_PAGE",
    "SCAN_LIMIT",
    "RateMeter",
    "mask_key",
    "parse_pid",
    "pools",
    "process_page",
    "process_row",
    "search_processes",
    "tables",
]

MAX_PAGE: Final = 500
"""The most processes one page may hold."""

SCAN_LIMIT: Final = 20_000
"""The most processes one search request looks at."""

_SESSION_KEY = re.compile(r"\('session', '([A-Za-z0-9_-]{4})[A-Za-z0-9_-]*'\)")


def mask_key(text: str) -> str:
    """`text` (a key's repr) with session ids shortened to their first 4 characters."""
    return _SESSION_KEY.sub(r"('session', '\1…')", text)


def parse_pid(text: str) -> Pid | None:
    """A pid from its text form ``<node.creation.serial>`` (brackets optional)."""
    text = text.strip().removeprefix("<").removesuffix(">")
    node, _, rest = text.rpartition(".")
    node, _, creation = node.rpartition(".")
    if not node or not creation.isdigit() or not rest.isdigit():
        return None
    return Pid(node, int(creation), int(rest))


def process_row(node: Node, pid: Pid) -> dict[str, Any] | None:
    """One process as the observer shows it (None if it is gone)."""
    info = node.info(pid)
    if info is None:
        return None
    return {
        "pid": str(pid),
        "kind": info.kind,
        "keys": [mask_key(k) for k in info.keys],
        "groups": [mask_key(g) for g in info.groups],
        "mailbox": info.mailbox,
        "mailbox_peak": info.mailbox_peak,
        "max_mailbox": info.max_mailbox,
        "dropped": info.dropped,
        "handled": info.handled,
        "age": round(info.age, 3),
        "status": info.status,
        "links": info.links,
        "monitors": info.monitors,
    }


def process_page(node: Node, offset: int = 0, limit: int = 50) -> dict[str, Any]:
    """Processes `offset` to `offset + limit` (oldest first) of `node`."""
    limit = max(1, min(limit, MAX_PAGE))
    pids = node.processes()
    offset = max(0, min(offset, len(pids)))
    rows = []
    for pid in pids[offset : offset + limit]:
        row = process_row(node, pid)
        if row is not None:
            rows.append(row)
    return {"total": len(pids), "offset": offset, "limit": limit, "rows": rows}


def _haystack(row: dict[str, Any]) -> str:
    return " ".join([row["pid"], row["kind"], *row["keys"], *row["groups"]]).lower()


def search_processes(
    node: Node,
    query: str,
    cursor: int = 0,
    limit: int = 50,
    scan_limit: int = SCAN_LIMIT,
) -> dict[str, Any]:
    """Processes whose pid, kind, registered keys or groups contain `query` (case
    insensitive), scanning from position `cursor` of the process list until `limit`
    matches or `scan_limit` processes were looked at. ``next_cursor`` is where to go
    on (None when the scan reached the end)."""
    limit = max(1, min(limit, MAX_PAGE))
    needle = query.strip().lower()
    pids = node.processes()
    start = cursor = max(0, min(cursor, len(pids)))
    end = min(len(pids), start + max(1, scan_limit))
    rows: list[dict[str, Any]] = []
    while cursor < end and len(rows) < limit:
        row = process_row(node, pids[cursor])
        cursor += 1
        if row is not None and needle in _haystack(row):
            rows.append(row)
    return {
        "query": query,
        "total": len(pids),
        "cursor": start,
        "scanned": cursor - start,
        "next_cursor": cursor if cursor < len(pids) else None,
        "truncated": cursor < len(pids) and len(rows) < limit,
        "rows": rows,
    }


def tables(node: Node) -> list[dict[str, Any]]:
    """Every registry table with its size, largest first."""
    registry = node.registry
    sizes = sorted(
        ((registry.count(name), name) for name in registry.tables()), key=lambda r: (-r[0], r[1])
    )
    return [{"table": name, "count": size} for size, name in sizes]


async def pools(node: Node, limit: int = 100) -> list[dict[str, Any]]:
    """Registry groups (comet pools among them) with their member counts, largest
    first; at most `limit` rows."""
    registry = node.registry
    groups: list[Hashable] = registry.groups()
    sizes = []
    for group in groups[: limit * 10]:
        sizes.append((len(await registry.members(group)), mask_key(repr(group))))
    sizes.sort(key=lambda r: (-r[0], r[1]))
    return [{"group": name, "members": size} for size, name in sizes[:limit]]


class RateMeter:
    """Spawn, exit, crash and message rates from deltas of `Node.stats()`.

    Each `sample` call (the page polls about once a second) records the counters if
    the last sample is at least `min_interval` old; rates are the change over the
    last second or so, and `history` keeps per-interval rates for `keep` seconds.
    """

    COUNTERS: Final = ("spawned", "exited", "crashed", "handled")

    def __init__(self, min_interval: float = 0.5, keep: float = 120.0) -> None:
        self.min_interval = min_interval
        self.keep = keep
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, stats: NodeStats, now: float | None = None) -> dict[str, float]:
        """Record `stats` (from `Node.stats()`) and return the current rates per
        second: ``spawn``, ``exit``, ``crash``, ``messages``."""
        now = time.monotonic() if now is None else now
        samples = self._samples
        if not samples or now - samples[-1][0] >= self.min_interval:
            samples.append((now, {k: int(getattr(stats, k)) for k in self.COUNTERS}))
            while samples and now - samples[0][0] > self.keep:
                samples.popleft()
        latest_t, latest = samples[-1]
        base_t, base = samples[0]
        for t, counters in reversed(samples):
            if latest_t - t >= 1.0:
                base_t, base = t, counters
                break
        return self._rates(base_t, base, latest_t, latest)

    @staticmethod
    def _rates(t0: float, c0: dict[str, int], t1: float, c1: dict[str, int]) -> dict[str, float]:
        dt = t1 - t0
        if dt <= 0:
            return {"spawn": 0.0, "exit": 0.0, "crash": 0.0, "messages": 0.0}
        return {
            "spawn": round((c1["spawned"] - c0["spawned"]) / dt, 1),
            "exit": round((c1["exited"] - c0["exited"]) / dt, 1),
            "crash": round((c1["crashed"] - c0["crashed"]) / dt, 1),
            "messages": round((c1["handled"] - c0["handled"]) / dt, 1),
        }

    def history(self, points: int = 60) -> list[dict[str, float]]:
        """Rates between consecutive samples, oldest first, at most `points`."""
        samples = list(self._samples)[-(points + 1) :]
        return [self._rates(t0, c0, t1, c1) for (t0, c0), (t1, c1) in itertools.pairwise(samples)]
