"""The restart engine: the supervisor process itself. It starts its children in
order, linked to it, watches their exits (it traps exits), restarts them by its
strategy and their restart type within its intensity, stops them in reverse order,
and answers requests (`procreg.supervisor.requests`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import Any

from ..errors import AlreadyRegistered, NoProcess, Stop
from ..kernel import Kernel, current_node
from ..messages import Call, Down, Exit
from ..pid import Pid
from ..primitives import receive
from ..process import _Proc, current_process
from ..registry import spawn_for
from ..scope import hooks, reset_takeover, set_takeover
from ..spawning import is_server_class
from .requests import _Requests, _Stop, _StopRequest
from .roots import supervision
from .specs import SUPERVISORS, ChildSpec, _Child

__all__: list[str] = []

log = logging.getLogger("procreg")


class _Running(_Requests):
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
        self._name = name
        self._parent: Pid | None = None
        links = me._procreg_ext.links if me._procreg_ext is not None else None
        if links:
            self._parent = next(iter(links))
        self._kids: list[_Child] = []  # in start order
        self._by_id: dict[Hashable, _Child] = {}
        self._by_pid: dict[Pid, _Child] = {}
        self._restarts: deque[float] = deque()
        sups = supervision(node)
        sups.add(self._me, self._parent)
        try:
            await self._serve(node, me, specs, name, ready)
        finally:
            sups.remove(self._me)

    async def _serve(
        self,
        node: Kernel,
        me: _Proc,
        specs: list[ChildSpec],
        name: Hashable | None,
        ready: asyncio.Future[Pid],
    ) -> None:
        try:
            if name is not None:
                # supervisor names are node-local (every node has its "root")
                node.registry.register_now(name, me, SUPERVISORS)
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
        if spec.key is not None and not spec.is_supervisor:
            return await self._start_keyed(node, spec)
        if spec.is_supervisor:
            children = list(spec.args[0]) if spec.args else None
            pid = await factory.start(children, link=True, **spec.kwargs)
        elif is_server_class(factory):
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

    async def _start_keyed(self, node: Kernel, spec: ChildSpec) -> Pid:
        """A worker with a key: the key is claimed *before* its ``init`` runs (through
        the registry's `get_or_spawn`, atomic across the cluster), so the loser of a
        race (two nodes starting one job) never runs ``init``; `AlreadyRegistered`
        names the holder. Then it is linked to this supervisor and bounded."""
        assert spec.key is not None
        scoped = hooks(node) if spec.scope == "cluster" else None
        token = None
        prepared = b""
        if scoped is not None:
            if self._name is None:
                raise ValueError(
                    f"cluster-scoped child {spec.id!r} needs a named supervisor (every node "
                    "runs one by that name: it restarts the child there)"
                )
            prepared = scoped.prepare(("child", self._name, spec))  # TypeError: not started
            token = set_takeover(scoped.pending_takeover(spec.table, spec.key))
        try:
            pid, started = await spawn_for(
                node, spec.key, spec.factory, spec.args, spec.table, "local", None, None
            )
        finally:
            if token is not None:
                reset_takeover(token)
        if not started:
            raise AlreadyRegistered(spec.key, pid)
        proc = node.local_process(pid)
        if proc is not None and (spec.max_mailbox is not None or spec.overflow is not None):
            node.bound(proc, spec.max_mailbox, spec.overflow)
        node.link(pid)  # (ended already: its exit signal comes to us as for any child)
        if scoped is not None:
            await scoped.started(spec.table, spec.key, pid, prepared)
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
        if spec.scope == "cluster" and reason in _MOVED:
            # the cluster starts it again (on another node, or here after a rejoin):
            # this supervisor keeps no spec of it
            self._remove_kid(kid)
            return
        if spec.restart == "temporary":
            self._remove_kid(kid)
            return
        if spec.restart == "transient" and _is_normal_end(reason):
            return
        if current_node().stopping:
            return
        await self._restart(kid)

    def _count_restart(self) -> None:
        current_node().restarts += 1  # (`Node.stats`, metrics)
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
                extra={"procreg_pid": str(self._me), "procreg_node": self._me[0]},
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

    def _add_kid(self, kid: _Child) -> None:
        self._kids.append(kid)
        self._by_id[kid.spec.id] = kid

    def _remove_kid(self, kid: _Child) -> None:
        self._kids.remove(kid)
        del self._by_id[kid.spec.id]
        kid.pid = None


_MOVED = ("fenced", "handoff")  # ends after which a cluster-scoped child lives on elsewhere


def _is_normal_end(reason: Any) -> bool:
    """``"normal"``, ``"shutdown"`` and ``("shutdown", detail)`` end a transient child."""
    return reason in ("normal", "shutdown") or (
        isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "shutdown"
    )


async def _receive(timeout: float | None = None, match: Any = None) -> Any:
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
