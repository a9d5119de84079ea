"""Supervision trees: `Supervisor`, child specs (`child`) and the dynamic-children API.

A supervisor is a process that starts its children in order, linked to it, watches
them (it traps exits), restarts them by its `strategy` and their `restart` type, and
stops them in reverse order. More than `intensity` restarts within `period` seconds and
it gives up: it stops its children and exits with reason ``"shutdown"``, so that its own
supervisor decides (escalation). As in OTP:

- strategies: ``one_for_one`` (restart the child that ended), ``one_for_all`` (stop
  the others, restart all), ``rest_for_one`` (stop and restart the ones started
  after it);
- restart types: ``permanent`` (always restarted), ``transient`` (restarted unless it
  ended with ``"normal"`` or ``"shutdown"``), ``temporary`` (never; its spec is
  dropped when it ends);
- ``shutdown``: seconds a child gets to stop after ``exit(child, "shutdown")`` before
  it is killed; ``"brutal_kill"`` kills at once; ``"infinity"`` waits (the default
  for child supervisors).

>>> import asyncio, procreg
>>> class Worker(procreg.Server):
...     def handle_call(self, request):
...         return "pong"
>>> async def main():
...     sup = await procreg.Supervisor.start([procreg.child(Worker, id="w", key="worker")])
...     first = await procreg.whereis("worker")
...     procreg.exit(first, "boom")            # crash it: the supervisor restarts it
...     await asyncio.sleep(0.01)
...     second = await procreg.whereis("worker")
...     return first != second and await procreg.call(second, "ping")
>>> procreg.run(main)
'pong'
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

from .errors import AlreadyRegistered, NoProcess, ProcregError, Stop
from .messages import Call, Down, Exit
from .node import Node, check_bound, check_timeout, current_node, serving_task, waiting_on
from .pid import Pid
from .process import EXITING, _Proc, current_process
from .registry import DEFAULT_TABLE, LocalBackend, check_factory, check_key

__all__ = [
    "SUPERVISORS",
    "AlreadyPresent",
    "AlreadyStarted",
    "ChildSpec",
    "ChildStatus",
    "Supervisor",
    "SupervisorError",
    "child",
    "root",
]

log = logging.getLogger("procreg")

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

    @property
    def is_supervisor(self) -> bool:
        return isinstance(self.factory, type) and issubclass(self.factory, Supervisor)


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

    >>> child(lambda: None, id="x")
    Traceback (most recent call last):
    ...
    TypeError: factory must be a Server subclass, a Supervisor class or an `async def` ...
    """
    if id is None:
        raise ValueError("a child spec needs an id: child(factory, ..., id=...)")
    check_key(id, "child id")
    is_sup = isinstance(factory, type) and issubclass(factory, Supervisor)
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
    return ChildSpec(
        id, factory, tuple(args), restart, shutdown, key, table, dict(kwargs), max_mailbox, overflow
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


class _StopRequest(NamedTuple):
    """`Supervisor.stop`'s request (OTP's ``sys:terminate``): stop the children in
    reverse order, then end with `reason`."""

    reason: Any


class _Stop(Exception):
    """Raised inside the supervisor loop to end it with a reason."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason


class Supervisor:
    """A supervisor process. Start one with ``await Supervisor.start(children, ...)``,
    or subclass and set `strategy`, `intensity`, `period` and override `children`.

    The methods that talk to a running supervisor take its pid or its name.
    """

    strategy: str = "one_for_one"
    intensity: int = 3
    period: float = 5.0

    def children(self) -> Sequence[ChildSpec]:
        """The initial children of a subclass (the default: none)."""
        return ()

    # -- starting -------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        children: Sequence[ChildSpec] | None = None,
        *,
        strategy: str | None = None,
        intensity: int | None = None,
        period: float | None = None,
        name: Hashable | None = None,
        link: bool = False,
    ) -> Pid:
        """Start a supervisor and its children (in order); returns once they are all
        up. If a child fails to start, the ones started are stopped and the error is
        raised. `name` registers it in the ``"supervisors"`` table."""
        sup = cls()
        sup.strategy = strategy if strategy is not None else cls.strategy
        sup.intensity = intensity if intensity is not None else cls.intensity
        sup.period = period if period is not None else cls.period
        specs = list(children) if children is not None else list(sup.children())
        _validate(sup.strategy, sup.intensity, sup.period, specs)
        if name is not None:
            check_key(name, "supervisor name")
        node = current_node()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Pid] = loop.create_future()
        run = _Running(sup.strategy, sup.intensity, sup.period)
        pid = node.spawn(  # unbounded whatever the node's default: it must see every call
            run.main, specs, name, ready, link=link, trap_exits=True, max_mailbox=0
        )
        try:
            # recorded, so that a child's init calling the caller raises Deadlock
            task = serving_task(node._procs[pid])
            if task is None:
                return await ready
            with waiting_on(node, task):
                return await ready
        except BaseException:
            if node.is_alive(pid):
                node.exit(pid, "kill")
            if link and node.me() is not None:
                node.unlink(pid)  # its failure is reported by this exception,
                _flush_exit(pid)  # not by an exit signal to the starter
            raise

    # -- the API for a running supervisor -------------------------------------------
    @staticmethod
    async def start_child(sup: Pid | Hashable, spec: ChildSpec) -> Pid:
        """Start a new child under `sup`. If it fails to start, its error is raised and
        the tree is left as it was."""
        return await _request(sup, "start_child", spec)  # type: ignore[no-any-return]

    @staticmethod
    async def terminate_child(sup: Pid | Hashable, child_id: Hashable) -> None:
        """Stop a child (its spec stays, except for temporary children)."""
        await _request(sup, "terminate_child", child_id)

    @staticmethod
    async def restart_child(sup: Pid | Hashable, child_id: Hashable) -> Pid:
        """Start again a child that was terminated."""
        return await _request(sup, "restart_child", child_id)  # type: ignore[no-any-return]

    @staticmethod
    async def delete_child(sup: Pid | Hashable, child_id: Hashable) -> None:
        """Forget a terminated child's spec."""
        await _request(sup, "delete_child", child_id)

    @staticmethod
    async def which_children(sup: Pid | Hashable) -> list[ChildStatus]:
        """The children, in start order, with their current pid (None if not running)."""
        return await _request(sup, "which_children")  # type: ignore[no-any-return]

    @staticmethod
    async def count_children(sup: Pid | Hashable) -> dict[str, int]:
        """Counts: ``specs``, ``active``, ``supervisors``, ``workers``."""
        return await _request(sup, "count_children")  # type: ignore[no-any-return]

    @staticmethod
    async def stop(
        sup: Pid | Hashable, reason: Any = "shutdown", timeout: float | None = None
    ) -> None:
        """Stop `sup` with `reason` (any reason, ``"normal"`` included) as OTP's
        ``gen_server:stop/3`` does: the supervisor stops its children in reverse
        start order, then ends with `reason`; returns once it has ended. Returns at
        once if it is not alive.

        Raises `TimeoutError` if it has not ended within `timeout` seconds (None: wait
        as long as it takes); the stop goes on regardless. `NoProcess` for an unknown
        name. A pid that is not a supervisor gets ``exit(pid, reason)``.
        """
        check_timeout(timeout)
        pid = await _resolve(sup)
        node = current_node()
        if not node.is_alive(pid):
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Any] = loop.create_future()
        is_sup = pid in node._supervisors

        async def watch() -> None:
            # a process of its own monitors the end, from outside a process too, and
            # no Down is left in the caller's mailbox after a timeout
            ref = node.monitor(pid)
            if is_sup:
                node.send(pid, _StopRequest(reason))
            else:
                node.exit(pid, reason)
            down = await _receive(match=lambda m: type(m) is Down and m.ref == ref)
            if not ended.done():
                ended.set_result(down.reason)

        watcher = node.spawn(watch)
        try:
            await asyncio.wait_for(asyncio.shield(ended), timeout)
        except TimeoutError:
            raise TimeoutError(f"supervisor {pid!r} did not stop within {timeout} s") from None
        finally:
            node.exit(watcher, "kill")

    @staticmethod
    async def get_child_spec(sup: Pid | Hashable, child_id: Hashable) -> ChildSpec:
        """The spec of a child."""
        return await _request(sup, "get_spec", child_id)  # type: ignore[no-any-return]


def _validate(strategy: Any, intensity: Any, period: Any, specs: list[ChildSpec]) -> None:
    _check_flags(strategy, intensity, period)
    seen: set[Hashable] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be child(...) specs, got {spec!r}")
        if spec.id in seen:
            raise ValueError(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)


class _Running:
    """The supervisor process's state and loop. Kept apart from the `Supervisor`
    (sub)class instance, whose namespace is the user's: a subclass may define any
    name without touching the running supervisor."""

    def __init__(self, strategy: str, intensity: int, period: float) -> None:
        self.strategy = strategy
        self.intensity = intensity
        self.period = period

    async def main(
        self,
        specs: list[ChildSpec],
        name: Hashable | None,
        ready: asyncio.Future[Pid],
    ) -> None:
        node = current_node()
        me = current_process.get()
        assert me is not None
        self._me = me._procreg_pid
        self._parent: Pid | None = None
        links = me._procreg_ext.links if me._procreg_ext is not None else None
        if links:
            self._parent = next(iter(links))
        self._kids: list[_Child] = []  # in start order
        self._by_id: dict[Hashable, _Child] = {}
        self._by_pid: dict[Pid, _Child] = {}
        self._restarts: deque[float] = deque()
        node._supervisors[self._me] = self._parent
        try:
            await self._serve(node, me, specs, name, ready)
        finally:
            node._supervisors.pop(self._me, None)

    async def _serve(
        self,
        node: Node,
        me: _Proc,
        specs: list[ChildSpec],
        name: Hashable | None,
        ready: asyncio.Future[Pid],
    ) -> None:
        try:
            if name is not None:
                registry = node.registry
                if isinstance(registry, LocalBackend):
                    registry.register_now(name, me, SUPERVISORS)
                else:
                    await registry.register(name, me._procreg_pid, SUPERVISORS)
            for spec in specs:
                kid = _Child(spec, self._by_pid)
                kid.pid = await self._start_child(spec)
                self._add_kid(kid)
        except BaseException as exc:
            await self._stop_all()
            if not ready.done():
                ready.set_exception(exc)
            raise Stop("shutdown") from exc
        ready.set_result(self._me)
        try:
            while True:
                msg = await _receive()
                if type(msg) is Exit:
                    await self._on_exit(msg.pid, msg.reason)
                elif type(msg) is Call:
                    await self._on_call(msg)
                elif type(msg) is _StopRequest:
                    raise _Stop(msg.reason)
        except _Stop as stop:
            await self._stop_all()
            raise Stop(stop.reason) from None

    async def _start_child(self, spec: ChildSpec) -> Pid:
        """Start one child linked to this supervisor and register its key."""
        node = current_node()
        factory: Any = spec.factory
        pid: Pid
        if spec.is_supervisor:
            children = list(spec.args[0]) if spec.args else None
            pid = await factory.start(children, link=True, **spec.kwargs)
        elif getattr(factory, "_procreg_server", False):
            pid = await factory.start_ready(
                *spec.args, link=True, max_mailbox=spec.max_mailbox, overflow=spec.overflow
            )
        else:
            pid = node.spawn(
                factory,
                *spec.args,
                link=True,
                max_mailbox=spec.max_mailbox,
                overflow=spec.overflow,
            )
        if spec.key is not None:
            try:
                await node.registry.register(spec.key, pid, spec.table)
            except (AlreadyRegistered, NoProcess):
                node.unlink(pid)
                node.exit(pid, "kill")
                raise
        return pid

    async def _stop_child(self, kid: _Child) -> None:
        """Stop a child: ``exit(pid, "shutdown")``, wait up to its shutdown time for
        it to end, then kill it. Its link is removed first, so the supervisor learns
        of the end by a monitor and does not restart it."""
        pid = kid.pid
        if pid is None:
            return
        kid.pid = None
        node = current_node()
        node.unlink(pid)
        if not node.is_alive(pid):
            _flush_exit(pid)
            return
        ref = node.monitor(pid)
        shutdown = kid.spec.shutdown

        def is_down(m: Any) -> bool:
            return type(m) is Down and m.ref == ref

        if shutdown == "brutal_kill":
            node.exit(pid, "kill")
            await _receive(match=is_down)
        else:
            node.exit(pid, "shutdown")
            try:
                await _receive(None if shutdown == "infinity" else float(shutdown), is_down)
            except TimeoutError:
                log.warning("%r did not stop within %s s: killing it", pid, shutdown)
                node.exit(pid, "kill")
                await _receive(match=is_down)
        _flush_exit(pid)

    async def _stop_all(self) -> None:
        for kid in reversed(self._kids):
            await self._stop_child(kid)

    # -- child exits --------------------------------------------------------------
    async def _on_exit(self, pid: Pid | None, reason: Any) -> None:
        kid = self._by_pid.get(pid) if pid is not None else None
        if kid is None:
            # from the parent (whatever the reason, as OTP), or an explicit
            # procreg.exit(sup, reason) with a non-normal reason: stop the tree
            if (pid is not None and pid == self._parent) or reason != "normal":
                raise _Stop(reason)
            return
        kid.pid = None
        spec = kid.spec
        if spec.restart == "temporary":
            self._remove_kid(kid)
            return
        if spec.restart == "transient" and _is_normal_end(reason):
            return
        if current_node().stopping:
            return
        await self._restart(kid)

    def _count_restart(self) -> None:
        now = time.monotonic()
        window = self._restarts
        window.append(now)
        while window and window[0] <= now - self.period:
            window.popleft()
        if len(window) > self.intensity:
            log.error(
                "supervisor %r: more than %d restarts in %s s, giving up",
                self._me,
                self.intensity,
                self.period,
            )
            raise _Stop("shutdown")

    def _group(self, kid: _Child) -> list[_Child]:
        """The children a restart of `kid` stops and starts again, in start order."""
        if self.strategy == "one_for_one":
            return [kid]
        if self.strategy == "one_for_all":
            return list(self._kids)
        return self._kids[self._kids.index(kid) :]

    async def _restart(self, kid: _Child) -> None:
        """Restart `kid` by the strategy, as OTP's supervisor does: stop the rest of
        its group in reverse order, then start the group in order. If a start fails,
        the restart is tried again from the start with the same group (OTP's
        ``try_again``): the members already restarted in the failed try are stopped
        and started again, so ``one_for_all`` restarts the whole group and
        ``rest_for_one`` `kid` and those after it. Each try counts as a restart."""
        self._count_restart()  # one exit, one restart, however many children it takes
        while True:
            for other in reversed(self._group(kid)):
                await self._stop_child(other)
                if other is not kid and other.spec.restart == "temporary":
                    self._remove_kid(other)  # stopped, never restarted (OTP)
            member = kid
            try:
                for member in self._group(kid):
                    member.pid = await self._start_child(member.spec)
                return
            except Exception as exc:
                log.error("supervisor %r: restarting %r failed: %r", self._me, member.spec.id, exc)
            if current_node().stopping:
                return
            self._count_restart()  # a failed try counts as another restart

    # -- requests -------------------------------------------------------------------
    async def _on_call(self, msg: Call) -> None:
        from .api import reply

        op, *args = msg.request
        try:
            result = await getattr(self, "_do_" + op)(*args)
        except _Stop:
            raise
        except Exception as exc:
            result = _Failed(exc)
        reply(msg.caller, result)

    def _add_kid(self, kid: _Child) -> None:
        self._kids.append(kid)
        self._by_id[kid.spec.id] = kid

    def _remove_kid(self, kid: _Child) -> None:
        self._kids.remove(kid)
        del self._by_id[kid.spec.id]
        kid.pid = None

    def _find(self, child_id: Hashable) -> _Child:
        kid = self._by_id.get(child_id)
        if kid is None:
            raise SupervisorError(f"no child {child_id!r}")
        return kid

    async def _do_start_child(self, spec: ChildSpec) -> Pid:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be child(...) specs, got {spec!r}")
        kid = self._by_id.get(spec.id)
        if kid is not None:
            if kid.pid is not None:
                raise AlreadyStarted(spec.id, kid.pid)
            raise AlreadyPresent(spec.id)
        kid = _Child(spec, self._by_pid)
        kid.pid = await self._start_child(spec)
        self._add_kid(kid)
        return kid.pid

    async def _do_terminate_child(self, child_id: Hashable) -> None:
        kid = self._find(child_id)
        await self._stop_child(kid)
        if kid.spec.restart == "temporary":
            self._remove_kid(kid)

    async def _do_restart_child(self, child_id: Hashable) -> Pid:
        kid = self._find(child_id)
        if kid.pid is not None:
            raise SupervisorError(f"child {child_id!r} is running: {kid.pid!r}")
        kid.pid = await self._start_child(kid.spec)
        return kid.pid

    async def _do_delete_child(self, child_id: Hashable) -> None:
        kid = self._find(child_id)
        if kid.pid is not None:
            raise SupervisorError(f"child {child_id!r} is running: terminate it first")
        self._remove_kid(kid)

    async def _do_which_children(self) -> list[ChildStatus]:
        return [
            ChildStatus(
                k.spec.id,
                k.pid,
                "supervisor" if k.spec.is_supervisor else "worker",
                k.spec.restart,
            )
            for k in self._kids
        ]

    async def _do_count_children(self) -> dict[str, int]:
        sups = sum(1 for k in self._kids if k.spec.is_supervisor)
        return {
            "specs": len(self._kids),
            "active": sum(1 for k in self._kids if k.pid is not None),
            "supervisors": sups,
            "workers": len(self._kids) - sups,
        }

    async def _do_get_spec(self, child_id: Hashable) -> ChildSpec:
        spec = self._find(child_id).spec
        return replace(spec, kwargs=dict(spec.kwargs))  # the kept spec stays as it is


def _is_normal_end(reason: Any) -> bool:
    """``"normal"``, ``"shutdown"`` and ``("shutdown", detail)`` end a transient child."""
    return reason in ("normal", "shutdown") or (
        isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "shutdown"
    )


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _resolve(sup: Pid | Hashable) -> Pid:
    if isinstance(sup, Pid):
        return sup
    node = current_node()
    if sup == "root":
        return await root()
    pid = await node.registry.whereis(sup, SUPERVISORS)
    if pid is None:
        raise NoProcess(f"no supervisor named {sup!r}")
    return pid


async def _request(sup: Pid | Hashable, op: str, *args: Any) -> Any:
    pid = await _resolve(sup)
    result = await current_node().call(pid, (op, *args), timeout=None)
    if isinstance(result, _Failed):
        raise result.exc
    return result


async def _receive(timeout: float | None = None, match: Any = None) -> Any:
    from .api import receive

    return await receive(timeout=timeout, match=match)


def _flush_exit(pid: Pid) -> None:
    """Drop an `Exit` from `pid` already in the calling supervisor's mailbox."""
    me = current_process.get()
    mail = me._procreg_mail if me is not None else None
    if not mail:
        return
    for i, msg in enumerate(mail):
        if type(msg) is Exit and msg.pid == pid:
            del mail[i]
            return


async def root() -> Pid:
    """The node's root supervisor (``one_for_one``, registered as ``"root"`` in the
    ``"supervisors"`` table), started on first use."""
    node = current_node()
    pid = node.registry.peek("root", SUPERVISORS)
    if isinstance(pid, Pid) and node.is_alive(pid):
        return pid
    flight = node._root_sup
    if flight is not None:
        return await asyncio.shield(flight)
    node._root_sup = asyncio.get_running_loop().create_future()
    try:
        pid = await Supervisor.start([], name="root", intensity=1000, period=1.0)
    except BaseException as exc:
        node._root_sup.set_exception(exc)
        node._root_sup.exception()
        raise
    finally:
        flight, node._root_sup = node._root_sup, None
    flight.set_result(pid)
    return pid


_ = EXITING  # re-exported state names are used by the pi layer
