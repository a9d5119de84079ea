"""Prometheus metrics of procreg nodes, with ``prometheus_client`` (the ``metrics``
extra: ``pip install 'procreg[metrics]'``).

Three ways in, from the most to the least ready-made:

- `MetricsApp`, an ASGI application to mount at ``/metrics`` in Starlette or FastAPI
  (the demo does), or its route, `metrics_route`::

      from procreg.web.metrics import metrics_route
      app.routes.append(metrics_route())        # GET /metrics (Starlette, FastAPI)

  It serves the node of the application (`procreg.web.lifespan`), plus what
  ``prometheus_client``'s default registry holds (the process and GC figures and
  your own metrics), in the text format or OpenMetrics, as the scraper asks.
- `exposition(node)` -> ``(body, content_type)``, for any other server (aiohttp, a
  raw ASGI or WSGI handler);
- `ProcregCollector`, a ``prometheus_client`` collector:
  ``REGISTRY.register(ProcregCollector())`` and ``prometheus_client``'s own
  ``start_http_server`` serves procreg's figures next to yours.

Every figure is read from the node's counters when the scraper asks (the runtime
keeps plain integers; nothing here runs on a hot path). Counts are since the node
started; every metric has a ``node`` label (the node's name), so that the figures
of the nodes of a cluster add up with ``sum by (...)``. The list, with types and
labels, is `METRICS` (and docs/guide/observability.md).

The per-process figures (processes by behaviour, mailbox lengths, the high-water
mark) look at every process: about 30 ms per 100,000 processes per scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..cluster.counters import RENEWAL_BUCKETS
from ..errors import NoNode
from ..introspection import BEHAVIOURS, EXIT_CLASSES
from ..kernel import _running
from ..node import Node
from ..observe.snapshot import redis_cluster
from .context import node_from_scope

__all__ = ["METRICS", "MetricsApp", "ProcregCollector", "exposition", "metrics_route"]

METRICS: Final[dict[str, tuple[str, tuple[str, ...], str]]] = {
    # name (as exposed): (type, labels, help)
    "procreg_processes": (
        "gauge",
        ("node", "behaviour"),
        "Processes alive now, by behaviour (coroutine, server, supervisor, pi, session, "
        "connection).",
    ),
    "procreg_processes_spawned_total": ("counter", ("node",), "Processes started."),
    "procreg_process_exits_total": (
        "counter",
        ("node", "reason"),
        "Processes ended, by class of exit reason (normal, shutdown, kill, idle, "
        "noconnection, overload, fenced, conflict, exception, other).",
    ),
    "procreg_process_crashes_total": (
        "counter",
        ("node",),
        "Processes ended by an exception raised in their own code (crash reports).",
    ),
    "procreg_supervisor_restarts_total": (
        "counter",
        ("node",),
        "Children restarted by supervisors.",
    ),
    "procreg_messages_handled_total": (
        "counter",
        ("node",),
        "Messages handled by processes (casts, calls and other messages).",
    ),
    "procreg_calls_handled_total": ("counter", ("node",), "Calls handled by servers."),
    "procreg_mailbox_messages": (
        "gauge",
        ("node",),
        "Messages waiting in all mailboxes now.",
    ),
    "procreg_mailbox_high_water_messages": (
        "gauge",
        ("node",),
        "The largest mailbox high-water mark among the live processes.",
    ),
    "procreg_mailbox_dropped_messages_total": (
        "counter",
        ("node",),
        "Messages refused by full (bounded) mailboxes.",
    ),
    "procreg_run_queue_processes": (
        "gauge",
        ("node",),
        "Processes waiting for their turn to run now.",
    ),
    "procreg_registry_entries": (
        "gauge",
        ("node", "table"),
        "Registry entries held by this node's processes, per table.",
    ),
    "procreg_registry_groups": (
        "gauge",
        ("node",),
        "Groups this node's processes belong to.",
    ),
    "procreg_node_uptime_seconds": ("gauge", ("node",), "Seconds since the node started."),
    "procreg_cluster_live_nodes": (
        "gauge",
        ("node",),
        "Live nodes of the cluster as this node sees them (itself included).",
    ),
    "procreg_cluster_store_up": (
        "gauge",
        ("node",),
        "1 while the cluster store is reachable from this node, else 0.",
    ),
    "procreg_cluster_claims_total": (
        "counter",
        ("node", "result"),
        "Keys claimed in the cluster store: granted, lost (held by another live "
        "process) or failed (no answer, refused, or not replicated).",
    ),
    "procreg_cluster_lookups_total": (
        "counter",
        ("node", "source"),
        "Lookups of other nodes' keys, by where the answer came from: cache or store.",
    ),
    "procreg_cluster_invalidations_total": (
        "counter",
        ("node",),
        "Registry change notices received (each drops the key from the lookup cache).",
    ),
    "procreg_cluster_frames_sent_total": ("counter", ("node",), "Frames sent to other nodes."),
    "procreg_cluster_frames_received_total": (
        "counter",
        ("node",),
        "Frames received from other nodes and accepted.",
    ),
    "procreg_cluster_frames_dropped_total": (
        "counter",
        ("node", "reason"),
        "Frames (or items) dropped, by reason: store_down, backlog, no_receiver, "
        "bad signature, stale, replay, undecodable, ...",
    ),
    "procreg_cluster_lease_renewal_seconds": (
        "histogram",
        ("node",),
        "Round trip of successful lease renewals.",
    ),
    "procreg_cluster_fences_total": (
        "counter",
        ("node",),
        "Times this node fenced itself (found its lease gone or past its deadline).",
    ),
    "procreg_cluster_recoveries_total": (
        "counter",
        ("node",),
        "Times this node re-registered after the store lost its data.",
    ),
    "procreg_cluster_failovers_total": (
        "counter",
        ("node",),
        "Changes of the store's primary this node noticed.",
    ),
    "procreg_cluster_conflicts_total": (
        "counter",
        ("node",),
        "Registry conflicts found while re-registering.",
    ),
    "procreg_cluster_node_events_total": (
        "counter",
        ("node", "event"),
        "Other nodes (incarnations) seen going up or down.",
    ),
    "procreg_cluster_direct_links": (
        "gauge",
        ("node", "direction"),
        "Direct connections to (out) and from (in) other nodes that are up (listen=).",
    ),
    "procreg_cluster_direct_frames_total": (
        "counter",
        ("node", "direction"),
        "Frames sent and received over direct connections (also in frames_sent/received).",
    ),
    "procreg_cluster_direct_sessions_total": (
        "counter",
        ("node",),
        "Direct connections to other nodes that completed the handshake (sessions).",
    ),
    "procreg_cluster_direct_losses_total": (
        "counter",
        ("node",),
        "Direct connections lost (closed, silent or backlogged): each a disconnection.",
    ),
    "procreg_cluster_direct_refused_total": (
        "counter",
        ("node",),
        "Direct connections refused (bad handshake, old incarnation, fenced).",
    ),
}
"""Every metric `ProcregCollector` exports: name -> (type, labels, help). The
``procreg_cluster_*`` ones only for a node in a cluster."""


def _family(name: str) -> Any:
    kind, labels, text = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), text, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


def _scan(node: Node) -> tuple[dict[str, int], int, int]:
    """Processes by behaviour, messages waiting, and the largest high-water mark."""
    named = node.kinds  # (supervisors: "Supervisor")
    for _ in range(3):  # (another thread's scrape: the loop may change the table)
        try:
            procs = list(node._procs.values())
            break
        except RuntimeError:
            continue
    else:
        procs = []
    kinds: dict[str, int] = dict.fromkeys(BEHAVIOURS, 0)
    waiting = peak = 0
    for proc in procs:
        kind = named.get(proc._procreg_pid, "").lower() or proc._procreg_kind
        kinds[kind] = kinds.get(kind, 0) + 1
        mail = proc._procreg_mail
        if mail:
            n = len(mail)
            waiting += n
            if n > peak:
                peak = n
        if proc._procreg_peak > peak:
            peak = proc._procreg_peak
    kinds["coroutine"] += kinds.pop("process", 0)
    return kinds, waiting, peak


def node_metrics(node: Node) -> list[Metric]:
    """The metric families of one node (see `METRICS`)."""
    name = node.name
    out: list[Metric] = []

    def one(metric: str, value: float, *labels: str) -> None:
        family = _family(metric)
        family.add_metric([name, *labels], value)
        out.append(family)

    kinds, waiting, peak = _scan(node)
    family = _family("procreg_processes")
    for kind, count in kinds.items():
        family.add_metric([name, kind], count)
    out.append(family)
    one("procreg_processes_spawned_total", node.spawned)
    family = _family("procreg_process_exits_total")
    exits = dict(node.exits)
    exits["kill"] = exits.get("kill", 0) + node.killed
    family.add_metric([name, "normal"], max(0, node.exited - sum(exits.values())))
    for reason in EXIT_CLASSES[1:]:
        family.add_metric([name, reason], exits.get(reason, 0))
    out.append(family)
    one("procreg_process_crashes_total", node.crashed)
    one("procreg_supervisor_restarts_total", node.restarts)
    one("procreg_messages_handled_total", node.handled)
    one("procreg_calls_handled_total", node.calls)
    one("procreg_mailbox_messages", waiting)
    one("procreg_mailbox_high_water_messages", peak)
    one("procreg_mailbox_dropped_messages_total", node.dropped)
    one("procreg_run_queue_processes", len(node._runq))
    registry = node.registry
    family = _family("procreg_registry_entries")
    if registry is not None:
        for table in sorted(registry.tables(), key=repr):
            family.add_metric([name, str(table)], registry.count(table))
    out.append(family)
    one("procreg_registry_groups", len(registry.groups()) if registry is not None else 0)
    if node.running:
        one("procreg_node_uptime_seconds", node._loop.time() - node.started_at)
    cluster = redis_cluster(node)
    if cluster is not None:
        out += cluster_metrics(name, cluster)
    return out


def cluster_metrics(name: str, cluster: Any) -> list[Metric]:
    """The ``procreg_cluster_*`` families of the node `name` (`cluster` is its
    `procreg.cluster.Cluster`)."""
    out: list[Metric] = []
    counters = cluster.counters
    transport = cluster.transport

    def one(metric: str, value: float) -> None:
        family = _family(metric)
        family.add_metric([name], value)
        out.append(family)

    def labelled(metric: str, values: Iterable[tuple[str, float]]) -> None:
        family = _family(metric)
        for label, value in values:
            family.add_metric([name, label], value)
        out.append(family)

    one("procreg_cluster_live_nodes", len(cluster.membership.live))
    one("procreg_cluster_store_up", 1 if cluster.store.up else 0)
    labelled(
        "procreg_cluster_claims_total",
        [
            ("granted", counters.claims_granted),
            ("lost", counters.claims_lost),
            ("failed", counters.claims_failed),
        ],
    )
    labelled(
        "procreg_cluster_lookups_total",
        [("cache", counters.cache_hits), ("store", counters.store_lookups)],
    )
    one("procreg_cluster_invalidations_total", counters.invalidations)
    one("procreg_cluster_frames_sent_total", transport.sent_frames)
    one("procreg_cluster_frames_received_total", transport.received_frames)
    labelled("procreg_cluster_frames_dropped_total", sorted(dict(transport.dropped).items()))
    family = _family("procreg_cluster_lease_renewal_seconds")
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(
        (*RENEWAL_BUCKETS, float("inf")), counters.renewal_buckets, strict=True
    ):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    family.add_metric([name], buckets, counters.renewal_sum)
    out.append(family)
    one("procreg_cluster_fences_total", cluster.fenced)
    one("procreg_cluster_recoveries_total", cluster.recoveries)
    one("procreg_cluster_failovers_total", cluster.failovers)
    one("procreg_cluster_conflicts_total", cluster.backend.conflicts)
    labelled(
        "procreg_cluster_node_events_total",
        [("up", counters.nodes_up), ("down", counters.nodes_down)],
    )
    direct = cluster.direct
    if direct is not None:
        counts = direct.counts
        labelled(
            "procreg_cluster_direct_links",
            [
                ("out", sum(1 for link in direct.out.values() if link.up)),
                ("in", sum(1 for link in direct.inbound.values() if link.up)),
            ],
        )
        labelled(
            "procreg_cluster_direct_frames_total",
            [("sent", counts["frames_out"]), ("received", counts["frames_in"])],
        )
        one("procreg_cluster_direct_sessions_total", counts["sessions"])
        one("procreg_cluster_direct_losses_total", counts["lost"])
        one("procreg_cluster_direct_refused_total", counts["refused"])
    return out


def _merge(families: Iterable[Metric]) -> Iterator[Metric]:
    """One family per name (the samples of several nodes together), in first-seen
    order: the text format allows each name once."""
    merged: dict[str, Metric] = {}
    for family in families:
        found = merged.get(family.name)
        if found is None:
            merged[family.name] = family
        else:
            found.samples.extend(family.samples)
    return iter(merged.values())


class ProcregCollector(Collector):
    """A ``prometheus_client`` collector of procreg's metrics (`METRICS`).

    `node`: the node to report on; None (the default) reports on every node running
    in this interpreter when the scraper asks. Safe to collect from another thread
    (``prometheus_client.start_http_server``): it only reads counters.
    """

    def __init__(self, node: Node | None = None) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        """The metric families, as ``prometheus_client`` asks for them."""
        nodes = (
            [self.node] if self.node is not None else [n for n in _running if isinstance(n, Node)]
        )
        return _merge(f for node in nodes if node.running for f in node_metrics(node))


class _Both:
    """procreg's figures and the default registry's, as one collector."""

    def __init__(self, node: Node | None, registry: Any) -> None:
        self.parts = [ProcregCollector(node)] + ([registry] if registry is not None else [])

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def exposition(
    node: Node | None = None, accept: str | None = None, registry: Any = REGISTRY
) -> tuple[bytes, str]:
    """The metrics of `node` (None: every running node) followed by those of
    `registry` (``prometheus_client``'s default one unless told otherwise; None for
    procreg's alone), encoded as `accept` (an HTTP Accept header) asks: OpenMetrics
    or the Prometheus text format. Returns ``(body, content_type)``."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Both(node, registry)), content_type


class MetricsApp:
    """``GET /metrics`` as an ASGI application: the metrics of the application's
    node (`procreg.web.lifespan`'s, else the current node) and of
    ``prometheus_client``'s default registry (`registry=None` leaves it out), as
    the scraper's Accept header asks. ``app.mount("/metrics", MetricsApp())``;
    `node` fixes the node to report on. Answers 503 while no node runs."""

    def __init__(self, node: Node | None = None, registry: Any = REGISTRY) -> None:
        self.node = node
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection (HTTP GET or HEAD)."""
        if scope["type"] != "http":
            return
        status, headers, body = 200, [], b""
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"GET only\n"
            headers = [(b"allow", b"GET, HEAD")]
        else:
            try:
                node = self.node if self.node is not None else node_from_scope(scope)
            except NoNode:
                status, body = 503, b"no procreg node is running\n"
            else:
                accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
                body, content_type = exposition(node, accept, self.registry)
                headers = [(b"content-type", content_type.encode())]
        if status != 200:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        headers += [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def metrics_route(path: str = "/metrics", **options: Any) -> Route:
    """A Starlette route serving `MetricsApp` (made with `options`) at exactly `path`
    (``app.mount`` would serve it at ``path + "/"``): add it with
    ``app.routes.append(metrics_route())`` (Starlette) or
    ``app.router.routes.append(metrics_route())`` (FastAPI)."""
    return Route(path, MetricsApp(**options), methods=["GET", "HEAD"])
