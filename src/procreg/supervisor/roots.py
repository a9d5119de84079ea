"""The supervision state of each node: its running supervisors, with their parents
(so that the node's `stop` ends the trees top-down, each stopping its children in
order), and its root supervisor while it starts (`procreg.supervisor.root`).

The node's kernel knows nothing of supervisors: the first supervisor of a node adds
`Supervision.stop_trees` to its ``shutdown_hooks`` and names its processes
``"Supervisor"`` in its ``kinds`` (what `Node.info` reports)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..pid import Pid

if TYPE_CHECKING:
    from ..kernel import Kernel

__all__ = ["Supervision", "supervision"]


class Supervision:
    """The supervisors of one node (see the module)."""

    __slots__ = ("node", "root", "supervisors")

    def __init__(self, node: Kernel) -> None:
        self.node = node
        self.supervisors: dict[Pid, Pid | None] = {}  # supervisor -> its parent
        self.root: asyncio.Future[Pid] | None = None  # the root supervisor starting
        node.shutdown_hooks.append(self.stop_trees)

    def add(self, pid: Pid, parent: Pid | None) -> None:
        """Supervisor `pid` (linked to `parent`, if any) is running."""
        self.supervisors[pid] = parent
        self.node.kinds[pid] = "Supervisor"

    def remove(self, pid: Pid) -> None:
        """Supervisor `pid` has ended."""
        self.supervisors.pop(pid, None)
        self.node.kinds.pop(pid, None)

    async def stop_trees(self, deadline: float) -> None:
        """Send ``"shutdown"`` to the top supervisors, newest first, and wait until
        they have ended or the node's loop time reaches `deadline`."""
        sups = self.supervisors
        tops = [pid for pid, parent in reversed(list(sups.items())) if parent not in sups]
        runtime = self.node.runtime
        for pid in tops:
            runtime.exit_signal(pid, None, "shutdown", False)
        loop = runtime.loop
        while any(runtime.exists(pid) for pid in tops) and loop.time() < deadline:
            await asyncio.sleep(0.002)


_LAYER = "supervision"  # (the node's ``layers`` key of its `Supervision`)


def supervision(node: Kernel) -> Supervision:
    """The supervision state of `node` (made on first use; kept in its ``layers``)."""
    state: Supervision | None = node.layers.get(_LAYER)
    if state is None:
        state = node.layers[_LAYER] = Supervision(node)
    return state
