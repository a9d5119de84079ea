"""Signals between processes: exits, links and monitors (Erlang's signals), and the
exit sequence that sends them.

These functions are the `Kernel`'s methods (``node.link(pid)``, ``node._end(proc,
reason)``, ...): each takes the node first, and the kernel's class body binds them,
so that a call costs what a method defined in the class costs. A link or monitor
with a process of another node keeps its local side here, in the process's `_Ext`,
and asks the node's `Distribution` for the wire side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from .errors import NoProcess, Stop
from .messages import Down, Exit
from .pid import Pid, Ref
from .process import EXITING, _Proc, current_process, log_fields

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = [
    "add_link",
    "add_monitor",
    "crash_report",
    "demonitor",
    "down",
    "drop_monitor",
    "end",
    "exit",
    "exit_signal",
    "fail",
    "finish_after",
    "link",
    "link_signal",
    "monitor",
    "unlink",
]

log = logging.getLogger("procreg")


def terminate_done(proc: _Proc, pending: Coroutine[Any, Any, Any], _task: Any) -> None:
    pending.close()
    ext = proc._procreg_ext
    proc._procreg_finish(ext.exit_reason if ext is not None else "kill")


def end(node: Kernel, proc: _Proc, reason: Any) -> None:
    """End `proc` with `reason`: run the exit sequence (without recursion)."""
    endq = node._endq
    endq.append((proc, reason))
    if node._ending:
        return
    node._ending = True
    try:
        while endq:
            p, r = endq.popleft()
            if p._procreg_st >= EXITING:
                continue
            p._procreg_st = EXITING
            if p._procreg_ext is not None:
                p._procreg_ext.exit_reason = r
            if r != "kill" and p._procreg_unwinds():
                # a running coroutine body: cancel it; it finishes the exit once
                # it has unwound (its finally blocks run before Down is sent)
                p._procreg_extra().exit_reason = r
                p._procreg_stop_task()
                continue
            p._procreg_stop_task()
            pending = None if r == "kill" else p._procreg_terminate(r)
            if pending is None:
                p._procreg_finish(r)
            else:
                task = node._loop.create_task(node._finish_after(p, pending, r))
                ext = p._procreg_extra()
                ext.exit_reason = r
                ext.task = task  # so that a "kill" can cut terminate short
                node._terminating.add(task)
                task.add_done_callback(node._terminating.discard)
                # cancelled (a "kill") before its first step, the task neither
                # awaited terminate nor finished the exit: both are done here
                task.add_done_callback(partial(terminate_done, p, pending))
    finally:
        node._ending = False


async def finish_after(
    node: Kernel, proc: _Proc, pending: Coroutine[Any, Any, Any], reason: Any
) -> None:
    current_process.set(proc)
    try:
        await pending
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("terminate() of %r raised", proc._procreg_pid)
    finally:
        ext = proc._procreg_ext
        if ext is not None:
            ext.task = None
            reason = ext.exit_reason  # "kill" if it was killed meanwhile
        proc._procreg_finish(reason)


def fail(node: Kernel, proc: _Proc, exc: BaseException, last: Any, report: bool = True) -> Any:
    """End `proc` because its code raised `exc`; returns the exit reason.

    `Stop(reason)` ends it with that reason quietly; any other exception is the
    reason itself, with a crash report (unless `report` is False)."""
    reason: Any = exc.reason if isinstance(exc, Stop) else exc
    if proc._procreg_st < EXITING:
        if report and reason is exc:
            node._crash_report(proc, exc, last)
        node._end(proc, reason)
    return reason


def crash_report(node: Kernel, proc: _Proc, exc: BaseException, last: Any) -> None:
    node.crashed += 1
    log.error(
        "process %r (%s) crashed: %r; last message: %r",
        proc._procreg_pid,
        proc._procreg_kind,
        exc,
        last,
        exc_info=exc,
        extra=log_fields(node, proc),
    )


def exit(node: Kernel, pid: Pid, reason: Any) -> None:
    """Send an exit signal to `pid`; see `procreg.exit`."""
    proc = node._procs.get(pid)
    if proc is None:
        remote = node._dist(pid)
        if remote is not None:
            me = node.me()
            remote.exit(me._procreg_pid if me is not None else None, pid, reason)
        return
    me = node.me()
    sender = me._procreg_pid if me is not None else None
    if proc is me and reason == "normal":
        node._end(proc, "normal")
        return
    node._exit_signal(proc, sender, reason, linked=False)


def exit_signal(node: Kernel, target: _Proc, sender: Pid | None, reason: Any, linked: bool) -> None:
    if target._procreg_st >= EXITING:
        if reason == "kill" and not linked and target._procreg_st == EXITING:
            target._procreg_kill_exiting()  # cut a running terminate / unwinding short
        return
    if reason == "kill" and not linked:
        node._end(target, "kill")
        return
    ext = target._procreg_ext
    if ext is not None and ext.trap:
        target._procreg_info(Exit(sender, reason))
    elif reason != "normal":
        node._end(target, reason)


def link_signal(node: Kernel, other: Pid, sender: Pid, reason: Any) -> None:
    proc = node._procs.get(other)
    if proc is None:
        if node._remote is not None and other[0] != node.name:
            node._remote.link_exit(sender, other, reason)
        return
    ext = proc._procreg_ext
    if ext is not None and ext.links is not None:
        ext.links.discard(sender)
    node._exit_signal(proc, sender, reason, linked=True)


def add_link(node: Kernel, a: _Proc, b: _Proc) -> None:
    ea, eb = a._procreg_extra(), b._procreg_extra()
    if ea.links is None:
        ea.links = set()
    if eb.links is None:
        eb.links = set()
    ea.links.add(b._procreg_pid)
    eb.links.add(a._procreg_pid)


def link(node: Kernel, pid: Pid) -> None:
    """Link the calling process and `pid`; see `procreg.link`."""
    me = node._me_or_raise("link()")
    proc = node._lookup(pid)
    remote = node._dist(pid) if proc is None else None
    if remote is not None:
        if not remote.reachable(pid):
            node._exit_signal(me, pid, "noconnection", linked=True)
            return
        node.runtime.attach_link(me._procreg_pid, pid)
        remote.link(me._procreg_pid, pid)
        return
    if proc is None or proc._procreg_st >= EXITING:
        ext = me._procreg_ext
        if ext is not None and ext.trap:
            me._procreg_info(Exit(pid, "noproc"))
            return
        raise NoProcess(f"cannot link to {pid!r}: no such process")
    if proc is me:
        return
    node._add_link(me, proc)


def unlink(node: Kernel, pid: Pid) -> None:
    """Remove the link between the calling process and `pid`, if any."""
    me = node._me_or_raise("unlink()")
    if me._procreg_ext is not None and me._procreg_ext.links:
        me._procreg_ext.links.discard(pid)
    proc = node._procs.get(pid)
    if proc is None:
        remote = node._dist(pid)
        if remote is not None:
            remote.unlink(me._procreg_pid, pid)
        return
    if proc._procreg_ext is not None and proc._procreg_ext.links:
        proc._procreg_ext.links.discard(me._procreg_pid)


def add_monitor(node: Kernel, watcher: _Proc, target: _Proc) -> Ref:
    ref = Ref(node.name)
    et, ew = target._procreg_extra(), watcher._procreg_extra()
    if et.monitors is None:
        et.monitors = {}
    if ew.watching is None:
        ew.watching = {}
    et.monitors[ref] = watcher._procreg_pid
    ew.watching[ref] = target._procreg_pid
    return ref


def monitor(node: Kernel, pid: Pid) -> Ref:
    """Monitor `pid` from the calling process; see `procreg.monitor`."""
    me = node._me_or_raise("monitor()")
    proc = node._lookup(pid)
    remote = node._dist(pid) if proc is None else None
    if remote is not None:
        ref = Ref(node.name)
        if not remote.reachable(pid):
            me._procreg_info(Down(ref, pid, "noconnection"))
            return ref
        node.runtime.attach_watch(me._procreg_pid, ref, pid)
        remote.monitor(me._procreg_pid, ref, pid)
        return ref
    if proc is None or proc._procreg_st >= EXITING:
        ref = Ref(node.name)
        me._procreg_info(Down(ref, pid, "noproc"))
        return ref
    return node._add_monitor(me, proc)


def demonitor(node: Kernel, ref: Ref, *, flush: bool = False) -> bool:
    """Stop a monitor (of a process, or of a key: `procreg.monitor_key`); True if
    it was active. ``flush=True`` also removes a `Down` for it (the `KeyEvent`
    messages of a key monitor) already in the caller's mailbox."""
    me = node._me_or_raise("demonitor()")
    ext = me._procreg_ext
    if ext is not None and ext.key_monitors and ref in ext.key_monitors:
        removed = node.registry.demonitor_key(ref, me._procreg_pid)
        if flush and me._procreg_mail:
            me._procreg_flush_key_events(ref)
        return removed
    target = ext.watching.pop(ref, None) if ext is not None and ext.watching else None
    if target is not None:
        node._drop_monitor(target, ref)
    if flush and me._procreg_mail:
        me._procreg_flush_down(ref)
    return target is not None


def drop_monitor(node: Kernel, target: Pid, ref: Ref) -> None:
    proc = node._procs.get(target)
    if proc is None and node._remote is not None and target[0] != node.name:
        node._remote.demonitor(ref, target)
        return
    if proc is not None and proc._procreg_ext is not None and proc._procreg_ext.monitors:
        proc._procreg_ext.monitors.pop(ref, None)


def down(node: Kernel, watcher: Pid, ref: Ref, pid: Pid, reason: Any) -> None:
    proc = node._procs.get(watcher)
    if proc is None:
        if node._remote is not None and watcher[0] != node.name:
            node._remote.down(watcher, ref, pid, reason)
        return
    ext = proc._procreg_ext
    if ext is not None and ext.watching:
        ext.watching.pop(ref, None)
    proc._procreg_info(Down(ref, pid, reason))
