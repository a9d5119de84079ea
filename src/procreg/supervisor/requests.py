"""The request protocol, the supervisor's side: the messages a supervisor takes besides
its children's exits (`Call`s of the dynamic-children API, `_StopRequest`) and how it
answers them. The caller's side is `Supervisor`'s API (`procreg.supervisor.tree`)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from ..messages import Call
from ..pid import Pid
from ..primitives import reply
from .specs import AlreadyPresent, AlreadyStarted, ChildSpec, ChildStatus, SupervisorError, _Child

__all__: list[str] = []


class _StopRequest(NamedTuple):
    """`Supervisor.stop`'s request (OTP's ``sys:terminate``): stop the children in
    reverse order, then end with `reason`."""

    reason: Any


class _Stop(Exception):
    """Raised inside the supervisor loop to end it with a reason."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason


class _Failed:
    """A request's exception, sent back to the caller in place of the result."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Requests:
    """The request handlers of a running supervisor (`procreg.supervisor.engine._Running`):
    ``_do_<op>`` answers ``Call((op, *args))``."""

    if TYPE_CHECKING:  # kept by _Running
        _kids: list[_Child]
        _by_id: dict[Hashable, _Child]
        _by_pid: dict[Pid, _Child]

        async def _start_child(self, spec: ChildSpec) -> Pid: ...
        async def _stop_child(self, kid: _Child) -> None: ...
        def _add_kid(self, kid: _Child) -> None: ...
        def _remove_kid(self, kid: _Child) -> None: ...

    async def _on_call(self, msg: Call) -> None:
        op, *args = msg.request
        try:
            result = await getattr(self, "_do_" + op)(*args)
        except _Stop:  # the supervisor ends: not an answer
            raise
        except Exception as exc:
            result = _Failed(exc)
        reply(msg.caller, result)

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
