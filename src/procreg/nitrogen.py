"""Nitrogen's process registry handler behaviour, over procreg's registry.

Nitrogen (the Erlang web framework) looks processes up through a pluggable *process
registry handler* with four callbacks: ``init``, ``finish``, ``get_pid(Key)`` and
``get_pid(Key, Function)``; the default, ``nprocreg``, links the registries of all
nodes. Here the same behaviour is a class; `NprocregHandler` (the default) delegates
to the node's registry, which is atomic and cluster-wide where nprocreg was neither.

>>> import procreg
>>> from procreg import nitrogen
>>> async def comet_pool():
...     while True:
...         await procreg.receive()
>>> async def main():
...     pid = await nitrogen.get_pid("pool:lobby", comet_pool)
...     again = await nitrogen.get_pid("pool:lobby")
...     return pid == again
>>> procreg.run(main)
True

A node uses another handler with ``Node(registry_handler=MyHandler())``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .node import current_node
from .pid import Pid
from .registry import DEFAULT_TABLE, check_factory, check_key

__all__ = ["NprocregHandler", "ProcessRegistryHandler", "get_pid"]


class ProcessRegistryHandler:
    """The behaviour. Every callback receives the handler's ``config`` (a dict the
    node was given as ``handler_config``) and its current ``state``, and returns the
    new state (``get_pid`` returns ``(pid_or_None, new_state)``).

    ``get_pid(key, config, state)`` looks up; ``get_pid(key, function, config, state)``
    looks up or spawns from `function` (an ``async def`` with no arguments, or a
    `Server` subclass). Subclasses override `lookup_pid` and `spawn_pid`, the two
    arities of ``get_pid`` under their own names; ``get_pid`` dispatches on arity.
    """

    async def init(self, config: dict[str, Any], state: Any) -> Any:
        """Set the handler up when its node starts; returns the new state."""
        return state

    async def finish(self, config: dict[str, Any], state: Any) -> Any:
        """Clean up when its node stops; returns the new state."""
        return state

    async def lookup_pid(
        self, key: Hashable, config: dict[str, Any], state: Any
    ) -> tuple[Pid | None, Any]:
        """``get_pid/3``: the pid for `key`, or None."""
        raise NotImplementedError

    async def spawn_pid(
        self, key: Hashable, function: Any, config: dict[str, Any], state: Any
    ) -> tuple[Pid, Any]:
        """``get_pid/4``: the pid for `key`, spawning one from `function` if missing."""
        raise NotImplementedError

    async def get_pid(self, key: Hashable, *args: Any) -> tuple[Pid | None, Any]:
        """``get_pid(key, config, state)`` or ``get_pid(key, function, config, state)``."""
        if len(args) == 2:
            return await self.lookup_pid(key, args[0], args[1])
        if len(args) == 3:
            return await self.spawn_pid(key, args[0], args[1], args[2])
        raise TypeError(
            "get_pid takes (key, config, state) or (key, function, config, state), "
            f"got {1 + len(args)} arguments"
        )


class NprocregHandler(ProcessRegistryHandler):
    """The default handler: the node's registry, table ``table`` (``"default"``)."""

    def __init__(self, table: str = DEFAULT_TABLE) -> None:
        self.table = table

    async def lookup_pid(
        self, key: Hashable, config: dict[str, Any], state: Any
    ) -> tuple[Pid | None, Any]:
        check_key(key)
        return await current_node().registry.whereis(key, self.table), state

    async def spawn_pid(
        self, key: Hashable, function: Any, config: dict[str, Any], state: Any
    ) -> tuple[Pid, Any]:
        check_key(key)
        check_factory(function)
        pid, _ = await current_node().registry.get_or_spawn(key, function, (), self.table)
        return pid, state


async def get_pid(key: Hashable, function: Any = None) -> Pid | None:
    """Ask the current node's handler: ``get_pid(key)`` or ``get_pid(key, function)``.

    The handler's state belongs to the node, so calls are serialised: each sees the
    state the previous one returned."""
    node = current_node()
    async with node._handler_lock:
        return await _get_pid(node, key, function)


async def _get_pid(node: Any, key: Hashable, function: Any) -> Pid | None:
    handler: ProcessRegistryHandler = node.handler
    if function is None:
        pid, node._handler_state = await handler.get_pid(
            key, node.handler_config, node._handler_state
        )
        return pid
    pid, node._handler_state = await handler.get_pid(
        key, function, node.handler_config, node._handler_state
    )
    return pid
