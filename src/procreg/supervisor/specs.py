"""Child specs and what checks them: `child(...)`, `ChildSpec`, `ChildStatus` (a row
of `Supervisor.which_children`), the supervisor flags, the errors of supervisor
requests, and `_Child` (a spec with the pid of its current incarnation)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ProcregError
from ..options import check_bound
from ..pid import Pid
from ..registry import DEFAULT_TABLE, check_factory, check_key
from ..scope import check_scope

__all__ = [
    "RESTARTS",
    "STRATEGIES",
    "SUPERVISORS",
    "AlreadyPresent",
    "AlreadyStarted",
    "ChildSpec",
    "ChildStatus",
    "SupervisorError",
    "child",
]

SUPERVISORS: Final = "supervisors"
"""The registry table that named supervisors are registered in."""

STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS: Final = ("permanent", "transient", "temporary")


class SupervisorError(ProcregError):
    """A supervisor request that cannot be done (unknown child, child running, ...)."""


class AlreadyStarted(SupervisorError):
    """`start_child` of an id whose child is running; `pid` is that child."""

    def __init__(self, child_id: Hashable, pid: Pid) -> None:
        super().__init__(f"child {child_id!r} is already started: {pid!r}")
        self.child_id = child_id
        self.pid = pid


class AlreadyPresent(SupervisorError):
    """`start_child` of an id whose spec is kept but not running (use
    `restart_child`, or `delete_child` first)."""

    def __init__(self, child_id: Hashable) -> None:
        super().__init__(f"child {child_id!r} is already present (not running)")
        self.child_id = child_id


def _check_flags(strategy: Any, intensity: Any, period: Any) -> None:
    """Clear errors for bad supervisor flags."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(intensity, bool) or not isinstance(intensity, int):
        raise TypeError(f"intensity must be an int, got {intensity!r}")
    if intensity < 0:
        raise ValueError(f"intensity must be >= 0, got {intensity!r}")
    if isinstance(period, bool) or not isinstance(period, (int, float)) or period <= 0:
        raise ValueError(f"period must be a number of seconds > 0, got {period!r}")


_SUPERVISOR_OPTIONS: Final = frozenset({"strategy", "intensity", "period", "name"})


def _check_shutdown(shutdown: Any) -> None:
    if shutdown in ("infinity", "brutal_kill"):
        return
    if isinstance(shutdown, bool) or not isinstance(shutdown, (int, float)) or shutdown < 0:
        raise ValueError(
            f"shutdown must be seconds >= 0, 'brutal_kill' or 'infinity', got {shutdown!r}"
        )


class _SupervisorBase:
    """The base of `Supervisor` (in `procreg.supervisor.tree`), by which specs know a
    supervisor class without importing it."""


def _is_supervisor_class(factory: Any) -> bool:
    """True for `Supervisor` and its subclasses."""
    return isinstance(factory, type) and issubclass(factory, _SupervisorBase)


@dataclass(frozen=True)
class ChildSpec:
    """How to start, restart and stop one child. Make it with `child`."""

    id: Hashable
    factory: Any
    args: tuple[Any, ...] = ()
    restart: str = "permanent"
    shutdown: float | str = 5.0
    key: Hashable | None = None
    table: str = DEFAULT_TABLE
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_mailbox: int | None = None
    overflow: str | None = None
    scope: str = "node"

    @property
    def is_supervisor(self) -> bool:
        return _is_supervisor_class(self.factory)


def child(
    factory: Any,
    *args: Any,
    id: Hashable = None,
    restart: str = "permanent",
    shutdown: float | str | None = None,
    key: Hashable | None = None,
    table: str = DEFAULT_TABLE,
    max_mailbox: int | None = None,
    overflow: str | None = None,
    scope: str = "node",
    **kwargs: Any,
) -> ChildSpec:
    """A child spec: start `factory` (a `Server` subclass, an ``async def`` body, or a
    `Supervisor` class) with `args`; `id` names it within its supervisor (required);
    `key`/`table`, if given, register every incarnation in the registry, so the
    current pid is always found under the same key. `max_mailbox` and `overflow`
    bound each incarnation's mailbox (see `procreg.spawn`; a worker ended by a full
    mailbox under ``overflow="exit"`` exits with ``"overload"`` and is restarted
    as its `restart` says). Extra keyword arguments go to a `Supervisor` factory
    (``strategy=``, ``intensity=``, ...).

    ``scope="cluster"`` (with a `key`, under a *named* supervisor) makes the child
    one instance cluster-wide (see `procreg.scope`): the key is claimed before its
    ``init`` runs, its spec (factory and args: importable and picklable) is kept in
    the cluster store, and if its node dies, fences itself or stops gracefully, the
    supervisor of the same name on a surviving node starts it again (with the state
    its ``handoff()`` gave, on a graceful stop).

    >>> child(lambda: None, id="x")
    Traceback (most recent call last):
    ...
    TypeError: factory must be a Server subclass, a Supervisor class or an `async def` ...
    """
    if id is None:
        raise ValueError("a child spec needs an id: child(factory, ..., id=...)")
    check_key(id, "child id")
    is_sup = _is_supervisor_class(factory)
    check_bound(max_mailbox, overflow)
    if is_sup:
        if max_mailbox is not None or overflow is not None:
            raise TypeError("a supervisor child takes no max_mailbox/overflow")
        unknown = set(kwargs) - _SUPERVISOR_OPTIONS
        if unknown:
            raise TypeError(f"unexpected supervisor options: {sorted(unknown)}")
        _check_flags(
            kwargs.get("strategy", factory.strategy),
            kwargs.get("intensity", factory.intensity),
            kwargs.get("period", factory.period),
        )
    else:
        try:
            check_factory(factory)
        except TypeError:
            raise TypeError(
                "factory must be a Server subclass, a Supervisor class or an `async def` "
                f"function, got {factory!r}"
            ) from None
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for a worker child: {sorted(kwargs)}")
    if restart not in RESTARTS:
        raise ValueError(f"restart must be one of {RESTARTS}, got {restart!r}")
    if shutdown is None:
        shutdown = "infinity" if is_sup else 5.0
    _check_shutdown(shutdown)
    if key is not None:
        check_key(key)
    check_scope(scope)
    if scope == "cluster" and (key is None or is_sup):
        raise ValueError("a cluster-scoped child needs a key= and must be a worker")
    return ChildSpec(
        id,
        factory,
        tuple(args),
        restart,
        shutdown,
        key,
        table,
        dict(kwargs),
        max_mailbox,
        overflow,
        scope,
    )


@dataclass
class ChildStatus:
    """One row of `Supervisor.which_children`."""

    id: Hashable
    pid: Pid | None
    kind: str  # "worker" or "supervisor"
    restart: str


class _Child:
    """A child of a supervisor; setting `pid` keeps the supervisor's pid index."""

    __slots__ = ("_by_pid", "_pid", "spec")

    def __init__(self, spec: ChildSpec, by_pid: dict[Pid, _Child]) -> None:
        self.spec = spec
        self._by_pid = by_pid
        self._pid: Pid | None = None

    @property
    def pid(self) -> Pid | None:
        return self._pid

    @pid.setter
    def pid(self, pid: Pid | None) -> None:
        if self._pid is not None and self._by_pid.get(self._pid) is self:
            del self._by_pid[self._pid]
        self._pid = pid
        if pid is not None:
            self._by_pid[pid] = self


def _validate(strategy: Any, intensity: Any, period: Any, specs: list[ChildSpec]) -> None:
    _check_flags(strategy, intensity, period)
    seen: set[Hashable] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be child(...) specs, got {spec!r}")
        if spec.id in seen:
            raise ValueError(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)
