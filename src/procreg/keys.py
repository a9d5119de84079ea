"""Registry keys: the checks every entry point makes on keys, tables and factories,
who the caller is, and `spawn_for` (a backend's `get_or_spawn` with deadlock
detection). Shared by every backend, the `procreg` functions, the Nitrogen handler,
supervisors and `pi`; re-exported from `procreg.registry`.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .errors import NotInProcess
from .pid import Pid
from .process import _Proc
from .spawning import is_server_class
from .waits import waiting_on

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = ["caller_pid", "check_factory", "check_key", "check_table", "spawn_for"]


def check_key(key: Any, what: str = "key") -> None:
    """Raise `TypeError` naming the type of an unhashable key."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"registry {what} must be hashable, got {type(key).__name__}: {key!r}"
        ) from None


def check_table(table: Any) -> None:
    """Raise `TypeError` for a table name that is not a str."""
    if not isinstance(table, str):
        raise TypeError(f"table must be a str, got {type(table).__name__}: {table!r}")


def _safe_repr(value: Any) -> str:
    return object.__repr__(value) if isinstance(value, _Proc) else repr(value)


def check_factory(factory: Any) -> None:
    """A factory is a `Server` subclass or an ``async def`` function."""
    if is_server_class(factory):
        return
    if inspect.iscoroutinefunction(factory):
        return
    raise TypeError(
        "factory must be a Server subclass or an `async def` function, got "
        f"{type(factory).__name__} {_safe_repr(factory)}"
    )


async def spawn_for(
    node: Kernel,
    key: Hashable,
    factory: Any,
    args: tuple[Any, ...],
    table: str,
    placement: str,
    meta: dict[str, Any] | None,
    idle_timeout: float | None,
) -> tuple[Pid, bool]:
    """``node.registry.get_or_spawn(...)`` for every caller (the `procreg` functions
    and the Nitrogen handler), whatever the backend: raises `Deadlock` when the
    caller would wait on its own start (an async ``init`` that waits on its own key,
    directly or through other keys), instead of waiting forever.

    While no start with an async ``init`` is under way on the node and no task holds
    the handler lock (the common case), no chain of waits can lead back to the
    caller, so the wait is not recorded: recording it costs about a third of a
    local `get_or_spawn` of a new key. The one cycle this misses, an async ``init``
    that calls the very process whose ``get_or_spawn`` started it, ends with that
    call's `CallTimeout` instead of `Deadlock`."""
    if not node._starting and not node._held:
        return await node.registry.get_or_spawn(
            key, factory, args, table, placement, meta, idle_timeout
        )
    with waiting_on(node, (table, key)):
        return await node.registry.get_or_spawn(
            key, factory, args, table, placement, meta, idle_timeout
        )


def caller_pid(node: Kernel, pid: Pid | None, what: str) -> Pid:
    """`pid`, or the calling process's pid when `pid` is None."""
    if pid is not None:
        return pid
    me = node.me()
    if me is None:
        raise NotInProcess(f"{what} without a pid must be called from inside a process")
    return me._procreg_pid
