"""Timers: `send_after` and `send_interval`.

A timer belongs to the process that made it (if any) and to its local target; it is
cancelled when either ends, so a process's timers die with it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .kernel import current_node
from .options import check_timeout
from .pid import Pid
from .process import EXITING

if TYPE_CHECKING:
    from .kernel import Kernel
    from .process import _Proc

__all__ = ["Timer", "send_after", "send_interval", "start_timer"]


class Timer:
    """A pending `send_after` or `send_interval`. ``cancel()`` stops it."""

    __slots__ = ("_dest", "_handle", "_interval", "_msg", "_next", "_node", "_owners")

    def __init__(self, node: Kernel, dest: Pid, msg: Any, interval: float | None) -> None:
        self._node = node
        self._dest = dest
        self._msg = msg
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._owners: tuple[_Proc, ...] = ()

    @property
    def active(self) -> bool:
        """True until the timer has fired (one-shot) or been cancelled."""
        return self._handle is not None

    def cancel(self) -> bool:
        """Stop the timer; True if it was still pending."""
        handle = self._handle
        if handle is None:
            return False
        handle.cancel()
        self._handle = None
        self._detach()
        return True

    def _detach(self) -> None:
        for proc in self._owners:
            ext = proc._procreg_ext
            if ext is not None and ext.timers is not None:
                ext.timers.discard(self)
        self._owners = ()

    def _fire(self) -> None:
        if self._handle is None:
            return
        node = self._node
        interval = self._interval
        if interval is None:
            self._handle = None
            self._detach()
        else:
            now = node._loop.time()
            nxt = self._next + interval
            if nxt <= now:  # the loop fell behind: skip missed ticks, keep the phase
                nxt += interval * (((now - nxt) // interval) + 1)
            self._next = nxt
            self._handle = node._loop.call_at(nxt, self._fire, context=node._ctx)
        proc = node._procs.get(self._dest)
        if proc is None:  # a remote pid (or a dead one)
            node.send(self._dest, self._msg)
        else:
            proc._procreg_timer(self._msg)

    def __repr__(self) -> str:
        kind = "interval" if self._interval is not None else "after"
        state = "active" if self.active else "done"
        return f"<Timer {kind} -> {self._dest!r} {state}>"


def start_timer(node: Kernel, delay: float, dest: Pid, msg: Any, interval: float | None) -> Timer:
    """Arm a timer on `node` (see `procreg.send_after` / `procreg.send_interval`)."""
    check_timeout(delay, "delay")
    if interval is not None:
        check_timeout(interval, "interval")
        if interval == 0:
            raise ValueError("interval must be > 0")
    timer = Timer(node, dest, msg, interval)
    me = node.me()
    owners: list[_Proc] = []
    if node.foreign(dest):  # another node's process: the timer is tied to its maker
        if me is None:
            raise NotImplementedError("a timer to a remote pid must be set from a process")
    else:
        target = node._procs.get(dest)
        if target is None or target._procreg_st >= EXITING:
            return timer  # a dead target: the timer is born cancelled
        owners.append(target)
    if me is not None and me not in owners:
        owners.append(me)
    for proc in owners:
        ext = proc._procreg_extra()
        if ext.timers is None:
            ext.timers = set()
        ext.timers.add(timer)
    timer._owners = tuple(owners)
    loop = node._loop
    timer._next = loop.time() + delay
    timer._handle = loop.call_at(timer._next, timer._fire, context=node._ctx)
    return timer


def send_after(delay: float, pid: Pid, msg: Any) -> Timer:
    """Send `msg` to `pid` after `delay` seconds. The timer is cancelled if the
    target or the process that set it ends first."""
    return start_timer(current_node(), delay, pid, msg, None)


def send_interval(interval: float, pid: Pid, msg: Any, *, first: float | None = None) -> Timer:
    """Send `msg` to `pid` every `interval` seconds (first after `first`, default
    `interval`), without drift, until cancelled or either process ends."""
    delay = interval if first is None else first
    return start_timer(current_node(), delay, pid, msg, interval)
