"""`ClusterCounters`: what one node's cluster side counts, for metrics and the
observer, and its recent cluster events.

The cluster code increments these with one-line statements (a plain integer
increment, or a call on rare paths); nothing here is read on a hot path. Counters
that the cluster's parts already keep are not repeated here: frames sent, received
and dropped (`Transport.sent_frames`, ``received_frames``, ``dropped``), lease
renewals (`Membership.renewals`), fences, recoveries and failovers (`Cluster.fenced`,
``recoveries``, ``failovers``), registry conflicts (`RedisBackend.conflicts`).

`procreg.web.metrics` exports them all (see docs/guide/observability.md).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final

__all__ = ["RENEWAL_BUCKETS", "ClusterCounters", "ClusterEvent"]

RENEWAL_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the lease renewal latency histogram's buckets; the last,
implicit bucket is +Inf."""

EVENTS_KEPT: Final = 200
"""How many recent cluster events a node keeps (`ClusterCounters.events`)."""

ClusterEvent = dict[str, Any]
"""One cluster event: ``time`` (Unix seconds), ``kind`` (``"join"``, ``"leave"``,
``"up"``, ``"down"``, ``"fence"``, ``"rejoin"``, ``"recovery"``, ``"failover"``; for
cluster-scoped processes ``"handoff"`` (handed off by a stopping node), ``"takeover"``
(taken over here) and ``"restart"`` (a dead node's started here)),
``node`` (the node it is about) and ``detail`` (text)."""


class ClusterCounters:
    """Counters of one node's cluster side, from its start (counts), and its last
    `EVENTS_KEPT` cluster events."""

    __slots__ = (
        "cache_hits",
        "claims_failed",
        "claims_granted",
        "claims_lost",
        "events",
        "invalidations",
        "nodes_down",
        "nodes_up",
        "renewal_buckets",
        "renewal_count",
        "renewal_sum",
        "store_lookups",
    )

    def __init__(self) -> None:
        self.claims_granted = 0
        """Keys claimed in the store for a process of this node (count)."""
        self.claims_lost = 0
        """Claims that found the key held by another live process (count)."""
        self.claims_failed = 0
        """Claims that got no answer: the store was unreachable, refused (a fenced
        node, a changed epoch) or too few replicas confirmed (count)."""
        self.cache_hits = 0
        """Lookups of other nodes' keys answered from the local cache (count)."""
        self.store_lookups = 0
        """Lookups that went to the store (count)."""
        self.invalidations = 0
        """Registry change notices received (``inval`` channel), each of which drops
        the key from the lookup cache (count)."""
        self.nodes_up = 0
        """Other nodes (incarnations) seen coming up (count)."""
        self.nodes_down = 0
        """Other nodes (incarnations) seen going down (count)."""
        self.renewal_buckets = [0] * (len(RENEWAL_BUCKETS) + 1)
        """Successful lease renewals by round trip, per bucket of `RENEWAL_BUCKETS`
        (not cumulative; the last is over the largest bound)."""
        self.renewal_sum = 0.0
        """Sum of the successful lease renewals' round trips (seconds)."""
        self.renewal_count = 0
        """Successful lease renewals (count)."""
        self.events: deque[ClusterEvent] = deque(maxlen=EVENTS_KEPT)
        """The last cluster events, oldest first (see `ClusterEvent`)."""

    def claimed(self, count: int, results: list[Any] | None) -> None:
        """Count the answers of one claim script call for `count` keys: `results`
        holds one answer per key (falsy: granted, else the holder), or is None if
        the call failed them all."""
        if results is None:
            self.claims_failed += count
            return
        lost = sum(1 for r in results if r)
        self.claims_lost += lost
        self.claims_granted += len(results) - lost

    def renewed(self, seconds: float) -> None:
        """Record a successful lease renewal that took `seconds` (round trip)."""
        self.renewal_count += 1
        self.renewal_sum += seconds
        i = 0
        for bound in RENEWAL_BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.renewal_buckets[i] += 1

    def event(self, kind: str, node: str, detail: str = "") -> None:
        """Record a cluster event (see `ClusterEvent`); ``up``/``down`` also count."""
        if kind == "up":
            self.nodes_up += 1
        elif kind == "down":
            self.nodes_down += 1
        self.events.append({"time": time.time(), "kind": kind, "node": node, "detail": detail})
