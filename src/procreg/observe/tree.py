"""The supervision trees of one node as the observer shows them: the node's root
supervisor and the other named supervisors, each with its children, recursively
(`Supervisor.which_children`); ids and keys shown readably.

A supervisor answers one request at a time and may be busy restarting children, so
each question has a timeout; a supervisor that does not answer in time is shown with
an ``error`` instead of children. Depth and width are capped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any, Final

from ..errors import ProcregError
from ..introspection import readable_key
from ..node import Node
from ..pid import Pid
from ..supervisor import SUPERVISORS, Supervisor
from .snapshot import keys_and_groups

__all__ = ["supervision_tree"]

MAX_DEPTH: Final = 8
MAX_CHILDREN: Final = 200


async def _describe(
    node: Node,
    pid: Pid,
    child_id: Hashable,
    restart: str | None,
    depth: int,
    seen: set[Pid],
    timeout: float,
) -> dict[str, Any]:
    seen.add(pid)
    info = node.info(pid)
    entry: dict[str, Any] = {
        "id": readable_key(child_id),
        "pid": str(pid),
        "kind": "supervisor",
        "restart": restart,
        "process_kind": info.kind if info else None,
        "behaviour": info.behaviour if info else None,
        "keys": keys_and_groups(node, pid)[0],
        "children": [],
    }
    if depth >= MAX_DEPTH:
        entry["error"] = "deeper levels not shown"
        return entry
    try:
        kids = await asyncio.wait_for(Supervisor.which_children(pid), timeout)
    except (TimeoutError, ProcregError) as exc:
        entry["error"] = f"no answer: {type(exc).__name__}"
        return entry
    for kid in kids[:MAX_CHILDREN]:
        if kid.kind == "supervisor" and kid.pid is not None and kid.pid not in seen:
            entry["children"].append(
                await _describe(node, kid.pid, kid.id, kid.restart, depth + 1, seen, timeout)
            )
            continue
        kid_info = node.info(kid.pid) if kid.pid is not None else None
        entry["children"].append(
            {
                "id": readable_key(kid.id),
                "pid": str(kid.pid) if kid.pid is not None else None,
                "kind": kid.kind,
                "restart": kid.restart,
                "process_kind": kid_info.kind if kid_info else None,
                "behaviour": kid_info.behaviour if kid_info else None,
                "keys": keys_and_groups(node, kid.pid)[0] if kid.pid is not None else [],
                "children": [],
            }
        )
    if len(kids) > MAX_CHILDREN:
        entry["error"] = f"{len(kids) - MAX_CHILDREN} more children not shown"
    return entry


async def supervision_tree(node: Node, timeout: float = 1.0) -> list[dict[str, Any]]:
    """The trees of the named supervisors of `node` (the root supervisor first), each
    a dict with ``id``, ``pid``, ``kind`` (``"supervisor"`` or ``"worker"``),
    ``restart``, ``process_kind`` (class name), ``behaviour``, ``keys`` and
    ``children``. Does not start the root supervisor if it is not running."""
    named = sorted(node.registry.entries(SUPERVISORS), key=lambda e: (e[0] != "root", repr(e[0])))
    seen: set[Pid] = set()
    trees = []
    for name, pid in named:
        if pid not in seen and node.is_alive(pid):
            trees.append(await _describe(node, pid, name, None, 0, seen, timeout))
    return trees
