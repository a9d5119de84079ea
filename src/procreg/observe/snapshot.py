"""What a node tells the observer about itself, as JSON-ready dicts: its figures,
tables and groups (`node_overview`), and pages of processes — built so that a node
with 100,000+ processes costs a page's worth of work per request, not the whole
table's.

- A page of processes slices `Node.processes()` (pids, oldest first) and builds
  `Node.info` only for the pids on the page.
- A search must look at each process, so it scans at most `scan_limit` processes per
  request, starting at a cursor, and says how far it got (``scanned``,
  ``next_cursor``, ``truncated``); the page asks for the next stretch on demand.
- Keys and groups are shown readably (`procreg.introspection.readable_key`:
  ``rooms: room / lobby``); session ids are secrets' halves, so keys and groups
  ``("session", sid)`` are shown (and searched) with the id cut to its first
  characters.

The same functions answer for the local node (the observer calls them directly) and
for other nodes of a cluster (their `procreg.observe.agent.ObserverAgent` calls them
there and sends the dicts back).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from typing import Any, Final

from ..cluster import Cluster
from ..introspection import NodeStats, readable_key
from ..node import Node
from ..pid import Pid
from ..process import behaviour

__all__ = [
    "MAX_PAGE",
    "SCAN_LIMIT",
    "RateMeter",
    "mask_key",
    "node_overview",
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

MAX_GROUPS: Final = 1000
"""The most groups one overview looks at (a node may have one per session)."""

_SESSION_KEY = re.compile(r"\('session', '([A-Za-z0-9_-]{4})[A-Za-z0-9_-]*'\)")


def mask_key(text: str) -> str:
    """`text` (a key's repr) with session ids shortened to their first 4 characters."""
    return _SESSION_KEY.sub(r"('session', '\1…')", text)


def parse_pid(text: str) -> Pid | None:
    """A pid from its text form ``<node.creation.serial>`` (brackets optional); None
    if `text` is not one (the numbers must be ASCII digits, at most 20 of them)."""
    text = text.strip().removeprefix("<").removesuffix(">")
    node, _, rest = text.rpartition(".")
    node, _, creation = node.rpartition(".")
    if not node or not _number(creation) or not _number(rest):
        return None
    return Pid(node, int(creation), int(rest))


def _number(text: str) -> bool:
    """True if `text` is a number `parse_pid` takes: 1 to 20 ASCII digits (``str.isdigit``
    alone takes ``"²"``, which ``int`` refuses)."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def keys_and_groups(node: Node, pid: Pid) -> tuple[list[str], list[str]]:
    """The readable registry keys (with their tables) and groups of a local process."""
    proc = node.local_process(pid)
    if proc is None:
        return [], []
    reg = proc._procreg_reg
    pairs = reg if type(reg) is set else ((reg,) if reg else ())
    keys = sorted(readable_key(key, table) for table, key in pairs)
    ext = proc._procreg_ext
    groups = sorted(readable_key(g) for g in ext.groups) if ext is not None and ext.groups else []
    return keys, groups


def process_row(node: Node, pid: Pid) -> dict[str, Any] | None:
    """One process as the observer shows it (None if it is gone): `Node.info`'s
    fields with readable ``keys`` and ``groups``, its ``node`` and its ``age`` in
    seconds."""
    info = node.info(pid)
    if info is None:
        return None
    keys, groups = keys_and_groups(node, pid)
    return {
        "pid": str(pid),
        "node": node.name,
        "kind": info.kind,
        "behaviour": info.behaviour,
        "keys": keys,
        "groups": groups,
        "mailbox": info.mailbox,
        "mailbox_peak": info.mailbox_peak,
        "max_mailbox": info.max_mailbox,
        "overflow": info.overflow,
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
    return {
        "node": node.name,
        "total": len(pids),
        "offset": offset,
        "limit": limit,
        "rows": rows,
    }


def _haystack(node: Node, pid: Pid) -> str | None:
    """What a search looks in for the process `pid` (None if it is gone): what its
    row shows as pid, kind, behaviour, keys and groups, without building the row."""
    proc = node.local_process(pid)
    if proc is None:
        return None
    keys, groups = keys_and_groups(node, pid)
    kind = behaviour(node, proc)
    cls = "Supervisor" if kind == "supervisor" else type(proc).__name__
    return " ".join([str(pid), cls, kind, *keys, *groups]).lower()


def search_processes(
    node: Node,
    query: str,
    cursor: int = 0,
    limit: int = 50,
    scan_limit: int = SCAN_LIMIT,
) -> dict[str, Any]:
    """Processes whose pid, kind, behaviour, registered keys or groups (as shown)
    contain `query` (case insensitive), scanning from position `cursor` of the
    process list until `limit` matches or `scan_limit` processes were looked at.
    ``next_cursor`` is where to go on (None when the scan reached the end)."""
    limit = max(1, min(limit, MAX_PAGE))
    needle = query.strip().lower()
    pids = node.processes()
    start = cursor = max(0, min(cursor, len(pids)))
    end = min(len(pids), start + max(1, scan_limit))
    rows: list[dict[str, Any]] = []
    while cursor < end and len(rows) < limit:
        pid = pids[cursor]
        cursor += 1
        hay = _haystack(node, pid)
        if hay is not None and needle in hay:
            row = process_row(node, pid)
            if row is not None:
                rows.append(row)
    return {
        "node": node.name,
        "query": query,
        "total": len(pids),
        "cursor": start,
        "scanned": cursor - start,
        "next_cursor": cursor if cursor < len(pids) else None,
        "truncated": cursor < len(pids) and len(rows) < limit,
        "rows": rows,
    }


def tables(node: Node) -> list[dict[str, Any]]:
    """Every registry table with the entries this node's processes hold in it,
    largest first."""
    registry = node.registry
    sizes = sorted(
        ((registry.count(name), name) for name in registry.tables()), key=lambda r: (-r[0], r[1])
    )
    return [{"table": name, "count": size} for size, name in sizes]


def pools(node: Node, limit: int = 100) -> list[dict[str, Any]]:
    """Groups (comet pools among them) with the number of this node's processes in
    each, largest first; at most `limit` rows, from the first `MAX_GROUPS` groups."""
    registry = node.registry
    sizes = [
        (registry.group_size(group), readable_key(group))
        for group in itertools.islice(registry.groups(), MAX_GROUPS)
    ]
    sizes.sort(key=lambda r: (-r[0], r[1]))
    return [{"group": name, "members": size} for size, name in sizes[:limit]]


def redis_cluster(node: Node) -> Cluster | None:
    """`node`'s Redis cluster side, or None (an embedded node, or one attached to
    another distribution such as the loopback, which has no such figures)."""
    cluster = node._cluster
    return cluster if isinstance(cluster, Cluster) else None


def _cluster_figures(node: Node) -> dict[str, Any] | None:
    cluster = redis_cluster(node)
    if cluster is None:
        return None
    counters = cluster.counters
    transport = cluster.transport
    return {
        "store_up": bool(cluster.store.up),
        "fencing": bool(cluster.fencing),
        "frames_sent": transport.sent_frames,
        "frames_received": transport.received_frames,
        "frames_dropped": sum(transport.dropped.values()),
        "claims_granted": counters.claims_granted,
        "claims_lost": counters.claims_lost,
        "claims_failed": counters.claims_failed,
        "cache_hits": counters.cache_hits,
        "store_lookups": counters.store_lookups,
        "renewal_ms": round(cluster.membership.renew_seconds * 1000, 2),
        "fences": cluster.fenced,
        "recoveries": cluster.recoveries,
        "failovers": cluster.failovers,
    }


def node_overview(node: Node) -> dict[str, Any]:
    """Everything the observer shows about `node` but its processes and tree:
    ``stats`` (`Node.stats`), ``tables`` and ``pools`` (this node's share),
    ``groups_total``, ``cluster`` (its cluster side's figures, None on an embedded
    node) and ``events`` (its recent cluster events, oldest first)."""
    cluster = redis_cluster(node)
    return {
        "stats": node.stats().as_dict(),
        "tables": tables(node),
        "pools": pools(node),
        "groups_total": len(node.registry.groups()),
        "cluster": _cluster_figures(node),
        "events": [dict(e, reporter=node.name) for e in cluster.counters.events]
        if cluster is not None
        else [],
    }


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

    def sample(
        self, stats: NodeStats | dict[str, Any], now: float | None = None
    ) -> dict[str, float]:
        """Record `stats` (from `Node.stats()`, or its ``as_dict()``) and return the
        current rates per second: ``spawn``, ``exit``, ``crash``, ``messages``."""
        now = time.monotonic() if now is None else now
        figures = stats if isinstance(stats, dict) else stats.as_dict()
        samples = self._samples
        if not samples or now - samples[-1][0] >= self.min_interval:
            samples.append((now, {k: int(figures[k]) for k in self.COUNTERS}))
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

    def history(self, points: int = 60, now: float | None = None) -> list[dict[str, float]]:
        """Rates between consecutive samples, oldest first, at most `points`; each
        with ``ago``: seconds from its end to `now` (default: the latest sample)."""
        samples = list(self._samples)[-(points + 1) :]
        if not samples:
            return []
        end = samples[-1][0] if now is None else now
        return [
            {**self._rates(t0, c0, t1, c1), "ago": round(end - t1, 1)}
            for (t0, c0), (t1, c1) in itertools.pairwise(samples)
        ]
