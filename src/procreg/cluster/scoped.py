"""Cluster-scoped processes: one instance cluster-wide, restarted by a surviving node
when its node dies or fences itself, handed off to a new home on a graceful stop.

A process started with ``scope="cluster"`` (`procreg.scope`) is registered as usual
(its key claimed before its ``init`` runs, so the loser of any race never runs it),
and its *record* is kept in the store, three hashes under one field per key
(``canon((table, key))``):

- ``scoped:pid``: the pid of the current instance (``node\\tcreation\\tserial``);
- ``scoped:spec``: how to start it again, ``("gos", factory, args, meta,
  idle_timeout)`` or ``("child", supervisor_name, child_spec)``, pickled and signed
  (HMAC-SHA256 under the cluster secret);
- ``scoped:state``: the state its last incarnation handed off (pickled, signed), until
  a new one has started with it.

- **Failover.** Each node scans ``scoped:pid`` when a node goes down, soon after it
  joins, and every ``2 x lease``: a record whose pid's node incarnation is not live is an
  orphan, and its key's home node among the live ones (rendezvous hashing) starts it
  again from the spec — through the supervisor of the same name for a child. The
  claim decides if two nodes disagree on the home: the loser never runs ``init``.
- **Handoff** (`handoff_all`, the first of the node's shutdown hooks): see docs/INTERNALS.md,
  *Cluster-scoped processes*, for the protocol step by step, its guarantee and its
  limits.
- **Requests between nodes** (start this key there, take these keys over) travel as
  remote spawns (`Remote.spawn`) in the reserved table `SERVICE_TABLE`, which the
  cluster routes to `Scoped.serve` instead of the registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final

from ..errors import AlreadyRegistered, ClusterUnavailable, NoProcess, ProcregError
from ..messages import Down
from ..pid import Pid
from ..registry import spawn_for
from ..scope import Takeover, reset_takeover, set_takeover
from ..supervisor import AlreadyPresent, AlreadyStarted, Supervisor
from .backend import home_node
from .codec import canon, pid_from_str, pid_str, uncanon
from .records import Records, portable
from .relay import Forwarding
from .store import stop_tasks

if TYPE_CHECKING:
    from . import Cluster

__all__ = ["SERVICE_TABLE", "HandoffEvent", "NotTakenOver", "Scoped", "portable", "service"]

log = logging.getLogger("procreg.cluster")

SERVICE_TABLE: Final = "procreg.scoped"
"""Remote spawns in this table are requests to `Scoped.serve` on the receiving node."""


def service(*args: Any) -> Any:
    """Names the requests of `SERVICE_TABLE` (a remote spawn needs a factory that
    every node imports by name); never called."""
    raise RuntimeError("procreg.cluster.scoped.service is a marker, not a factory")


class NotTakenOver(ProcregError):
    """A node asked to start a cluster-scoped process again (a takeover, a failover)
    found its key held by `holder`, a process it did not start: the instance being
    replaced (its release has not reached the store) or, for a takeover, any
    instance elsewhere. Never answered as the new instance: the node handing off
    keeps the state in the store (failover starts it) and fails what waited for it."""

    def __init__(self, key: Hashable, holder: Pid) -> None:
        super().__init__(f"cluster-scoped {key!r} is still held by {holder!r}")
        self.key = key
        self.holder = holder


class HandoffEvent:
    """One move of a cluster-scoped process, for the observer: `kind` is
    ``"takeover"`` (handed off on a graceful stop) or ``"failover"``."""

    __slots__ = ("at", "key", "kind", "source", "table", "target")

    def __init__(
        self, kind: str, table: str, key: Hashable, source: str, target: str | None
    ) -> None:
        self.at = time.time()
        self.kind = kind
        self.table = table
        self.key = key
        self.source = source
        self.target = target

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind,
            "table": self.table,
            "key": self.key,
            "from": self.source,
            "to": self.target,
        }


class Scoped:
    """The cluster side of cluster-scoped processes on one node (`ScopedHooks`)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.node = cluster.node
        self.store = cluster.store
        self.local: dict[tuple[str, Hashable], Pid] = {}  # our scoped processes
        self._pending: dict[tuple[str, Hashable], Takeover] = {}
        self.records = Records(cluster.store, cluster.key)
        self._watcher: Pid | None = None
        self._watched: dict[Pid, str] = {}
        self._scan: asyncio.Task[None] | None = None
        self._scanning = False
        self._rescan = False
        self._stopped = False
        self._kicks: set[asyncio.Task[int]] = set()
        # frames from other nodes for our handed-off pids go to their new instance
        self.forwarding = Forwarding(cluster)
        self.history: deque[HandoffEvent] = deque(maxlen=500)
        self.failovers = 0  # processes this node started again after their node died
        self.takeovers = 0  # processes this node took over on a graceful stop
        self.handed_off = 0  # processes this node handed off

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """After the join: scan for orphans soon, then every ``2 x lease``."""
        self._scan = asyncio.get_running_loop().create_task(self._scan_loop())
        self.cluster.down_events.append(self._node_down)

    async def stop(self) -> None:
        """Stop scanning (a scan in flight is cancelled, even one a store call keeps
        waiting) and let the last record writes go."""
        self._stopped = True
        await stop_tasks(self._scan, *self._kicks)
        self._scan = None
        await self.records.drain()

    # -- starting --------------------------------------------------------------------------
    async def get_or_spawn(
        self,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str,
        placement: str,
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
    ) -> tuple[Pid, bool]:
        """`procreg.get_or_spawn(..., scope="cluster")`: the live instance, or one
        started here (``placement="local"``) or on the key's home node (``"hash"``)."""
        node = self.node
        found = node.registry.peek(key, table)
        if isinstance(found, Pid):
            return found, False
        record = ("gos", factory, args, meta, idle_timeout)
        blob = self.records.sign(portable("a factory and arguments", record))
        if placement == "hash":
            home = home_node(key, self.cluster.live_nodes())
            if home != node.name:
                pid: Pid = await self._request(home, ("start", table, key, blob))
                return pid, False
        # a state handed off while the key was free (between the old instance's
        # release and its new home's claim): whoever wins the claim starts with it
        _, state = await self.records.read(canon((table, key)), spec=False)
        tko = Takeover("takeover", "?", self.records.open(state)) if state is not None else None
        token = set_takeover(tko)
        try:
            pid, started = await spawn_for(
                node, key, factory, args, table, "local", meta, idle_timeout
            )
        finally:
            reset_takeover(token)
        if started:  # returned once recorded: from then on failover covers it
            await self._record(table, key, pid, blob)
        return pid, started

    def prepare(self, record: tuple[Any, ...]) -> bytes:
        """`record` pickled and signed, before anything starts (`TypeError` if
        another node could not rebuild it)."""
        return self.records.sign(portable("a factory and arguments", record))

    async def started(self, table: str, key: Hashable, pid: Pid, prepared: bytes) -> None:
        """A scoped process started here (a supervisor child): record it; returns
        once the record is in the store (from then on failover covers it)."""
        await self._record(table, key, pid, prepared)

    def pending_takeover(self, table: str, key: Hashable) -> Takeover | None:
        return self._pending.pop((table, key), None)

    def _record(self, table: str, key: Hashable, pid: Pid, blob: bytes) -> asyncio.Future[None]:
        """Record a process started here; done once the record is in the store."""
        self.local[(table, key)] = pid
        self._watch(pid, canon((table, key)))
        return self.records.write(canon((table, key)), pid_str(pid), blob)

    # -- watching our scoped processes ----------------------------------------------------
    def _watch(self, pid: Pid, field: str) -> None:
        node = self.node
        if self._watcher is None or not node.is_alive(self._watcher):
            self._watcher = node.spawn(self._watch_body)
        self._watched[pid] = field
        node.send(self._watcher, ("watch", pid))

    async def _watch_body(self) -> None:
        from ..primitives import receive

        node = self.node
        while True:
            msg = await receive()
            if isinstance(msg, tuple) and msg[0] == "watch":
                node.monitor(msg[1])
            elif isinstance(msg, Down):
                self._ended(msg.pid, msg.reason)

    def _ended(self, pid: Pid, reason: Any) -> None:
        field = self._watched.pop(pid, None)
        if field is None:
            return
        tk = uncanon(field)
        assert isinstance(tk, tuple)
        if self.local.get(tk) == pid:
            del self.local[tk]
        moved = reason in ("handoff", "fenced", "noconnection") or self.node.stopping
        if not moved and not self.cluster.fencing:
            # ended for good (normal, crash, idle, stopped): not to be started again,
            # unless its supervisor restarts it (which records it anew)
            self.records.write(field, pid_str(pid), None)

    # -- failover ------------------------------------------------------------------------
    def _node_down(self, name: str) -> None:
        self.kick()

    def kick(self) -> None:
        """Scan for orphans soon (again, if a scan is running)."""
        if self._stopped:
            return
        if self._scanning:
            self._rescan = True
            return
        task = asyncio.get_running_loop().create_task(self.adopt_orphans())
        self._kicks.add(task)
        task.add_done_callback(self._kicked)

    def _kicked(self, task: asyncio.Task[int]) -> None:
        self._kicks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("scan of cluster-scoped processes failed: %r", task.exception())

    async def _scan_loop(self) -> None:
        # the first scan a third of a lease after the join (orphans of nodes that died
        # before we joined are not urgent; the join's own store traffic goes first)
        await asyncio.sleep(self.cluster.lease / 3)
        while True:
            try:
                await self.adopt_orphans()
            except Exception as exc:
                log.warning("scan of cluster-scoped processes failed: %r", exc)
            await asyncio.sleep(2 * self.cluster.lease)

    async def adopt_orphans(self) -> int:
        """Start here every orphan (its pid's node incarnation is not live) whose home
        among the live nodes is this node; returns how many were started."""
        if self._scanning:
            self._rescan = True
            return 0
        self._scanning = True
        try:
            started = 0
            while True:
                self._rescan = False
                started += await self._adopt_round()
                if not self._rescan:
                    return started
        finally:
            self._scanning = False

    async def _adopt_round(self) -> int:
        if self.cluster.fencing or self.node.stopping:
            return 0
        try:
            pids = await self.store.run(lambda r: r.hgetall(self.records.k("pid")))
        except ClusterUnavailable:
            return 0
        me = self.node.name
        live = self.cluster.live_nodes()
        mine: list[tuple[str, Pid]] = []  # (field, the orphan's pid)
        for raw_field, raw_pid in pids.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            text = raw_pid.decode() if isinstance(raw_pid, bytes) else raw_pid
            pid = pid_from_str(text)
            if pid[0] == me:
                if pid[1] == self.cluster.creation:
                    continue  # ours, this incarnation (its end drops the record)
            elif self.cluster.is_live(pid):
                continue
            tk = uncanon(field)
            assert isinstance(tk, tuple)
            if home_node(tk[1], live) == me:
                mine.append((field, pid))
        if not mine:
            return 0
        results = await asyncio.gather(
            *(self.adopt(field, "failover", old[0], old) for field, old in mine),
            return_exceptions=True,
        )
        for (field, _), result in zip(mine, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not restart cluster-scoped %s: %r", uncanon(field), result)
        started = 0
        sources: dict[str, int] = {}
        for (_, old), result in zip(mine, results, strict=True):
            source = old[0]
            if isinstance(result, Pid) and result[0] == me:
                started += 1
                sources[source] = sources.get(source, 0) + 1
        for source, n in sources.items():
            self.cluster.counters.event(
                "restart", me, f"{n} cluster-scoped process(es) of {source} started here"
            )
        return started

    async def adopt(self, field: str, kind: str, source: str, old: Pid | None = None) -> Pid:
        """Start the process of record `field` here, with its handed-off state if the
        store holds one, in place of `old` (the instance of node `source` it
        replaces, which has ended). The claim decides a race: a failover's loser
        returns the live holder. A takeover answers only a pid it started here, and
        neither ever answers `old` or another pid of `source`'s that is not live:
        `NotTakenOver`."""
        spec_blob, state_blob = await self.records.read(field, spec=True)
        if spec_blob is None:
            raise NoProcess(f"no record of cluster-scoped {uncanon(field)!r}")
        record = self.records.open(spec_blob)
        tk = uncanon(field)
        assert isinstance(tk, tuple)
        table, key = tk
        backend = self.cluster.backend
        if old is not None and old[0] != self.node.name:
            # it has ended: no lookup here hands it out any more, and a claim that
            # finds it still in the store waits for its release instead of losing
            backend.keys.pid_ended(old)
        cached = backend._cache.get((table, key))
        if cached is not None and cached[0] == source:
            del backend._cache[(table, key)]  # the replaced node's instance: not trusted
        if state_blob is not None:
            tko = Takeover("takeover", source, self.records.open(state_blob))
        else:
            tko = Takeover(kind, source, None)
        pid = await self._start_here(table, key, record, spec_blob, tko)
        ours = pid[0] == self.node.name and self.local.get((table, key)) == pid
        if not ours and (
            kind == "takeover" or pid == old or (pid[0] == source and not self._live_elsewhere(pid))
        ):
            raise NotTakenOver(key, pid)
        if ours:
            if tko.kind == "failover":
                self.failovers += 1
            else:
                self.takeovers += 1
            self.history.append(HandoffEvent(tko.kind, table, key, source, self.node.name))
        return pid

    def _live_elsewhere(self, pid: Pid) -> bool:
        """True if `pid` is of a live node incarnation (this one: a live process)."""
        if pid[0] == self.node.name:
            return pid[1] == self.cluster.creation and self.node.is_alive(pid)
        return self.cluster.is_live(pid)

    async def _start_here(
        self, table: str, key: Hashable, record: Any, blob: bytes, tko: Takeover | None
    ) -> Pid:
        node = self.node
        if record[0] == "gos":
            _, factory, args, meta, idle_timeout = record
            token = set_takeover(tko)
            try:
                pid, started = await spawn_for(
                    node, key, factory, tuple(args), table, "local", meta, idle_timeout
                )
            finally:
                reset_takeover(token)
            if started:
                await self._record(table, key, pid, blob)
            return pid
        _, sup, spec = record
        self._pending[(table, key)] = tko  # type: ignore[assignment]
        try:
            try:
                return await self._start_child(sup, spec)
            except NoProcess:
                log.warning(
                    "no supervisor %r on node %s for cluster-scoped %r: started under root",
                    sup,
                    node.name,
                    key,
                )
                return await self._start_child("root", spec)
        except AlreadyRegistered as exc:
            return exc.pid  # type: ignore[no-any-return]
        except AlreadyStarted as exc:
            return exc.pid
        finally:
            self._pending.pop((table, key), None)

    async def _start_child(self, sup: Any, spec: Any) -> Pid:
        try:
            return await Supervisor.start_child(sup, spec)
        except AlreadyPresent:  # a stopped spec of it is kept there: replaced
            await Supervisor.delete_child(sup, spec.id)
            return await Supervisor.start_child(sup, spec)

    # -- requests from other nodes --------------------------------------------------------
    async def _request(self, node: str, request: tuple[Any, ...], timeout: float = 30.0) -> Any:
        result, _ = await self.cluster.remote.spawn(
            node,
            ("scoped", time.monotonic()),
            service,
            (request,),
            SERVICE_TABLE,
            None,
            None,
            timeout,
        )
        return result

    async def serve(self, request: tuple[Any, ...]) -> tuple[Any, bool]:
        """A request from another node (see `_request`)."""
        op = request[0]
        if op == "start":  # get_or_spawn of a key whose home is here
            _, table, key, blob = request
            record = self.records.open(blob)
            _, state = await self.records.read(canon((table, key)), spec=False)
            tko = Takeover("takeover", "?", self.records.open(state)) if state is not None else None
            # (from our processes or the store, not our cache: `Cluster`'s remote spawn)
            self.cluster.backend.keys.forget(table, key)
            pid = await self._start_here(table, key, record, blob, tko)
            return pid, False
        if op == "takeover":  # keys handed off by a stopping node
            # ("takeover", source, fields, old pids) (a node of an earlier version
            # sends no old pids)
            source, fields = request[1], request[2]
            olds: list[Pid | None] = (
                [pid_from_str(p) for p in request[3]] if len(request) > 3 else [None] * len(fields)
            )
            if self.node.stopping or self._stopped:
                # stopping too: what it started here would end at once, its state
                # with it; refused, the records keep their state for a survivor
                return [None] * len(fields), False
            results = await asyncio.gather(
                *(
                    self.adopt(field, "takeover", source, old)
                    for field, old in zip(fields, olds, strict=True)
                ),
                return_exceptions=True,
            )
            for field, r in zip(fields, results, strict=True):
                if isinstance(r, BaseException):
                    log.error("could not take cluster-scoped %r over: %r", uncanon(field), r)
            pids = [r if isinstance(r, Pid) else None for r in results]
            here = sum(1 for p in pids if p is not None and p[0] == self.node.name)
            self.cluster.counters.event(
                "takeover", self.node.name, f"{here} cluster-scoped process(es) from {source}"
            )
            return pids, False
        raise ValueError(f"unknown cluster-scoped request {op!r}")

    # -- handoff ---------------------------------------------------------------------------
    async def shutdown_hook(self, deadline: float) -> None:
        """The node's first shutdown hook (`Node.stop`, with ``stopping`` set):
        `handoff_all` within what is left of the stop's timeout."""
        left = deadline - asyncio.get_running_loop().time()
        try:
            await self.handoff_all(max(left, 0.1))
        except Exception:
            log.exception("handing cluster-scoped processes off failed")

    async def handoff_all(self, timeout: float = 5.0) -> int:
        """On a graceful stop: hand every local cluster-scoped process off to its new
        home (the key's home among the other live nodes). Returns how many moved."""
        from .handoff import hand_off

        return await hand_off(self, timeout)
