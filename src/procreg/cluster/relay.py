"""Relaying what a handed-off process had not handled to its new instance."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import ProcessExited, ProcregError
from ..pid import Pid
from ..process import fail_caller
from .tasks import Tasks

__all__ = ["relay", "relay_calls"]


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
