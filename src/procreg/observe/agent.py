"""How an observer on one node sees the other nodes of its cluster: it asks each an
`ObserverAgent`, a small server process started on that node on first need.

`ClusterView.ask(node, name, request)` answers a request about the node `name`: on
`node` itself by calling the `snapshot` and `tree` functions directly, on another
node by calling that node's agent through the cluster (a remote call, like any
other). The agent is started there with the cluster's remote spawn (placement by
name: ``get_or_spawn(name, ObserverAgent, table=AGENTS_TABLE)`` run on that node),
registered under the node's name in the table ``"procreg.observer"``, and ends when
no observer has asked it anything for `AGENT_IDLE` seconds. Nothing runs on a node
that nobody observes.

Requests (tuples, answered with JSON-ready dicts and lists):

==========================================  =========================================
``("overview",)``                           `snapshot.node_overview`
``("processes", offset, limit)``            `snapshot.process_page`
``("search", query, cursor, limit, scan)``  `snapshot.search_processes`
``("process", pid_text)``                   `snapshot.process_row` (None: gone)
``("tree",)``                               `tree.supervision_tree`
==========================================  =========================================

Every node runs the same procreg, so the agent's class is found by name on each
(``procreg.observe.agent:ObserverAgent``); a node that cannot answer in time is shown
as not answering, never waited for.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ..errors import NodeDown, NoProcess, ProcessExited, ProcregError
from ..node import Node, current_node
from ..pid import Pid
from ..server import Server
from .snapshot import (
    node_overview,
    parse_pid,
    process_page,
    process_row,
    redis_cluster,
    search_processes,
)
from .tree import supervision_tree

__all__ = ["AGENTS_TABLE", "AGENT_IDLE", "ClusterView", "ObserverAgent", "answer", "describe_error"]

AGENTS_TABLE: Final = "procreg.observer"
"""The registry table of the observer agents (key: the node's name)."""

AGENT_IDLE: Final = 600.0
"""Seconds without a request after which an agent ends."""


async def answer(node: Node, request: tuple[Any, ...]) -> Any:
    """The answer to one observer `request` (see the module's table) about `node`;
    `ValueError` for an unknown request."""
    op = request[0] if request else None
    if op == "overview":
        return node_overview(node)
    if op == "processes":
        return process_page(node, int(request[1]), int(request[2]))
    if op == "search":
        _, query, cursor, limit, scan = request
        return search_processes(node, str(query), int(cursor), int(limit), int(scan))
    if op == "process":
        pid = parse_pid(str(request[1]))
        return process_row(node, pid) if pid is not None and pid[0] == node.name else None
    if op == "tree":
        return await supervision_tree(node)
    raise ValueError(f"unknown observer request {op!r}")


class ObserverAgent(Server):
    """A node's answerer of other nodes' observers: ``call(agent, request)`` returns
    `answer(node, request)` for its own node."""

    async def handle_call(self, request: Any) -> Any:
        """Answer one request (see the module's table)."""
        if not isinstance(request, tuple):
            raise ValueError("an observer request is a tuple")
        return await answer(current_node(), request)


class ClusterView:
    """The observing side: asks any live node of `node`'s cluster (or `node` itself)
    and remembers each node's agent."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._agents: dict[str, Pid] = {}

    async def _agent(self, node: Node, name: str) -> Pid:
        cluster = redis_cluster(node)
        if cluster is None or name not in cluster.remote.live:
            raise NodeDown(f"node {name!r} is not a live node of this cluster")
        pid = self._agents.get(name)
        if pid is None or pid[1] != cluster.remote.live[name]:
            pid, _ = await cluster.remote.spawn(
                name, name, ObserverAgent, (), AGENTS_TABLE, None, AGENT_IDLE, self.timeout
            )
            self._agents[name] = pid
        return pid

    async def ask(self, node: Node, name: str, request: tuple[Any, ...]) -> Any:
        """The answer of node `name` to `request` (see the module's table). Raises
        `NodeDown` if `name` is not live, `procreg.CallTimeout` if it did not answer
        in `timeout` seconds, or what answering raised there."""
        if name == node.name:
            return await answer(node, request)
        for attempt in range(2):
            pid = await self._agent(node, name)
            try:
                return await node.call(pid, request, self.timeout)
            except (NoProcess, ProcessExited):
                # its agent ended (idle, or the node restarted it): start another
                self._agents.pop(name, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def ask_all(
        self, node: Node, names: list[str], request: tuple[Any, ...]
    ) -> dict[str, Any]:
        """`ask` each of `names` at once: name -> answer, or the exception raised.
        `names` are all the live nodes: the agents of the others are forgotten (with
        default node names, ``<host>-<pid>``, a restarted node never comes back)."""
        for gone in set(self._agents) - set(names):
            del self._agents[gone]
        results = await asyncio.gather(
            *(self.ask(node, name, request) for name in names), return_exceptions=True
        )
        out: dict[str, Any] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out[name] = result
        return out


def describe_error(exc: BaseException) -> str:
    """Why a node did not answer, for the page."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ProcregError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}"
