"""Relaying to the new instance of a handed-off process: the mail it had not
handled (`relay_calls`), and the frames other nodes send its old pid while this
node is still up (`Forwarding`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..errors import NoProcess, ProcessExited, ProcregError
from ..pid import Pid
from ..process import fail_caller
from .items import CALL, CAST, SEND, RemoteCaller
from .tasks import Tasks

if TYPE_CHECKING:
    from . import Cluster

__all__ = ["Forwarding", "relay", "relay_calls"]

log = logging.getLogger("procreg.cluster")


def relay_calls(
    node: Any, pid: Pid | None, mail: list[tuple[str, Any, Any]], why: str, tasks: Tasks
) -> list[Any]:
    """Deliver what a handed-off process had not handled to its new incarnation `pid`
    in order; a call is relayed (its caller gets the new incarnation's answer or
    error) by a task kept in `tasks`. With no new incarnation, callers fail at once
    with `ProcessExited`; a `pid` of this (handing-off) node is never a new
    incarnation: taken as none."""
    if pid is not None and pid[0] == node.name:
        pid = None
    relays = []
    for kind, a, b in mail:
        if kind == "call":
            if pid is None:
                fail_caller(a, ProcessExited(("handoff", why), None))
                continue
            relays.append(tasks.spawn(relay(node, pid, a, b)))
        elif pid is not None:
            if kind == "cast":
                node.cast(pid, a)
            else:
                node.send(pid, a)
    return relays


async def relay(node: Any, pid: Pid, caller: Any, request: Any) -> None:
    try:
        value = await node.call(pid, request, 30.0)
    except (ProcregError, TimeoutError) as exc:
        fail_caller(caller, exc)
        return
    if isinstance(caller, asyncio.Future):
        if not caller.done():
            caller.set_result(value)
    else:
        caller.reply(value)


class Forwarding:
    """Frames from other nodes for this node's handed-off pids (`hand_off`): a send,
    cast or call to one goes to its new instance, kept until that is known."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.node = cluster.node
        # handed-off pids of ours -> their new instance (or, until it is known, what
        # other nodes sent them meanwhile)
        self.moved: dict[Pid, Pid | list[tuple[str, Any]] | None] = {}

    def forward(self, sender: str, item: Any, pid: Pid) -> bool:
        """A frame item from `sender` for our dead `pid`: if `pid` was handed off, a
        send, cast or call goes to its new instance (kept until that is known) and
        True is returned; anything else (links, monitors, exit signals) is answered as
        for any dead pid."""
        if pid not in self.moved or item[0] not in (SEND, CAST, CALL):
            return False
        target = self.moved[pid]
        if isinstance(target, list):
            target.append((sender, item))
        else:
            self._forward(sender, item, target)
        return True

    def moved_to(self, pid: Pid, new: Pid | None) -> list[Any]:
        """`pid`'s new instance is `new` (None: none could be started): the frames
        kept for it are forwarded; returns the relays of calls under way."""
        if new is not None and (new == pid or new[0] == self.node.name):
            # never the handed-off pid itself, nor any other of this stopping node's
            log.error("handoff of %r answered %r, not a new instance elsewhere", pid, new)
            new = None
        kept = self.moved.get(pid)
        self.moved[pid] = new
        tasks: list[Any] = []
        if isinstance(kept, list):
            for sender, item in kept:
                task = self._forward(sender, item, new)
                if task is not None:
                    tasks.append(task)
        return tasks

    def _forward(self, sender: str, item: Any, new: Pid | None) -> Any:
        node = self.node
        op = item[0]
        if op == CALL:
            caller = RemoteCaller(self.cluster.remote, sender, item[1])
            if new is None:
                caller.fail(NoProcess(f"{item[2]!r} was handed off and no new instance started"))
                return None
            return self.cluster.store.tasks.spawn(relay(node, new, caller, item[3]))
        if new is None:
            log.error(
                "a message from %s to handed-off %r is lost: no new instance", sender, item[1]
            )
        elif op == SEND:
            node.send(new, item[2])
        else:
            node.cast(new, item[2])
        return None
