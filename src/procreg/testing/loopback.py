"""An in-memory loopback cluster: several nodes of one event loop, for tests.

`LoopbackCluster` starts nodes that form a cluster inside one Python process and one
event loop, with no Redis and no network::

    async with LoopbackCluster(3) as (a, b, c):
        pid = a.spawn(Echo)                      # a process on node "n1"
        assert await b.call(pid, "hi") == "hi"   # called from node "n2"
        await c.run(main)                        # main() as a process on "n3"

What crosses between two nodes is what crosses a real cluster: every operation on
another node's pid goes through `procreg.cluster.remote.Remote`, the Redis cluster's
own distribution code, over an in-memory transport instead of Redis pub/sub. So the
semantics are the cluster's, step for step:

- messages, casts, calls, replies, exit signals and ``Down`` reasons are *pickled*
  at the call site and unpickled on the other node (an unpicklable message raises
  `TypeError` at ``send``, as on Redis; nothing is shared by reference);
- items from one node to another arrive in the order sent, one loop turn later;
- links and monitors across nodes; a node that goes down (`kill`, `disconnect`,
  `stop_node`) gives the others ``Down(ref, pid, "noconnection")`` for their
  monitors, the ``"noconnection"`` exit signal for their links, and `NodeDown` for
  their pending calls, as when an Erlang distribution connection drops; a pid of
  a node incarnation known to be down is unreachable (``send`` drops, ``call``
  raises `NodeDown`, ``monitor`` gives ``Down(..., "noconnection")``);
- the registry is shared (`procreg.testing.loopback_backend.LoopbackBackend`): unique
  keys and groups are cluster-wide, keys must be canonical values and metadata JSON
  as on Redis, ``placement="hash"`` starts a key on its home node, and the keys and
  group memberships of a node that goes down are released at once.

`LoopbackNet` is the cluster itself (a `seams.Carrier`): ``Node(name, dist=net)``
joins it. `LoopbackCluster` starts `LoopbackNode`\\ s on one, each in a context of
its own, so that ``node.spawn(...)`` and ``await node.run(...)`` work from the test's
own code, outside every node.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import pickle
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..cluster.codec import salvage
from ..cluster.remote import Remote
from ..errors import NoNode
from ..node import Node, current_node
from ..pid import Pid
from .loopback_backend import LoopbackBackend

if TYPE_CHECKING:
    from ..cluster.transport import Transport

__all__ = ["LoopbackCluster", "LoopbackNet", "LoopbackNode", "Member"]

log = logging.getLogger("procreg.testing")

T = TypeVar("T")


class _Store:
    """What `Remote` reads of a transport's store: whether it is up (always)."""

    up = True


class _Transport:
    """What `Remote` needs of a transport: ``enqueue(node, item)`` and ``store.up``."""

    __slots__ = ("member", "store")

    def __init__(self, member: Member) -> None:
        self.member = member
        self.store = _Store()

    def enqueue(self, node: str, item: bytes) -> None:
        self.member.net._enqueue(self.member, node, item)


class Member:
    """One node attached to a `LoopbackNet` (what `Node.start` gets back: a
    `seams.Attached`): its creation, its `Remote`, its registry backend."""

    def __init__(self, net: LoopbackNet, node: Node, creation: int) -> None:
        self.net = net
        self.node = node
        self.name = node.name
        self.creation = creation
        self.connected = False
        # the node's context (its `current_node()`): items are delivered in it, so that
        # a process started for another node's request belongs to this one
        self.ctx = contextvars.copy_context()
        # (`Remote` reads only `enqueue` and `store.up` of its transport)
        self.remote = Remote(node.runtime, cast("Transport", _Transport(self)))
        self.registry = LoopbackBackend(node, self)
        self.remote.park = self.registry.park
        self.remote.get_or_spawn = self.registry.get_or_spawn

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<Member {self.name}.{self.creation} {state}>"

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in this node's context."""
        return self.ctx.copy().run(fn, *args)

    def live_nodes(self) -> list[str]:
        if not self.connected:
            return [self.name]
        return sorted(m.name for m in self.net.members.values() if m.connected)

    async def stop(self) -> None:
        self.net._leave(self)


class LoopbackNet:
    """An in-memory cluster (a `seams.Carrier`): nodes of one event loop that join
    it with ``Node(name, dist=net)`` message each other and share one registry.

    `kill`, `disconnect` and `reconnect` act on a member node as faults would;
    `settle` waits until nothing is in flight. Counters: `delivered` and `dropped`
    items."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self._creations: dict[str, int] = {}  # the last creation given to each name
        self._queue: deque[tuple[str, int, str, bytes]] = deque()
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # the shared registry: (table, key) -> (pid, metadata as JSON gives it back),
        # and group -> members
        self.keys: dict[tuple[str, Hashable], tuple[Pid, Any]] = {}
        self.groups: dict[Hashable, set[Pid]] = {}
        self.delivered = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<LoopbackNet {sorted(self.members)}>"

    # -- membership ---------------------------------------------------------------------
    async def attach(self, node: Node) -> Member:
        """Join `node` (called by `Node.start`). `ValueError` if a node of that name
        is attached already; a name that comes back gets a new creation."""
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("every node of a LoopbackNet must run on one event loop")
        if node.name in self.members:
            raise ValueError(f"a node named {node.name!r} is attached to this net already")
        creation = self._creations.get(node.name, 0) + 1
        self._creations[node.name] = creation
        member = Member(self, node, creation)
        self.members[node.name] = member
        self._connect(member)
        return member

    def member(self, node: Node | str) -> Member:
        """The `Member` for `node` (or a node name); `KeyError` if not attached."""
        name = node if isinstance(node, str) else node.name
        return self.members[name]

    def _connect(self, member: Member) -> None:
        member.connected = True
        for other in self.members.values():
            if other is member or not other.connected:
                continue
            other.remote.live[member.name] = member.creation
            member.remote.live[other.name] = other.creation
            other.run(other.node.runtime.node_event, "up", member.name)

    def _cut(self, member: Member) -> None:
        """`member` is no longer connected: the others see it down (what it held in
        the registry is released first, so that a ``Down`` handler finds the key
        free, as on Redis where the lookup checks the owner's lease)."""
        if not member.connected:
            return
        member.connected = False
        self._queue = deque(q for q in self._queue if q[0] != member.name and q[2] != member.name)
        self._purge(member.name, member.creation)
        for other in list(self.members.values()):
            if other is member or not other.connected:
                continue
            other.remote.live.pop(member.name, None)
            other.run(other.remote.node_down, member.name, member.creation)
            other.run(other.node.runtime.node_event, "down", member.name)

    def _leave(self, member: Member) -> None:
        """`member`'s node stops: what it sent is delivered, then it leaves."""
        self._flush()
        self._cut(member)
        if self.members.get(member.name) is member:
            del self.members[member.name]

    # -- faults -------------------------------------------------------------------------
    def disconnect(self, node: Node | str) -> None:
        """Cut `node` off the cluster, as a network partition would: every other node
        sees it down (``"noconnection"`` for links and monitors, `NodeDown` for
        calls, its keys and group memberships released), and it sees every other node
        down. Like a Redis cluster node that lost its lease, it fences itself: its
        registered processes and group members end with reason ``"fenced"``, its
        registry hands out nothing and claims nothing (`ClusterUnavailable`) until
        `reconnect`. Its other processes go on."""
        member = self.member(node)
        if not member.connected:
            return
        others = [m.name for m in self.members.values() if m.connected and m is not member]
        self._cut(member)
        member.remote.live.clear()
        member.run(member.remote.all_down)
        for name in others:
            member.run(member.node.runtime.node_event, "down", name)
        member.run(member.registry.fence)

    def reconnect(self, node: Node | str) -> None:
        """Join a `disconnect`\\ ed node again, with a new creation (as a fenced
        Redis cluster node rejoins): pids of its old incarnation stay unreachable
        from the other nodes."""
        member = self.member(node)
        if member.connected:
            return
        creation = self._creations[member.name] + 1
        self._creations[member.name] = creation
        member.creation = creation
        member.node.creation = creation  # (`Cluster.adopt_creation` does the same)
        for other in self.members.values():
            if other is not member and other.connected:
                member.run(member.node.runtime.node_event, "up", other.name)
        self._connect(member)

    async def kill(self, node: Node) -> None:
        """`node` crashes: the others see it down at once (as `disconnect`), then it
        stops with nothing reaching the others any more. (Unlike a real crash, its
        processes' ``terminate`` callbacks still run, in isolation.)"""
        self.disconnect(node)
        await node.stop()

    # -- the shared registry ----------------------------------------------------------
    def holder(self, table: str, key: Hashable) -> Pid | None:
        """The live holder of `key` in `table` cluster-wide, or None (`TypeError`
        for an unhashable key). A holder whose process is exiting counts as gone."""
        entry = self.keys.get((table, key))
        if entry is None:
            return None
        pid = entry[0]
        owner = self.members.get(pid[0])
        if owner is None or not owner.connected or owner.creation != pid[1]:
            return None
        return pid if owner.registry.holds(pid) else None

    def entry(self, table: str, key: Hashable) -> tuple[Pid, Any] | None:
        """``(pid, metadata)`` of the live holder of `key`, or None."""
        pid = self.holder(table, key)
        if pid is None:
            return None
        return self.keys[(table, key)]

    def claim(self, by: Member, table: str, key: Hashable, pid: Pid, meta: Any) -> Pid | None:
        """Give `key` to `pid` unless another live process holds it (returned then);
        the same pid again replaces the metadata. One atomic step, like the Redis
        claim script."""
        if not by.connected:
            raise RuntimeError(f"{by!r} is not connected")  # (its backend checks first)
        current = self.holder(table, key)
        if current is not None and current != pid:
            return current
        self.keys[(table, key)] = (pid, meta)
        if current != pid:
            self._key_event(by, table, key, "registered", pid)
        return None

    def release(self, by: Member, table: str, key: Hashable, pid: Pid, event: str) -> bool:
        """Remove `key` if `pid` holds it (`event`: ``"unregistered"`` or
        ``"ended"``, for the other nodes' key monitors); True if removed."""
        entry = self.keys.get((table, key))
        if entry is None or entry[0] != pid or not by.connected:
            return False  # (a node cut off reaches nobody: what it held is purged)
        del self.keys[(table, key)]
        self._key_event(by, table, key, event, pid)
        return True

    def group_add(self, by: Member, group: Hashable, pid: Pid) -> None:
        if by.connected:
            self.groups.setdefault(group, set()).add(pid)

    def group_remove(self, by: Member, group: Hashable, pid: Pid) -> None:
        members = self.groups.get(group) if by.connected else None
        if members is not None:
            members.discard(pid)
            if not members:
                del self.groups[group]

    def _purge(self, name: str, creation: int) -> None:
        """Release what node `name` (incarnation `creation` and older) held."""

        def gone(pid: Pid) -> bool:
            return pid[0] == name and pid[1] <= creation

        for (table, key), (pid, _) in list(self.keys.items()):
            if gone(pid):
                del self.keys[(table, key)]
                self._key_event(None, table, key, "ended", pid)
        for group, members in list(self.groups.items()):
            members.difference_update([p for p in members if gone(p)])
            if not members:
                del self.groups[group]

    def _key_event(
        self, by: Member | None, table: str, key: Hashable, event: str, pid: Pid
    ) -> None:
        """Tell the key monitors of the other connected nodes (`by` told its own)."""
        for other in list(self.members.values()):
            if other is not by and other.connected:
                other.run(other.registry.key_event, table, key, event, pid)

    # -- the transport ----------------------------------------------------------------
    def _enqueue(self, sender: Member, dest: str, item: bytes) -> None:
        if not sender.connected:
            self.dropped += 1  # cut off: it reaches nobody
            return
        self._queue.append((sender.name, sender.creation, dest, item))
        if not self._flush_pending:
            self._flush_pending = True
            loop = self._loop  # (set by the first attach; also from code outside the loop)
            assert loop is not None
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Deliver what was queued (items queued meanwhile go on the next turn)."""
        self._flush_pending = False
        batch, self._queue = self._queue, deque()
        for sname, screation, dest, raw in batch:
            sender = self.members.get(sname)
            if sender is None or not sender.connected or sender.creation != screation:
                self.dropped += 1  # from an incarnation that is gone
                continue
            target = self.members.get(dest)
            if target is None or not target.connected:
                self.dropped += 1
                # as the Redis transport does for a frame no subscriber got
                if dest in sender.remote.peers:
                    sender.run(sender.remote.node_down, dest)
                continue
            try:
                item = pickle.loads(raw)
            except Exception as exc:
                self.dropped += 1
                target.run(target.remote.undecodable, sname, screation, salvage(raw), exc)
                continue
            self.delivered += 1
            try:
                target.run(target.remote.deliver, sname, screation, item)
            except Exception:
                log.exception("delivering %r from %s to %s failed", item[:1], sname, dest)

    def busy(self) -> bool:
        """True while items are in flight."""
        return bool(self._queue) or self._flush_pending

    async def settle(self, turns: int = 3) -> None:
        """Wait until no item has been in flight for `turns` loop turns in a row (the
        processes have handled what reached them, unless they wait on something)."""
        quiet = 0
        while quiet < turns:
            await asyncio.sleep(0)
            quiet = 0 if self.busy() else quiet + 1


class LoopbackNode(Node):
    """A `Node` on a `LoopbackNet` that a test can drive from outside it: `spawn`
    and `run` start processes in the node's own context, so that the processes'
    calls to `procreg` functions act on this node (``procreg.spawn`` inside a process
    of another node still starts there)."""

    def __init__(self, name: str, *, net: LoopbackNet, **options: Any) -> None:
        super().__init__(name, dist=net, **options)
        self.net = net
        self._loopback_ctx: contextvars.Context | None = None

    @property
    def member(self) -> Member:
        """This node's `Member` of its net (while it runs)."""
        return self.net.member(self.name)

    def _context(self) -> contextvars.Context:
        member = self.net.members.get(self.name)
        if member is None or member.node is not self:
            raise RuntimeError(f"{self!r} is not running on its net")
        return member.ctx.copy()

    def spawn(self, fn: Any, *args: Any, **options: Any) -> Pid:
        """`Node.spawn`, from any context (see the class)."""
        try:
            here = current_node() is self
        except NoNode:
            here = False
        if here:
            return super().spawn(fn, *args, **options)
        pid: Pid = self._context().run(Node.spawn, self, fn, *args, **options)
        return pid

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(*args)`` as a process of this node and return its result (or
        raise its exception), as `procreg.run` does for its main process."""
        result: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._context().run(self.spawn_main, fn, args, result)
        return await result


class LoopbackCluster:
    """Start `nodes` `LoopbackNode`\\ s (a count: named ``n1``, ``n2``, ...; or
    their names) on a fresh `LoopbackNet`, each with `node_options`; stop them all
    on exit. Iterating gives the nodes, so ``async with LoopbackCluster(3) as (a, b,
    c)`` unpacks them, while ``async with LoopbackCluster(3) as cluster`` keeps the
    cluster (``cluster.nodes``, ``cluster.net``, the faults).

    Each node starts in a context of its own: the test's code stays outside every
    node (``procreg.spawn`` there raises `NoNode`: use ``node.spawn``,
    ``node.run``)."""

    def __init__(self, nodes: int | Iterable[str] = 2, **node_options: Any) -> None:
        if isinstance(nodes, int):
            if nodes < 1:
                raise ValueError(f"a cluster needs at least one node, got {nodes}")
            names = [f"n{i}" for i in range(1, nodes + 1)]
        else:
            names = list(nodes)
        self._names = names
        self._options = node_options
        self.net = LoopbackNet()
        self.nodes: list[LoopbackNode] = []

    async def __aenter__(self) -> LoopbackCluster:
        try:
            for name in self._names:
                await self.start_node(name)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __iter__(self) -> Iterator[LoopbackNode]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, index: int) -> LoopbackNode:
        return self.nodes[index]

    async def start_node(self, name: str, **options: Any) -> LoopbackNode:
        """Start one more node `name` (a name that was stopped or killed before comes
        back with a new creation) and return it."""
        node = LoopbackNode(name, net=self.net, **{**self._options, **options})
        ctx = contextvars.copy_context()
        await asyncio.get_running_loop().create_task(node.start(), context=ctx)
        node._loopback_ctx = ctx
        self.nodes.append(node)
        return node

    async def stop_node(self, node: LoopbackNode) -> None:
        """Stop `node` gracefully: its processes end with ``"shutdown"`` (their
        links and monitors on other nodes get that reason), then it leaves."""
        ctx = node._loopback_ctx or contextvars.copy_context()
        await asyncio.get_running_loop().create_task(node.stop(), context=ctx)
        if node in self.nodes:
            self.nodes.remove(node)

    async def kill(self, node: LoopbackNode) -> None:
        """`LoopbackNet.kill`: the others see `node` down at once; it stops."""
        self.net.disconnect(node)
        await self.stop_node(node)

    def disconnect(self, node: LoopbackNode) -> None:
        """`LoopbackNet.disconnect`."""
        self.net.disconnect(node)

    def reconnect(self, node: LoopbackNode) -> None:
        """`LoopbackNet.reconnect`."""
        self.net.reconnect(node)

    async def settle(self, turns: int = 3) -> None:
        """`LoopbackNet.settle`."""
        await self.net.settle(turns)

    async def close(self) -> None:
        """Stop every node still running, newest first."""
        for node in reversed(list(self.nodes)):
            if node.running:
                await self.stop_node(node)
        self.nodes.clear()
