"""The primitives a process uses on itself and its callers, which need nothing above
the runtime: `self`, `caller`, `reply`, `answered`, `receive` (Erlang's ``self()``,
``gen_server:reply/2`` and ``receive``). `procreg` (`procreg.api`) re-exports them;
the behaviours (supervisors, the cache) import them from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .coroutines import Process
from .errors import NotInProcess
from .kernel import current_node
from .options import check_timeout
from .pid import Pid
from .process import _answered, current_process

__all__ = ["answered", "caller", "receive", "reply", "self"]


def self() -> Pid:
    """The pid of the calling process; `NotInProcess` outside one."""
    node = current_node()
    proc = node._current
    if proc is None:
        proc = current_process.get()
        if proc is None:
            raise NotInProcess("self() must be called from inside a process")
    return proc._procreg_pid


def caller() -> Any:
    """Inside ``handle_call``: the caller, to answer later with `reply` after
    returning `NOREPLY`."""
    return current_node().caller()


def reply(caller: Any, value: Any) -> None:
    """Answer a call. Replying to a caller that already got an answer, timed out or
    went away does nothing (the first answer wins). A reply given before the handler
    ends its process (``raise Stop(...)``, a crash, ``exit(self(), ...)``) reaches the
    caller, whether the call was dispatched directly or scheduled: OTP's
    ``{stop, Reason, Reply, State}``."""
    if isinstance(caller, asyncio.Future):
        if not caller.done():
            caller.set_result(value)
        return
    caller.reply(value)


def answered(caller: Any) -> bool:
    """True once `caller` got its reply, an error, or gave up."""
    return _answered(caller)


async def receive(timeout: float | None = None, match: Callable[[Any], bool] | None = None) -> Any:
    """Take the next message from the calling process's mailbox, waiting for one.

    With `match`, take the oldest message for which ``match(msg)`` is true, leaving
    the others in order (selective receive). Raises `TimeoutError` after `timeout`
    seconds (``0`` polls). Only coroutine processes (`spawn`) receive; a `Server`
    gets its messages through its handlers.
    """
    proc = current_process.get()
    if proc is None or (type(proc) is not Process and not isinstance(proc, Process)):
        raise NotInProcess("receive() must be called from inside a coroutine process (spawn)")
    if timeout is not None:
        check_timeout(timeout)
    return await proc._receive(timeout, match)
