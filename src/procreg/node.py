"""The node users construct: `Node`, the composition root.

A `Node` is a `Kernel` (the runtime core: processes, scheduling, signals) that, when
it starts, wires in its collaborators: its registry backend (a `LocalBackend`, or the
cluster's `RedisBackend` when given a cluster URL), the cluster itself (membership,
transport, the distribution layer for remote pids), and its Nitrogen registry
handler. It is an async context manager::

    async with procreg.Node("web1") as node:
        pid = procreg.spawn(body)

Everything a process does (send, call, link, ...) is a method of the kernel; the
module-level functions in `procreg` find the current node and delegate. This module
sits above the registry and the cluster (see docs/INTERNALS.md, "Layers"), so that
the runtime below imports neither.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import kernel, nitrogen
from .deployment import warn_if_several_workers
from .kernel import DEFAULT_BATCH, Kernel, _node_var
from .options import check_bound, check_timeout
from .registry import LocalBackend
from .waits import check_wait, serving_task, started_for, waiting_on

if TYPE_CHECKING:
    from .cluster import Cluster
    from .seams import Attached, Carrier

__all__ = [
    "Node",
    "_node_var",
    "check_bound",
    "check_timeout",
    "check_wait",
    "current_node",
    "serving_task",
    "started_for",
    "waiting_on",
]

log = logging.getLogger("procreg")


class Node(Kernel):
    """A procreg node: runs processes on the current event loop.

    ``cluster=None`` (and ``PROCREG_CLUSTER`` unset) is the embedded, single-machine
    default; ``cluster="redis://host:port/db"`` joins the cluster kept in that Redis (or
    Valkey): ``secret`` signs its frames (else ``PROCREG_SECRET``, else a 0600 file),
    ``lease`` is the membership lease in seconds, ``on_conflict`` decides registry
    conflicts after a store data loss (see `procreg.cluster`). ``gc_policy`` (default
    on; env ``PROCREG_GC_POLICY=0`` turns it off) tunes Python's cyclic GC for many
    long-lived processes: see `procreg.gcpolicy`.
    ``batch`` is how many messages a server handles before others get a turn.
    ``max_mailbox`` (default None: unbounded) bounds the mailbox of every process
    started on this node that sets no bound of its own, and ``overflow`` (``"drop"``,
    the default, or ``"exit"``) is the default policy when a bounded mailbox is full;
    see `procreg.spawn`. ``dist`` (instead of ``cluster``) is a distribution to join
    given as an object (`seams.Carrier`): `procreg.testing.LoopbackNet` joins nodes of
    one event loop into an in-memory cluster, for tests.

    >>> import asyncio, procreg
    >>> async def main():
    ...     async with procreg.Node("demo") as node:
    ...         return node.name
    >>> asyncio.run(main())
    'demo'
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        cluster: str | None = None,
        secret: str | bytes | None = None,
        batch: int = DEFAULT_BATCH,
        gc_policy: bool | None = None,
        registry_handler: Any = None,
        handler_config: dict[str, Any] | None = None,
        lease: float = 3.0,
        on_conflict: Any = None,
        max_mailbox: int | None = None,
        overflow: str = "drop",
        dist: Carrier | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name or "\t" in name):
            raise ValueError(f"node name must be a non-empty string without tabs, got {name!r}")
        if dist is not None and cluster is not None:
            raise ValueError("give a node cluster= or dist=, not both")
        if cluster is None and dist is None:
            cluster = os.environ.get("PROCREG_CLUSTER") or None
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        check_timeout(lease, "lease")
        check_bound(max_mailbox, overflow)
        if cluster is not None:
            from .cluster import default_node_name  # (redis is imported only if needed)

            name = name or default_node_name()
        if gc_policy is None:
            gc_policy = os.environ.get("PROCREG_GC_POLICY", "1") not in ("0", "false", "no")
        super().__init__(
            name or "local",
            batch=batch,
            gc_policy=gc_policy,
            max_mailbox=max_mailbox,
            overflow=overflow,
        )
        self.cluster = cluster
        self._secret = secret
        self._lease = lease
        self._on_conflict = on_conflict
        self._cluster: Cluster | Attached | None = None  # when clustered
        self._carrier = dist  # a distribution given as an object (see `start`)
        self._registry_handler = registry_handler
        self.handler_config: dict[str, Any] = dict(handler_config or {})
        self.handler: Any = None

    # -- lifecycle ----------------------------------------------------------------
    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the node on the running loop (``async with`` does this for you): join
        the cluster if given one, make the registry backend, ``init`` the registry
        handler."""
        self._begin()
        if self._carrier is not None:
            # a distribution given as an object (`seams.Carrier`, such as
            # `procreg.testing.LoopbackNet`) gives the node its creation, its
            # `Distribution` and its registry backend; `stop` leaves it
            try:
                attached = await self._carrier.attach(self)
            except BaseException:
                self._unbegin()
                raise
            self.creation = attached.creation
            self._cluster = attached
            self._remote = attached.remote
            self.registry = attached.registry
        elif self.cluster is not None:
            from .cluster import Cluster

            cluster = Cluster(
                self,
                self.cluster,
                secret=self._secret,
                lease=self._lease,
                on_conflict=self._on_conflict,
            )
            try:
                self.creation = await cluster.start()
            except BaseException:
                await cluster.store.close()
                self._unbegin()
                raise
            self._cluster = cluster
            self._remote = cluster.remote
            self._lease_guard = cluster.membership.check
            self._after_drain = cluster.transport.flush_now
            self.registry = cluster.backend
        else:
            self.registry = LocalBackend(self)
            warn_if_several_workers(self.name)  # one of several server workers? (once)
        handler = (
            self._registry_handler
            if self._registry_handler is not None
            else nitrogen.NprocregHandler()
        )
        self.handler = handler
        try:
            await nitrogen.start_handler(self, handler, self.handler_config)
        except BaseException:
            # not started: leave the cluster joined above (its heartbeat would keep
            # the node listed as live) and stop being the current node
            await self._leave_cluster()
            self._deadlines.close()
            self._unbegin()
            raise
        self._open()

    async def _leave_cluster(self) -> None:
        """Leave the cluster or distribution joined by `start`, if any (its error
        logged, not raised)."""
        cluster, self._cluster = self._cluster, None
        self._remote = None
        self._lease_guard = None
        self._after_drain = None
        if cluster is not None:
            try:
                await cluster.stop()
            except Exception:
                log.exception("leaving the cluster failed")

    async def stop(self, timeout: float = 5.0) -> None:
        """End every process with reason ``"shutdown"`` (supervision trees first,
        top-down; then the rest, newest first), wait up to `timeout` seconds for their
        ``terminate`` callbacks, then leave the cluster and stop the node."""
        if not self._running:
            return
        await self._end_processes(timeout)
        if self._cluster is not None:
            try:
                await self._cluster.stop()
            except Exception:
                log.exception("leaving the cluster failed")
        self._deadlines.close()
        try:
            await nitrogen.finish_handler(self)
        finally:
            self._close()

    def nodes(self) -> list[str]:
        """The live nodes of the cluster (this one included), sorted; just this one
        on the embedded default."""
        if self._cluster is None:
            return [self.name]
        return self._cluster.live_nodes()


current_node = cast("Callable[[], Node]", kernel.current_node)
"""`kernel.current_node` (the same function), typed as returning a `Node`: every
node that runs is one."""
