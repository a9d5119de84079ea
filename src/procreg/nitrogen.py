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
from typing import TYPE_CHECKING, Any

from .kernel import current_node
from .pid import Pid
from .registry import DEFAULT_TABLE, check_factory, check_key, spawn_for
from .waits import TaskLock

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = [
    "HandlerSlot",
    "NprocregHandler",
    "ProcessRegistryHandler",
    "finish_handler",
    "get_pid",
    "start_handler",
]


class ProcessRegistryHandler:
    """The behaviour. Every callback receives the handler's ``config`` (a dict the
    node was given as ``handler_config``) and its current ``state``, and returns the
    new state (``get_pid`` returns ``(pid_or_None, new_state)``).

    ``get_pid(key, config, state)`` looks up; ``get_pid(key, function, config, state)``
    looks up or spawns from `function` (an ``async def`` with no arguments, or a
    `Server` subclass). Subclasses override `lookup_pid` and `spawn_pid`, the two
    arities of ``get_pid`` under their own names; ``get_pid`` dispatches on arity.

    `serialized` (default True): `procreg.nitrogen.get_pid` runs this handler's calls
    one at a time, so that each sees the state the previous one returned. A call
    made while another is running waits for it; one that could never get its turn
    (``get_pid`` from inside the handler's own callback, or from the ``init`` of a
    process a running ``get_pid`` is starting) raises `procreg.Deadlock` instead.
    A handler that keeps no state (returns the state it is given) sets it False and
    its calls run concurrently, never waiting on each other.
    """

    serialized: bool = True

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
    """The default handler: the node's registry, table ``table`` (``"default"``).

    It keeps no state, so its calls are not serialized: a ``get_pid/4`` that waits on
    a process's ``init`` holds no other caller back, and an ``init`` may itself call
    ``get_pid`` (its own key raises `procreg.Deadlock`, as `procreg.get_or_spawn`
    does)."""

    serialized = False

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
        node = current_node()
        pid, _ = await spawn_for(node, key, function, (), self.table, "local", None, None)
        return pid, state


class HandlerSlot:
    """A node's registry handler, its config and its current state, and the lock that
    runs a `serialized` handler's calls one at a time (a `waits.TaskLock`: a call
    that could never get its turn raises `Deadlock`). Made by `start_handler`."""

    __slots__ = ("config", "handler", "lock", "state")

    def __init__(self, node: Kernel, handler: Any, config: dict[str, Any]) -> None:
        self.handler = handler
        self.config = config  # the node's ``handler_config`` (each callback gets a copy)
        self.state: Any = None
        self.lock = TaskLock(node, "the registry handler")


_LAYER = "nitrogen"  # (the node's ``layers`` key of its `HandlerSlot`)


async def start_handler(node: Kernel, handler: Any, config: dict[str, Any]) -> HandlerSlot:
    """Give `node` its registry `handler` (`ProcessRegistryHandler`) and run the
    handler's ``init`` with a copy of `config` (its error is raised). Called by
    `procreg.Node.start`."""
    slot = node.layers[_LAYER] = HandlerSlot(node, handler, config)
    slot.state = await handler.init(dict(config), None)
    return slot


async def finish_handler(node: Kernel) -> None:
    """Run the ``finish`` callback of `node`'s handler (by `procreg.Node.stop`)."""
    slot: HandlerSlot | None = node.layers.get(_LAYER)
    if slot is not None:
        slot.state = await slot.handler.finish(dict(slot.config), slot.state)


async def get_pid(key: Hashable, function: Any = None) -> Pid | None:
    """Ask the current node's handler: ``get_pid(key)`` or ``get_pid(key, function)``.

    The handler's state belongs to the node: the calls of a `serialized` handler run
    one at a time, each seeing the state the previous one returned, and a call that
    could never get its turn raises `procreg.Deadlock` (see
    `ProcessRegistryHandler`). No lock is held for the default handler, which keeps
    no state: its calls run concurrently."""
    slot: HandlerSlot = current_node().layers[_LAYER]
    if not getattr(slot.handler, "serialized", True):
        return await _get_pid(slot, key, function)
    await slot.lock.acquire()
    try:
        return await _get_pid(slot, key, function)
    finally:
        slot.lock.release()


async def _get_pid(slot: HandlerSlot, key: Hashable, function: Any) -> Pid | None:
    handler: ProcessRegistryHandler = slot.handler
    config = dict(slot.config)  # the handler's to change, not the node's
    if function is None:
        pid, slot.state = await handler.get_pid(key, config, slot.state)
        return pid
    pid, slot.state = await handler.get_pid(key, function, config, slot.state)
    return pid
