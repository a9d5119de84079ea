"""`NodeRuntime`: a node's implementation of the `seams.Runtime` protocol, the one
surface through which backends (the cluster) act on local processes. It reads and
writes process state here, in the runtime layer, so that no backend needs to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .messages import Down
from .pid import Pid, Ref
from .process import EXITING, IDLE

T = TypeVar("T")

if TYPE_CHECKING:
    from .kernel import Kernel
    from .seams import Delivery

__all__ = ["NodeRuntime"]


class NodeRuntime:
    """`seams.Runtime` for one `Kernel` (``node.runtime``)."""

    __slots__ = ("_node",)

    def __init__(self, node: Kernel) -> None:
        self._node = node

    @property
    def name(self) -> str:
        return self._node.name

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._node._loop

    def new_pid(self) -> Pid:
        return self._node._new_pid()

    def alive(self, pid: Pid) -> bool:
        proc = self._node._procs.get(pid)
        return proc is not None and proc._procreg_st < EXITING

    def exists(self, pid: Pid) -> bool:
        return pid in self._node._procs

    def deliver(self, pid: Pid, msg: Any, kind: Delivery) -> bool:
        proc = self._node._procs.get(pid)
        if proc is None:
            return False
        if kind == "cast":
            return bool(proc._procreg_cast(msg))
        return bool(proc._procreg_info(msg))

    def deliver_call(self, pid: Pid, caller: Any, request: Any) -> bool:
        node = self._node
        proc = node._procs.get(pid)
        if proc is None or proc._procreg_st >= EXITING:
            return False
        if proc._procreg_st == IDLE and proc._procreg_direct_call and node._current is None:
            # an idle server with a sync handle_call: nothing is queued ahead of the
            # request, so handling it now (its mailbox run, lease check included) is
            # the scheduled path without the loop turn in between; the drain that
            # `_procreg_call` scheduled finds it idle again and skips it
            if proc._procreg_call(caller, request):
                proc._procreg_run()
            return True
        proc._procreg_call(caller, request)
        return True

    def attach_link(self, ours: Pid, theirs: Pid) -> bool:
        proc = self._node._procs.get(ours)
        if proc is None or proc._procreg_st >= EXITING:
            return False
        ext = proc._procreg_extra()
        if ext.links is None:
            ext.links = set()
        ext.links.add(theirs)
        return True

    def detach_link(self, ours: Pid, theirs: Pid) -> bool:
        proc = self._node._procs.get(ours)
        ext = proc._procreg_ext if proc is not None else None
        if ext is None or not ext.links or theirs not in ext.links:
            return False
        ext.links.discard(theirs)
        return True

    def attach_monitor(self, target: Pid, ref: Ref, watcher: Pid) -> bool:
        proc = self._node._procs.get(target)
        if proc is None or proc._procreg_st >= EXITING:
            return False
        ext = proc._procreg_extra()
        if ext.monitors is None:
            ext.monitors = {}
        ext.monitors[ref] = watcher
        return True

    def detach_monitor(self, target: Pid, ref: Ref) -> None:
        proc = self._node._procs.get(target)
        ext = proc._procreg_ext if proc is not None else None
        if ext is not None and ext.monitors:
            ext.monitors.pop(ref, None)

    def attach_watch(self, watcher: Pid, ref: Ref, target: Pid) -> bool:
        """Record that local process `watcher` monitors `target` under `ref`."""
        proc = self._node._procs.get(watcher)
        if proc is None:
            return False
        ext = proc._procreg_extra()
        if ext.watching is None:
            ext.watching = {}
        ext.watching[ref] = target
        return True

    def watching(self, watcher: Pid, ref: Ref) -> bool:
        proc = self._node._procs.get(watcher)
        ext = proc._procreg_ext if proc is not None else None
        watching = ext.watching if ext is not None else None
        return watching is not None and ref in watching

    def exit_signal(self, pid: Pid, sender: Pid | None, reason: Any, linked: bool) -> None:
        proc = self._node._procs.get(pid)
        if proc is not None:
            self._node._exit_signal(proc, sender, reason, linked=linked)

    def down(self, watcher: Pid, ref: Ref, target: Pid, reason: Any) -> None:
        proc = self._node._procs.get(watcher)
        if proc is None:
            return
        ext = proc._procreg_ext
        if ext is not None and ext.watching:
            ext.watching.pop(ref, None)
        proc._procreg_info(Down(ref, target, reason))

    def end(self, pid: Pid, reason: Any) -> None:
        proc = self._node._procs.get(pid)
        if proc is not None:
            self._node._end(proc, reason)

    def run_as(self, pid: Pid, fn: Callable[[], T]) -> T:
        node = self._node
        proc = node._procs.get(pid)
        if proc is None:
            raise LookupError(f"no live local process {pid!r}")
        prev = node._current
        node._current = proc
        try:
            return fn()
        finally:
            node._current = prev

    def add_deadline(self, timeout: float, fut: asyncio.Future[Any]) -> None:
        self._node._deadlines.add(timeout, fut)

    def node_event(self, kind: str, name: str) -> None:
        self._node._node_event(kind, name)
