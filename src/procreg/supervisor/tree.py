"""`Supervisor`: starting a supervision tree and talking to a running supervisor (the
caller's side of the request protocol), and the node's root supervisor."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Any

from ..errors import NoProcess
from ..kernel import current_node
from ..messages import Down
from ..options import check_timeout
from ..pid import Pid
from ..registry import check_key
from ..waits import serving_task, waiting_on
from .engine import _flush_exit, _receive, _Running
from .requests import _Failed, _StopRequest
from .roots import supervision
from .specs import SUPERVISORS, ChildSpec, ChildStatus, _SupervisorBase, _validate

__all__ = ["Supervisor", "root"]


class Supervisor(_SupervisorBase):
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
        is_sup = pid in supervision(node).supervisors

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


async def root() -> Pid:
    """The node's root supervisor (``one_for_one``, registered as ``"root"`` in the
    ``"supervisors"`` table), started on first use."""
    node = current_node()
    pid = node.registry.peek("root", SUPERVISORS)
    if isinstance(pid, Pid) and node.is_alive(pid):
        return pid
    sups = supervision(node)
    flight = sups.root
    if flight is not None:
        return await asyncio.shield(flight)
    sups.root = asyncio.get_running_loop().create_future()
    try:
        pid = await Supervisor.start([], name="root", intensity=1000, period=1.0)
    except BaseException as exc:
        sups.root.set_exception(exc)
        sups.root.exception()
        raise
    finally:
        flight, sups.root = sups.root, None
    flight.set_result(pid)
    return pid
