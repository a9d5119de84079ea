"""The cluster: nodes that share one registry and message each other through Redis.

``Node(cluster="redis://127.0.0.1:6379/0")`` (or env ``PROCREG_CLUSTER``) makes a node
join; `Cluster` ties the pieces together:

- `store.Store`: the Redis connection, fail-fast while it is down, reconnection;
- `membership.Membership`: leases, creations, the live-node list;
- `transport.Transport`: signed frames on one channel per node;
- `direct.Direct`: the same frames over direct TCP connections (``listen=`` in the
  URL), pub/sub staying the default and the fallback;
- `remote.Remote`: send/call/link/monitor/exit on remote pids, and node-down cleanup;
- `backend.RedisBackend`: the registry in the store, with a local cache.

Failure handling (`fencing`; docs/INTERNALS.md has the protocol step by step):

- a node whose lease lapsed is *down*: `node_down` delivers noconnection everywhere
  and purges what that incarnation held in the store;
- a node that finds its own lease gone while the store kept its data was declared
  dead: `fence` ends its registered processes (reason ``"fenced"``), treats every peer
  as down, and rejoins with a new creation;
- if the store lost its data (the epoch key is gone), `recover_lost_data` re-creates
  the epoch with a grace period during which only re-registrations may claim, and
  re-registers every live local key; a key now held by another live process goes to
  `conflict` (by default: the registered one stays, ours ends with ``"conflict"``);
- while the store is unreachable, local work goes on and cluster operations raise
  `ClusterUnavailable` at once; on reconnection the node re-checks its lease and
  the epoch and reconciles its registrations;
- key monitors (`keywatch`) re-check their keys whenever events may have been
  missed: re-subscribed, re-synced, rejoined, after a data loss or a failover.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from ..pid import Pid
from . import fencing
from .backend import RedisBackend
from .codec import load_secret, pid_str
from .counters import ClusterCounters
from .direct import Direct
from .membership import Membership
from .remote import Remote
from .scoped import SERVICE_TABLE, Scoped
from .store import Store, stop_tasks
from .transport import Transport

if TYPE_CHECKING:
    from ..kernel import Kernel

__all__ = ["Cluster", "default_node_name"]

log = logging.getLogger("procreg.cluster")

ConflictHook = Callable[[str, Any, Pid, Pid], Any]

PURGE_BATCH = 1000  # entries of a dead node dropped per script call


def default_node_name() -> str:
    """``<host>-<pid>``: unique per OS process on one machine."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


class Cluster:
    """The cluster side of one node."""

    def __init__(
        self,
        node: Kernel,
        url: str,
        *,
        secret: str | bytes | None = None,
        lease: float = 3.0,
        grace: float | None = None,
        on_conflict: ConflictHook | None = None,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
        self.node = node
        self.url = url
        self.key = load_secret(secret)
        self.lease = lease
        self.grace = grace if grace is not None else 2 * lease
        self.store: Store = Store(url, timeout=min(1.0, lease / 3))
        self.membership = Membership(self, node.name, lease)
        self.transport = Transport(
            self.store, self.key, node.name, self._deliver, interval=lease / 3
        )
        self.transport.on_inval = self._invalidated
        self.transport.on_undeliverable = self._undeliverable
        self.transport.guard = self.membership.check
        self.remote = Remote(node.runtime, self.transport)
        self.direct: Direct | None = None
        config = self.store.config
        if config.listen is not None:
            self.direct = self.transport.direct = Direct(
                self.transport,
                config.listen,
                config.advertise,
                lambda: self.fencing,
                self._direct_lost,
                # (the floor of forgotten creations is for names we know nothing of)
                lambda name: self.remote.downs.get(
                    name, -1 if name in self.transport.peer_creation else self.remote.pruned_floor
                ),
            )
        self.transport.on_undecodable = self.remote.undecodable
        self.backend = RedisBackend(node, self)
        self.remote.on_dead = self.backend.keys.pid_ended
        self.remote.on_alive = self.backend.keys.pid_answered
        self.remote.park = self._park
        self.remote.get_or_spawn = self._remote_get_or_spawn
        self.scoped = Scoped(self)  # cluster-scoped processes (`procreg.scope`)
        self.remote.on_gpub = self.backend.groups_.deliver
        self.remote.on_gview = self.backend.groups_.views.update
        self.remote.on_gnone = self.backend.groups_.views.none
        self.remote.on_reset = self._reset_views
        self.transport.on_resubscribe = self._resubscribed
        self.transport.on_kev = self.backend.keywatch.on_message
        self.on_conflict = on_conflict
        self.up_events: list[Callable[[str], Any]] = []
        self.down_events: list[Callable[[str], Any]] = []
        self.fenced: int = 0
        self.recoveries = 0
        self._purges: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._rejoining: asyncio.Task[None] | None = None  # the rejoin after a fence
        self._recover_again = False
        self.fencing = False
        self.failovers = 0  # primary changes seen (`primary_changed`)
        self.counters = ClusterCounters()  # for metrics and the observer
        self.owed_resets: set[str] = set()  # peers whose RESET may not have left
        self._prunable_since: dict[str, float] = {}  # name -> when `prune` first could

    @property
    def creation(self) -> int:
        return self.membership.creation

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> int:
        """Connect (bounded retry: `ClusterUnavailable`), join, and start listening.
        Returns the node's creation."""
        await self.store.connect()
        try:
            # subscribed (and confirmed) before we are in ``nodes``: a peer that sees
            # us can send to us at once
            try:
                await self.transport.start()
            except (ConnectionError, OSError) as exc:
                raise ClusterUnavailable(f"cannot subscribe to the cluster store: {exc}") from exc
            if self.direct is not None:
                try:
                    await self.direct.start()
                except OSError as exc:
                    raise ClusterUnavailable(
                        f"cannot listen for direct connections on {self.direct.listen}: {exc}"
                    ) from exc
            creation = await self.membership.join()
        except BaseException:
            # nothing of a node that failed to join may live on: a leftover subscriber
            # or reconnect hook would later take the name's lease from the live node
            self.membership._closing = True
            self.membership.disarm()
            await self.transport.close()
            raise
        self.store.on_reconnect = self._resync
        self.transport.creation = creation
        self._set_live(self.membership.live)
        self.membership.start()
        live = len(self.membership.live)
        log.info(
            "node %s joined the cluster at %s: creation %d, %d live node(s)",
            self.node.name,
            self.store.url,
            creation,
            live,
            extra={"procreg_node": self.node.name, "procreg_creation": creation},
        )
        self.counters.event("join", self.node.name, f"creation {creation}, {live} live node(s)")
        self.scoped.start()
        # first of the node's shutdown hooks: hand off before supervisors stop children
        self.node.shutdown_hooks.insert(0, self.scoped.shutdown_hook)
        return creation

    async def stop(self) -> None:
        """Leave: flush the registry, give the lease back, close connections."""
        log.info(
            "node %s leaves the cluster (creation %d)",
            self.node.name,
            self.creation,
            extra={"procreg_node": self.node.name, "procreg_creation": self.creation},
        )
        self.counters.event("leave", self.node.name, f"creation {self.creation}")
        # a rejoin after a fence must not register us again while we leave
        await stop_tasks(self._rejoining)
        try:
            await self.backend.releases.flush()
        except Exception:
            pass
        await self.backend.keywatch.close()
        await self.backend.groups_.views.close()
        await self.scoped.stop()
        await self.membership.stop()
        await stop_tasks(*self._purges.values(), self._recovery)
        await self.remote.tasks.stop()
        await self.transport.close()
        await self.store.close()

    def _park(self, sender: str, creation: int, item: Any, pid: Pid) -> bool:
        """An item for one of our pids that is not alive: forwarded if the pid was
        handed off (`Forwarding.forward`), else kept if its claim is in flight."""
        forwarding = self.scoped.forwarding
        if forwarding.moved and forwarding.forward(sender, item, pid):
            return True
        return self.backend.park(sender, creation, item, pid)

    async def _remote_get_or_spawn(
        self,
        key: Any,
        factory: Any,
        args: tuple[Any, ...],
        table: str,
        placement: str,
        meta: Any,
        idle_timeout: float | None,
    ) -> Any:
        """A remote spawn (``placement="hash"``) from another node; those in the
        reserved table `SERVICE_TABLE` are requests to `Scoped.serve`."""
        if table == SERVICE_TABLE:
            return await self.scoped.serve(args[0])
        # answered from our own processes or the store, never from our cache: the
        # asker may have heard an invalidation we missed (we may be cut off from the
        # store, and not fenced yet). (A claim of ours in flight, which the request
        # joins, may be older than it: the asker checks a third node's pid itself,
        # `placement`.)
        self.backend.keys.forget(table, key)
        return await self.backend.get_or_spawn(
            key, factory, args, table, placement, meta, idle_timeout
        )

    # -- the live nodes -----------------------------------------------------------------
    def live_nodes(self) -> list[str]:
        """The names of the live nodes, this one included, sorted."""
        return sorted(self.membership.live)

    def is_live(self, pid: Pid) -> bool:
        """True if `pid`'s node incarnation is live (or it is ours)."""
        if pid[0] == self.node.name:
            return True
        return self.membership.live.get(pid[0]) == pid[1]

    def _set_live(self, live: dict[str, int]) -> None:
        others = {n: c for n, c in live.items() if n != self.node.name}
        self.remote.live = others
        self.transport.peer_creation.update(others)
        self.transport.forget_stale()

    def adopt_creation(self, creation: int) -> None:
        """This node's pids carry `creation` from now on."""
        self.node.creation = creation
        self.transport.creation = creation
        if self.direct is not None:  # sessions are between incarnations
            self.direct.close_all()

    def node_up(self, name: str, creation: int) -> None:
        self._set_live(self.membership.live)
        log.info(
            "node up: %s (creation %d)",
            name,
            creation,
            extra={"procreg_node": name, "procreg_creation": creation},
        )
        self.counters.event("up", name, f"creation {creation}")
        self.node.runtime.node_event("up", name)
        for hook in list(self.up_events):
            hook(name)

    async def node_down(self, name: str, creation: int) -> None:
        """`name` (that incarnation) is down."""
        self._set_live(self.membership.live)
        log.warning(
            "node down: %s (creation %d)",
            name,
            creation,
            extra={"procreg_node": name, "procreg_creation": creation},
        )
        self.counters.event("down", name, f"creation {creation}")
        # frames of that incarnation that are still in flight are stale from now on
        known = self.transport.peer_creation.get(name, 0)
        self.transport.peer_creation[name] = max(known, creation + 1)
        self.transport.forget_stale()
        if self.direct is not None:
            self.direct.peer_down(name, creation)
        self.remote.node_down(name, creation)
        self.backend.keys.node_down(name)
        self.backend.groups_.views.node_down(name, creation)
        self.start_purge(name, creation)
        self.node.runtime.node_event("down", name)
        for hook in list(self.down_events):
            hook(name)

    def start_purge(
        self, name: str, creation: int, then: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """`purge` in a task of its own (and then `then()` if it completed): a node
        that held a million keys takes seconds to purge, and the membership step that
        noticed it must go on renewing our lease meanwhile."""
        if (name, creation) in self._purges:
            return

        async def run() -> None:
            try:
                if await self.purge(name, creation) and then is not None:
                    await then()
            except Exception as exc:
                log.debug("after the purge of %s.%d: %r", name, creation, exc)
            finally:
                self._purges.pop((name, creation), None)

        self._purges[(name, creation)] = asyncio.get_running_loop().create_task(run())

    async def purge(self, name: str, creation: int) -> bool:
        """Drop from the store what a dead incarnation still holds (idempotent, 1,000
        entries a script call); False if the store failed meanwhile."""
        store = self.store
        keys = [store.key("owned", name, str(creation))]
        args = [pid_str(Pid(name, creation, 0))[:-1], store.key("inval"), store.prefix, PURGE_BATCH]
        try:
            while await store.script("purge", keys, args):  # what is left
                pass
        except Exception as exc:
            log.debug("purge of %s.%d failed: %r", name, creation, exc)
            return False
        return True

    # -- transport and cache ---------------------------------------------------------------
    def _deliver(self, sender: str, creation: int, item: Any) -> None:
        self.remote.deliver(sender, creation, item)

    def _undeliverable(self, name: str) -> None:
        """A frame for `name` reached no subscriber: it was lost, and so may later
        ones be until that node re-subscribes. As when an Erlang distribution
        connection drops: our calls to it fail with `NodeDown`, our links and
        monitors to its processes get ``noconnection``."""
        if self.direct is not None:
            self.direct.unreachable(name)  # (a cutover marker, maybe)
        peer = self.remote.peers.get(name)
        if peer is None:
            return
        log.warning("frames to node %s reach no subscriber: treating it as disconnected", name)
        self.remote.node_down(name)

    def _direct_lost(self, name: str) -> None:
        """The direct connection to `name` was lost with frames maybe in it: as for a
        frame that reached nobody, our side ends (calls fail with `NodeDown`, links
        and monitors get ``noconnection``), and a ``RESET`` (first after what was
        delivered, on pub/sub now) ends the peer's side."""
        self.transport.discard(name)
        if not self.store.up:
            return  # the re-sync after the outage ends both sides (all_down, RESET)
        if not self.transport.publishing:  # the RESET may be dropped: the re-sync sends it
            self.owed_resets.add(name)
        self.remote.node_down(name)
        self.remote.reset([name])

    def prune(self, present: set[str]) -> None:
        """Forget the per-name state of the nodes that are neither live nor in
        ``nodes`` any more (down, lease gone, forgotten; or known only from their
        frames): their sequence numbers, creations, down marks, channel names,
        direct connections. Their creations
        stay refused through `Transport.pruned_floor` (creations only grow). A name is
        forgotten only two leases after it could first be: a node that took its
        creation (``INCR``) before the forgotten one's and is still joining (it waits
        up to 1.5 leases for its name's lease) is known by then, and the floor applies
        only to names we know nothing of."""
        t, remote = self.transport, self.remote
        candidates = {
            name
            for name, down in remote.downs.items()
            if name not in present
            and name not in remote.peers
            and t.peer_creation.get(name, 0) <= down + 1  # no newer incarnation spoke
        }
        # ... and those we know only from their frames (they came and went between
        # two of our polls: never live for us, so never down)
        candidates |= {
            name
            for name in t.peer_creation
            if name not in present
            and name not in remote.live
            and name not in remote.peers
            and name not in remote.downs
            and name != self.node.name
        }
        now = time.monotonic()
        since = self._prunable_since
        for name in [n for n in since if n not in candidates]:
            del since[name]
        gone = {n for n in candidates if now - since.setdefault(n, now) >= 2 * self.lease}
        for name in gone:
            del since[name]
        floor = t.pruned_floor
        for name in gone:
            down = remote.downs.pop(name, None)
            floor = max(floor, t.peer_creation.get(name, 0) if down is None else down)
            if self.direct is not None:
                self.direct.peer_down(name)
        t.pruned_floor = remote.pruned_floor = floor
        self.owed_resets -= gone  # (a RESET owed to a forgotten node is moot)
        # (channel names are a cache: those of absent nodes go too)
        t.forget_names(gone, keep=present | set(t.peer_creation) - gone)

    def _reset_views(self, name: str) -> None:
        """`name` lost frames (some to us, maybe updates of group views): drop ours."""
        self.backend.groups_.views.clear()

    def _resubscribed(self) -> None:
        """Subscribed again after a lost connection: invalidations and key events
        published meanwhile are lost."""
        self.backend.clear_cache()
        self.backend.keywatch.recheck()

    def _invalidated(self, data: bytes) -> None:
        """An ``inval`` message: ``table\\nkey`` pairs, newline-separated (canonical
        names hold no newlines)."""
        try:
            parts = data.decode().split("\n")
        except UnicodeDecodeError:
            self.backend.clear_cache()
            return
        invalidated = self.backend.keys.invalidated
        n = 0
        for i in range(0, len(parts) - 1, 2):
            invalidated(parts[i], parts[i + 1])
            n += 1
        self.counters.invalidations += n  # (metrics)

    # -- failures (written in `fencing`) ---------------------------------------------------
    fence_now = fencing.fence_now
    _step_quietly = fencing.step_quietly
    fence = fencing.fence
    rejoin = fencing.rejoin
    primary_changed = fencing.primary_changed
    _start_recovery = fencing.start_recovery
    _recover = fencing.recover
    recover_lost_data = fencing.recover_lost_data
    conflict = fencing.conflict
    _resync = fencing.resync
