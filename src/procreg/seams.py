"""The seam between the runtime and the layers below it (typed protocols).

The runtime (`node.py`, `process.py`) never imports a backend, and a backend never
touches a process's fields: each side sees the other only through these protocols.

- `Runtime`: the narrow surface the runtime offers a backend (the cluster's
  distribution layer, a registry backend): new pids, delivery, the bookkeeping of
  links and monitors that cross nodes, exit signals, ends. Everything is addressed by
  `Pid`; every method is safe to call with a pid of a process that has ended (it then
  does nothing, or answers False).
- `Distribution`: what the runtime asks of a layer that reaches processes on other
  nodes (`procreg.cluster.remote.Remote` is one): messages, calls, exit signals, and
  the wire side of links and monitors. The runtime keeps the local side of every
  link and monitor itself (`Runtime.attach_link`, ...), so a distribution layer only
  translates operations to and from the wire.

A node implements `Runtime` as ``node.runtime``; the cluster gives the node its
`Distribution` when it starts.

- `Carrier`: a distribution given to a node as an object (``Node(dist=...)``) rather
  than as a cluster URL, such as `procreg.testing.LoopbackNet`; attaching a node
  gives it an `Attached`: its creation, its `Distribution`, its registry backend.
  (Erlang's name for a pluggable distribution is a carrier, ``-proto_dist``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from .pid import Pid, Ref

T = TypeVar("T")

__all__ = ["Attached", "Carrier", "Distribution", "Runtime"]

Delivery = Literal["send", "cast"]


class Runtime(Protocol):
    """What a backend may ask of the runtime of its node."""

    @property
    def name(self) -> str:
        """The node's name."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The node's event loop."""

    def new_pid(self) -> Pid:
        """A fresh pid of this node (for a process a backend is about to start)."""

    def alive(self, pid: Pid) -> bool:
        """True while `pid` is a local process that has not begun to exit."""

    def exists(self, pid: Pid) -> bool:
        """True while `pid` is a local process, even one that has begun to exit (an
        async ``terminate`` still running)."""

    def deliver(self, pid: Pid, msg: Any, kind: Delivery) -> bool:
        """Put `msg` in local process `pid`'s mailbox (``send`` reaches
        ``handle_info``/``receive``, ``cast`` ``handle_cast``); False if there is no
        such process or its mailbox refused it (a bound)."""

    def deliver_call(self, pid: Pid, caller: Any, request: Any) -> bool:
        """Hand a call from another node to local process `pid`; `caller` has
        ``reply(value)`` and ``fail(exc)``. False (and nothing done) if there is no
        such live process. An idle server with a sync ``handle_call`` may answer
        before this returns (as a local caller's direct dispatch does)."""

    def attach_link(self, ours: Pid, theirs: Pid) -> bool:
        """Record a link of local process `ours` with `theirs` (on another node);
        False if `ours` is not alive."""

    def detach_link(self, ours: Pid, theirs: Pid) -> bool:
        """Forget that link; True if it existed."""

    def attach_monitor(self, target: Pid, ref: Ref, watcher: Pid) -> bool:
        """Record that `watcher` (on another node) monitors local process `target`
        under `ref`; False if `target` is not alive."""

    def detach_monitor(self, target: Pid, ref: Ref) -> None:
        """Forget that monitor."""

    def watching(self, watcher: Pid, ref: Ref) -> bool:
        """True if local process `watcher` still monitors something under `ref`."""

    def exit_signal(self, pid: Pid, sender: Pid | None, reason: Any, linked: bool) -> None:
        """An exit signal from `sender` to local process `pid` (as `procreg.exit`;
        `linked`: it comes through a link)."""

    def down(self, watcher: Pid, ref: Ref, target: Pid, reason: Any) -> None:
        """`target`, monitored by local process `watcher` under `ref`, is down:
        deliver ``Down(ref, target, reason)`` and forget the monitor."""

    def end(self, pid: Pid, reason: Any) -> None:
        """End local process `pid` with `reason` (the full exit sequence)."""

    def run_as(self, pid: Pid, fn: Callable[[], T]) -> T:
        """Call `fn()` synchronously as local server `pid` (``procreg.self()`` answers
        `pid` inside it, as in its handlers) and return what it returns; `LookupError`
        if `pid` is not a live local process."""

    def add_deadline(self, timeout: float, fut: asyncio.Future[Any]) -> None:
        """Fail `fut` with `CallTimeout` after `timeout` seconds unless it is done."""

    def node_event(self, kind: str, name: str) -> None:
        """Tell the processes that called `monitor_nodes` that node `name` is
        ``"up"`` or ``"down"``."""


class Distribution(Protocol):
    """What the runtime asks of the layer that reaches other nodes' processes.
    Every pid given is of another node; the local side of links and monitors is
    already recorded when these are called."""

    def reachable(self, pid: Pid) -> bool:
        """True if `pid`'s node may be live (False: it is known to be down)."""

    def send(self, pid: Pid, msg: Any) -> None:
        """Send `msg` to `pid` (dropped if its node is down, as in Erlang)."""

    def cast(self, pid: Pid, msg: Any) -> None:
        """Cast `msg` to `pid`."""

    async def call(self, pid: Pid, request: Any, timeout: float | None) -> Any:
        """Call `pid` and return its reply (`NoProcess`, `NodeDown`, `CallTimeout`,
        `ProcessExited`, ...)."""

    def exit(self, sender: Pid | None, pid: Pid, reason: Any) -> None:
        """An exit signal to `pid`."""

    def link(self, ours: Pid, theirs: Pid) -> None:
        """Ask `theirs`'s node to link it with our process `ours`."""

    def unlink(self, ours: Pid, theirs: Pid) -> None:
        """Ask `theirs`'s node to drop that link."""

    def link_exit(self, sender: Pid, other: Pid, reason: Any) -> None:
        """Our process `sender`, linked to `other`, ended with `reason`."""

    def monitor(self, watcher: Pid, ref: Ref, target: Pid) -> None:
        """Ask `target`'s node to tell our `watcher` when `target` ends."""

    def demonitor(self, ref: Ref, target: Pid) -> None:
        """Ask `target`'s node to drop that monitor."""

    def down(self, watcher: Pid, ref: Ref, pid: Pid, reason: Any) -> None:
        """Our process `pid`, monitored by `watcher` on another node, ended."""


class Attached(Protocol):
    """What a node holds while it is attached to a `Carrier`."""

    @property
    def creation(self) -> int:
        """The node's creation in that cluster (its pids carry it)."""

    @property
    def remote(self) -> Distribution:
        """Operations on other nodes' pids."""

    @property
    def registry(self) -> Any:
        """The node's registry backend (a `procreg.registry.RegistryBackend`; typed
        Any here because the registry layer sits above the runtime)."""

    def live_nodes(self) -> list[str]:
        """The names of the live nodes, this one included, sorted."""

    async def stop(self) -> None:
        """Leave (called by `Node.stop` once the node's processes have ended)."""


class Carrier(Protocol):
    """A distribution a node joins when it starts (``Node(dist=carrier)``)."""

    async def attach(self, node: Any) -> Attached:
        """Join `node` (a starting `procreg.Node`, its loop running, its context
        current) and return what it holds while attached."""
