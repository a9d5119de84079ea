"""Processes on other nodes: send, cast, call, link, monitor and exit across the wire.

Every operation on a remote pid becomes one *item* (a small tuple, pickled at the call
site) queued on the transport for the pid's node. For every peer node the `Peer`
record keeps what must be undone if that node goes down: the links between our
processes and its processes, the monitors in both directions, and our calls waiting
for its replies. When membership declares the node down, `Remote.node_down` delivers
``Down(..., "noconnection")`` to our watchers, the ``"noconnection"`` exit signal to
our linked processes, and fails pending calls with `NodeDown` — the same as Erlang
does when a distribution connection drops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

from ..errors import (
    ClusterUnavailable,
    DecodeError,
    NodeDown,
    NoProcess,
    Overloaded,
    ProcessExited,
    ProcregError,
)
from ..pid import Pid, Ref
from .claims import factory_name, resolve_factory
from .codec import pack_item
from .items import (
    CALL,
    CAST,
    DEMONITOR,
    DOWN,
    EXIT,
    FAIL,
    GNONE,
    GPUB,
    GROUP_SEND,
    GVIEW,
    LINK,
    LINK_EXIT,
    LINK_LOST,
    MONITOR,
    REPLY,
    RESET,
    SEND,
    SPAWN,
    UNLINK,
    Peer,
    RemoteCaller,
    pack_lenient,
)
from .tasks import Tasks

if TYPE_CHECKING:
    from ..seams import Runtime
    from .transport import Transport

__all__ = ["Peer", "Remote", "RemoteCaller", "factory_name", "resolve_factory"]

log = logging.getLogger("procreg.cluster")


class Remote:
    """Operations on remote pids, and the handling of items from other nodes."""

    def __init__(self, runtime: Runtime, transport: Transport) -> None:
        self.runtime = runtime
        self.transport = transport
        self.tasks = Tasks()  # remote spawns under way (stopped by `Cluster.stop`)
        # get_or_spawn on this node, for a remote spawn (placement="hash"): the
        # registry backend's, set by the cluster
        self.get_or_spawn: Callable[..., Awaitable[tuple[Pid, bool]]] | None = None
        self.peers: dict[str, Peer] = {}
        self.live: dict[str, int] = {}  # node -> creation, kept by membership
        self.downs: dict[str, int] = {}  # node -> the newest creation known to be down
        self.pruned_floor = -1  # ... for the nodes `downs` forgot (`Cluster.prune`)
        # called with a remote pid we learned is dead (a Down, an exit signal, a noproc)
        self.on_dead: Callable[[Pid], None] = lambda pid: None
        self.on_alive: Callable[[Pid], None] = lambda pid: None  # it answered a call
        # (sender, creation, item, pid) for an item to a pid of ours with no process:
        # True if kept until a claim in flight for that pid settles
        self.park: Callable[[str, int, Any, Pid], bool] = lambda *_: False
        # group views (`groupview`): (sender, group, msg) -> whether it had members
        self.on_gpub: Callable[[str, Any, Any], bool] = lambda *_: True
        self.on_gview: Callable[[str, str, list[Pid], list[Pid]], None] = lambda *_: None
        self.on_gnone: Callable[[str, str], None] = lambda *_: None
        self.on_reset: Callable[[str], None] = lambda _: None  # a peer lost frames
        self._ids = itertools.count(1)
        self._last_warning = 0.0

    def _peer(self, name: str) -> Peer:
        peer = self.peers.get(name)
        if peer is None:
            peer = self.peers[name] = Peer(name)
        return peer

    def reachable(self, pid: Pid) -> bool:
        """True if `pid`'s node may be live: its incarnation is the live one we know,
        or one our membership poll has not seen yet (a node that has just joined or
        restarted is reachable before our next poll: a frame that reaches nobody is
        reported by the transport, see `Cluster._undeliverable`). False for an
        incarnation known to be down."""
        name = pid[0]
        creation = self.live.get(name)
        if creation is not None:
            # a newer incarnation than we know of is live: membership has not polled
            # it yet (within lease / 3)
            return pid[1] >= creation
        return pid[1] > self.downs.get(name, self.pruned_floor)

    # -- outgoing -------------------------------------------------------------------
    # The target of a send, cast or call crosses as a plain tuple (a `Pid` costs a
    # Python-level reduce to pickle and a constructor call to unpickle); `deliver`
    # makes it a `Pid` again.
    def send(self, pid: Pid, msg: Any) -> None:
        item = pack_item((SEND, (*pid,), msg))
        if self.reachable(pid):
            self.transport.enqueue(pid[0], item)

    def cast(self, pid: Pid, msg: Any) -> None:
        item = pack_item((CAST, (*pid,), msg))
        if self.reachable(pid):
            self.transport.enqueue(pid[0], item)

    async def call(self, pid: Pid, request: Any, timeout: float | None) -> Any:
        call_id = next(self._ids)
        item = pack_item((CALL, call_id, (*pid,), request))
        if not self.transport.store.up:  # the frame could not leave: fail at once
            raise ClusterUnavailable(f"cannot call {pid!r}: the cluster store is unreachable")
        if not self.reachable(pid):
            if pid[0] in self.live:
                raise NoProcess(f"no process {pid!r} (an earlier incarnation of its node)")
            raise NodeDown(f"node {pid[0]!r} of {pid!r} is down")
        fut: asyncio.Future[Any] = self.runtime.loop.create_future()
        peer = self._peer(pid[0])
        peer.calls[call_id] = (fut, pid)
        self.transport.enqueue(pid[0], item)
        if timeout is not None:
            self.runtime.add_deadline(timeout, fut)
        try:
            return await fut
        finally:
            peer.calls.pop(call_id, None)

    def exit(self, sender: Pid | None, pid: Pid, reason: Any) -> None:
        if self.reachable(pid):
            self.transport.enqueue(pid[0], pack_lenient((EXIT, sender, pid, reason)))

    def link(self, ours: Pid, theirs: Pid) -> None:
        self._peer(theirs[0]).links.add((ours, theirs))
        self.transport.enqueue(theirs[0], pack_item((LINK, ours, theirs)))

    def unlink(self, ours: Pid, theirs: Pid) -> None:
        peer = self.peers.get(theirs[0])
        if peer is not None:
            peer.links.discard((ours, theirs))
        if self.reachable(theirs):
            self.transport.enqueue(theirs[0], pack_item((UNLINK, ours, theirs)))

    def monitor(self, watcher: Pid, ref: Ref, target: Pid) -> None:
        self._peer(target[0]).watch_out[ref] = (watcher, target)
        self.transport.enqueue(target[0], pack_item((MONITOR, ref, watcher, target)))

    def demonitor(self, ref: Ref, target: Pid) -> None:
        peer = self.peers.get(target[0])
        if peer is not None:
            peer.watch_out.pop(ref, None)
        if self.reachable(target):
            self.transport.enqueue(target[0], pack_item((DEMONITOR, ref, target)))

    def down(self, watcher: Pid, ref: Ref, pid: Pid, reason: Any) -> None:
        """Our process `pid`, watched by a remote `watcher`, ended."""
        peer = self.peers.get(watcher[0])
        if peer is not None:
            peer.watch_in.pop(ref, None)
        if self.reachable(watcher):  # (a node that just joined is reachable before our poll)
            self.transport.enqueue(watcher[0], pack_lenient((DOWN, ref, pid, watcher, reason)))

    def link_exit(self, sender: Pid, other: Pid, reason: Any) -> None:
        """Our process `sender`, linked to remote `other`, ended with `reason`."""
        peer = self.peers.get(other[0])
        if peer is not None:
            peer.links.discard((sender, other))
        if self.reachable(other):  # (a node that just joined is reachable before our poll)
            self.transport.enqueue(other[0], pack_lenient((LINK_EXIT, sender, other, reason)))

    def group_send(self, node: str, pids: list[Pid], msg: Any) -> None:
        self.transport.enqueue(node, pack_item((GROUP_SEND, pids, msg)))

    async def request(
        self, node: str, creation: int, item: Callable[[int], tuple[Any, ...]], timeout: float
    ) -> Any:
        """Send ``item(call_id)`` to `node` (its incarnation `creation`) and return
        the answer it sends back (`REPLY`/`FAIL` with that call id); `NodeDown` if that
        incarnation goes down or cannot be reached first, `CallTimeout` after
        `timeout` seconds."""
        call_id = next(self._ids)
        data = pack_item(item(call_id))
        fut: asyncio.Future[Any] = self.runtime.loop.create_future()
        peer = self._peer(node)
        peer.calls[call_id] = (fut, Pid(node, creation, 0))
        self.transport.enqueue(node, data)
        self.runtime.add_deadline(timeout, fut)
        try:
            return await fut
        finally:
            peer.calls.pop(call_id, None)

    async def spawn(
        self,
        node: str,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str,
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
        timeout: float = 5.0,
    ) -> tuple[Pid, bool]:
        """Ask `node` to get_or_spawn `key` there (placement="hash")."""
        name = factory_name(factory)
        pack_item((SPAWN, 0, table, key, name, args, meta, idle_timeout))  # (TypeError here)
        if node not in self.live:
            raise NodeDown(f"node {node!r} is down")
        result: tuple[Pid, bool] = await self.request(
            node,
            self.live[node],
            lambda call_id: (SPAWN, call_id, table, key, name, args, meta, idle_timeout),
            timeout,
        )
        return result

    # -- incoming -------------------------------------------------------------------
    def deliver(self, sender: str, creation: int, item: Any) -> None:
        """Handle one item from `sender` (called by the transport, in order)."""
        op = item[0]
        rt = self.runtime
        if op in (SEND, CAST):
            pid = Pid(*item[1])
            if not rt.deliver(pid, item[2], "send" if op == SEND else "cast") and not rt.alive(pid):
                self.park(sender, creation, item, pid)
        elif op == CALL:
            _, call_id, target, request = item
            pid = Pid(*target)
            if not rt.alive(pid) and self.park(sender, creation, item, pid):
                return
            caller = RemoteCaller(self, sender, call_id)
            if not rt.deliver_call(pid, caller, request):
                caller.fail(NoProcess(f"no process {pid!r}"))
        elif op == REPLY:
            self._answer(sender, item[1], item[2], None)
        elif op == FAIL:
            _, call_id, kind, detail = item
            self._answer(sender, call_id, None, (kind, detail))
        elif op == EXIT:
            _, from_pid, pid, reason = item
            if rt.alive(pid):
                rt.exit_signal(pid, from_pid, reason, linked=False)
            else:
                self.park(sender, creation, item, pid)
        elif op == LINK:
            _, from_pid, pid = item
            if not rt.alive(pid) and self.park(sender, creation, item, pid):
                return
            if not rt.attach_link(pid, from_pid):
                self.link_exit(pid, from_pid, "noproc")
                return
            self._peer(sender).links.add((pid, from_pid))
        elif op == UNLINK:
            _, from_pid, pid = item
            self._peer(sender).links.discard((pid, from_pid))
            rt.detach_link(pid, from_pid)
        elif op == LINK_EXIT:
            _, from_pid, pid, reason = item
            self.on_dead(from_pid)  # before anyone runs: no lookup may return it now
            self._peer(sender).links.discard((pid, from_pid))
            if rt.detach_link(pid, from_pid):  # (an exit after unlink is ignored)
                rt.exit_signal(pid, from_pid, reason, linked=True)
        elif op == MONITOR:
            _, ref, watcher, pid = item
            if not rt.alive(pid) and self.park(sender, creation, item, pid):
                return
            if not rt.attach_monitor(pid, ref, watcher):
                self.down(watcher, ref, pid, "noproc")
                return
            self._peer(sender).watch_in[ref] = (pid, watcher)
        elif op == DEMONITOR:
            _, ref, pid = item
            self._peer(sender).watch_in.pop(ref, None)
            rt.detach_monitor(pid, ref)
        elif op == DOWN:
            _, ref, pid, watcher, reason = item
            self.on_dead(pid)  # before anyone runs: no lookup may return it now
            peer = self.peers.get(sender)
            if peer is not None:
                peer.watch_out.pop(ref, None)
            if rt.watching(watcher, ref):  # still watched (not demonitored meanwhile)
                rt.down(watcher, ref, pid, reason)
        elif op == GROUP_SEND:
            _, pids, msg = item
            for pid in pids:
                rt.deliver(pid, msg, "send")
        elif op == GPUB:
            _, cgroup, group, msg = item
            if not self.on_gpub(sender, group, msg):
                self.transport.enqueue(sender, pack_item((GNONE, cgroup)))
        elif op == GNONE:
            self.on_gnone(sender, item[1])
        elif op == GVIEW:
            _, call_id, cgroup, adds, dels = item
            self.on_gview(sender, cgroup, [Pid(*p) for p in adds], [Pid(*p) for p in dels])
            if call_id:
                self.transport.enqueue(sender, pack_item((REPLY, call_id, True)))
        elif op == SPAWN:
            self.tasks.spawn(self._spawn_here(sender, item), rt.loop)
        elif op == RESET:
            # the sender lost frames (a store outage) and ended its side of our links
            # and monitors: end ours, as when an Erlang distribution connection drops;
            # it may have attached links and monitors we asked for since its loss
            # (sent before we handled this): `tell` makes it end those too
            self.node_down(sender, tell=True)
            self.on_reset(sender)
        elif op == LINK_LOST:
            _, from_pid, pid = item
            if rt.detach_link(pid, from_pid):
                peer = self.peers.get(sender)
                if peer is not None:
                    peer.links.discard((pid, from_pid))
                rt.exit_signal(pid, from_pid, "noconnection", linked=True)
        else:
            log.warning("unknown item %r from %s", op, sender)

    def undecodable(self, sender: str, creation: int, item: Any, exc: BaseException) -> None:
        """An item from `sender` we could not unpickle (`item` is what
        `codec.salvage` made of it, with placeholders): a call or a remote spawn is
        answered at once with `DecodeError` saying why, a reply fails its caller the
        same way, an exit signal or Down is delivered with a string for its reason,
        and a message is dropped and logged with the reason."""
        why = f"{type(exc).__name__}: {exc}"
        op = item[0] if isinstance(item, tuple) and item else None
        me = self.runtime.name
        if op == CALL:
            RemoteCaller(self, sender, item[1]).fail(
                DecodeError(
                    f"node {me!r} could not decode the request of a call to {Pid(*item[2])!r}: "
                    f"{why}"
                )
            )
        elif op == SPAWN:
            RemoteCaller(self, sender, item[1]).fail(
                DecodeError(f"node {me!r} could not decode a get_or_spawn of {item[3]!r}: {why}")
            )
        elif op == REPLY:
            error = DecodeError(f"could not decode the reply from node {sender!r}: {why}")
            self._answer(sender, item[1], None, ("error", error))
        elif op in (EXIT, LINK_EXIT, DOWN):
            self.deliver(sender, creation, (*item[:-1], f"<undecodable reason: {why}>"))
        else:
            target = Pid(*item[1]) if op in (SEND, CAST) else item[1:2]
            self._warn(
                f"dropped a message from node {sender!r} to {target!r}: cannot decode it: {why}"
            )

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 1.0:
            self._last_warning = now
            log.warning("%s (node %s)", text, self.runtime.name)

    def _answer(
        self, sender: str, call_id: int, value: Any, failure: tuple[str, Any] | None
    ) -> None:
        peer = self.peers.get(sender)
        entry = peer.calls.pop(call_id, None) if peer is not None else None
        if entry is None:
            return  # timed out or cancelled already
        fut, pid = entry
        if fut.done():
            return
        if failure is None:
            self.on_alive(pid)
            fut.set_result(value)
            return
        kind, detail = failure
        if kind == "noproc":
            self.on_dead(pid)
            fut.set_exception(NoProcess(detail))
        elif kind == "exited":
            self.on_dead(pid)
            fut.set_exception(ProcessExited(detail, pid))
        elif kind == "overload":
            fut.set_exception(Overloaded(*detail))
        elif isinstance(detail, BaseException):
            fut.set_exception(detail)  # the callee side's own error, same type
        else:
            fut.set_exception(ProcregError(f"remote failure: {detail}"))

    async def _spawn_here(self, sender: str, item: Any) -> None:
        _, call_id, table, key, name, args, meta, idle_timeout = item
        caller = RemoteCaller(self, sender, call_id)
        try:
            if self.get_or_spawn is None:
                raise NodeDown(f"node {self.runtime.name!r} takes no remote spawns")
            factory = resolve_factory(name)
            result = await self.get_or_spawn(
                key, factory, tuple(args), table, "local", meta, idle_timeout
            )
        except Exception as exc:
            caller.fail(exc)
            return
        caller.reply(result)

    # -- failures ---------------------------------------------------------------------
    def node_down(self, name: str, creation: int | None = None, tell: bool = False) -> None:
        """`name` is down (its incarnation `creation` and older; all if None):
        noconnection to our links and monitors, NodeDown to calls. Entries of a newer
        incarnation that already reached us stay. With `tell` (a ``RESET`` from
        `name`), `name` is told of each link and monitor of ours ended here
        (`LINK_LOST`, `DEMONITOR`): it may have attached them after its loss."""
        if creation is not None:
            self.downs[name] = max(self.downs.get(name, -1), creation)
        peer = self.peers.get(name)
        if peer is None:
            return

        def gone(pid: Pid) -> bool:
            return creation is None or pid[1] <= creation

        rt = self.runtime
        watch_out = {r: v for r, v in peer.watch_out.items() if gone(v[1])}
        watch_in = {r: v for r, v in peer.watch_in.items() if gone(v[1])}
        calls = {c: v for c, v in peer.calls.items() if gone(v[1])}
        links = {pair for pair in peer.links if gone(pair[1])}
        for ref in watch_out:
            del peer.watch_out[ref]
        for ref in watch_in:
            del peer.watch_in[ref]
        for call_id in calls:
            del peer.calls[call_id]
        peer.links -= links
        if not (peer.watch_out or peer.watch_in or peer.calls or peer.links):
            del self.peers[name]
        if tell:
            enqueue = self.transport.enqueue
            for ours, theirs in links:
                enqueue(name, pack_item((LINK_LOST, ours, theirs)))
            for ref, (_, target) in watch_out.items():
                enqueue(name, pack_item((DEMONITOR, ref, target)))
        for ref, (watcher, target) in watch_out.items():
            if rt.watching(watcher, ref):
                rt.down(watcher, ref, target, "noconnection")
        for ref, (pid, _) in watch_in.items():
            rt.detach_monitor(pid, ref)
        for call_id, (fut, _) in calls.items():
            if not fut.done():
                fut.set_exception(NodeDown(f"node {name!r} went down (call {call_id})"))
        for ours, theirs in links:
            if rt.detach_link(ours, theirs):
                rt.exit_signal(ours, theirs, "noconnection", linked=True)

    def all_down(self) -> list[str]:
        """Every peer is gone for us (after we were fenced, or lost frames). Returns
        the names of the peers we had links, monitors or calls with."""
        names = list(self.peers)
        for name in names:
            self.node_down(name)
        return names

    def reset(self, names: list[str]) -> None:
        """Tell these nodes we ended our side of their links and monitors (`RESET`)."""
        item = pack_item((RESET,))
        for name in names:
            if name in self.live:
                self.transport.enqueue(name, item)
