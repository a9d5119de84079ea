"""N2O's n2o_pi: supervised processes driven by one callback, ``proc(msg, pi)``.

Every process is described by a `Pi` record (name, table, sup, module, state,
timeout, restart). `start` runs it under the supervisor `pi.sup` (child id
``(table, name)``, shutdown `pi.timeout`, restart type `pi.restart`) and registers
it under `name` in the registry table `table`, so `pid(table, name)` finds the
current incarnation, after restarts too. The module's ``proc`` is called with `INIT`
first, then with every call, cast and other message:

- for `INIT` it returns ``Ok(pi)`` (``Error(code)`` makes `start` fail);
- for a call it returns ``Reply(data, pi)``: `data` is the reply;
- for casts and other messages ``Ok(pi)`` (a `Reply`'s data is then dropped);
- ``Error(code)`` on failure: a call gets the `Error` as its reply.

``proc`` may be ``async def``; an optional ``terminate(reason, pi)`` runs at the end.

>>> import procreg
>>> from procreg import pi
>>> class Counter:
...     @staticmethod
...     def proc(msg, p):
...         if msg is pi.INIT:
...             return pi.Ok(p)
...         if msg == "get":
...             return pi.Reply(p.state, p)
...         p.state += msg
...         return pi.Ok(p)
>>> async def main():
...     await pi.start(pi.Pi("counter", "demo", "root", Counter, state=0))
...     pi.cast("demo", "counter", 5)
...     return await pi.send("demo", "counter", "get")
>>> procreg.run(main)
5

Where n2o_pi had flaws, this keeps its meaning and mends them: the table entry goes
away however the process ends (``kill`` too) and follows restarts; `cast` to a
missing name returns an `Error` and `send` raises `NoProcess`; `start` of a running
name returns an `Error` carrying the running pid; `start` of a stopped name whose
spec the supervisor still keeps replaces that spec with the new `Pi`; `stop` returns
the last `Pi` (the state as ``terminate`` saw it); `restart` keeps the current state
(it stops, then starts the last `Pi`). A supervisor restart after a crash starts from
the spec's record, with a deep copy of its state (as OTP restarts a child from its
original arguments), so changes a crashed incarnation made do not leak into the next.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any, Final

from .errors import AlreadyRegistered, NoProcess
from .kernel import current_node
from .keys import check_key, check_table
from .options import check_bound, check_timeout
from .pid import Pid
from .scope import NO_STATE, check_scope, takeover
from .server import Server
from .supervisor import RESTARTS, AlreadyPresent, AlreadyStarted, Supervisor, child

__all__ = [
    "INIT",
    "Error",
    "Ok",
    "Pi",
    "Reply",
    "cast",
    "pid",
    "restart",
    "send",
    "start",
    "stop",
    "whereis",
]


class _Init:
    __slots__ = ()

    def __repr__(self) -> str:
        return "pi.INIT"


INIT: Final = _Init()
"""The first message every ``proc`` gets."""


@dataclass
class Pi:
    """An n2o_pi process record. `module` is any object with ``proc(msg, pi)``.

    `max_mailbox` and `overflow` (procreg's own, not n2o's) bound the process's
    mailbox: see `procreg.spawn`. A full mailbox makes `cast` return
    ``Error("overload")`` and `send` raise `procreg.Overloaded`; with
    ``overflow="exit"`` the process ends with reason ``"overload"`` and its
    supervisor restarts it as `restart` says.

    ``scope="cluster"`` (procreg's own) makes it one instance cluster-wide
    (`procreg.scope`): the name is claimed before ``proc(INIT, pi)`` runs (the loser
    of a race gets ``Error(("already_started", pid))`` and never runs INIT), the
    record is kept in the cluster store (`module` and `state` must be picklable; a
    module is pickled by name), and the supervisor named `sup` on a surviving node
    starts it again if its node dies, fences itself or stops. On a graceful stop an
    optional ``handoff(pi)`` of the module returns the state to move: the new
    incarnation's INIT gets the `Pi` with that `state` (and `procreg.takeover()`
    tells how it came there)."""

    name: Hashable
    table: str
    sup: Any
    module: Any
    state: Any = None
    timeout: float = 5.0
    restart: str = "transient"
    max_mailbox: int | None = None
    overflow: str | None = None
    scope: str = "node"


@dataclass(frozen=True)
class Ok:
    """``proc`` went well; `pi` is the new record."""

    pi: Pi


@dataclass(frozen=True)
class Reply:
    """``proc`` answers a call with `data`; `pi` is the new record."""

    data: Any
    pi: Pi


@dataclass(frozen=True)
class Error:
    """A failure, with its `code` (n2o's ``#error{}``)."""

    code: Any


def _check(p: Pi) -> None:
    if not isinstance(p, Pi):
        raise TypeError(f"expected a Pi, got {type(p).__name__}: {p!r}")
    check_key(p.name, "pi name")
    check_table(p.table)
    if not callable(getattr(p.module, "proc", None)):
        raise TypeError(f"pi module {p.module!r} has no proc(msg, pi) function")
    if p.restart not in RESTARTS:
        raise ValueError(f"restart must be one of {RESTARTS}, got {p.restart!r}")
    check_timeout(p.timeout, "timeout")
    check_bound(p.max_mailbox, p.overflow)
    check_scope(p.scope)


def _take(result: Any, pi: Pi, msg: Any) -> tuple[Any, Pi]:
    """Split a proc result into (reply data, new pi)."""
    if isinstance(result, Reply):
        return result.data, result.pi
    if isinstance(result, Ok):
        return None, result.pi
    if isinstance(result, Error):
        return result, pi
    raise TypeError(f"proc({msg!r}, pi) must return Ok, Reply or Error, got {result!r}")


def _fresh(pi: Pi) -> Pi:
    """The record a new incarnation starts from: a copy of the spec's, with a deep
    copy of its state (as OTP restarts a child from its original arguments); a state
    that cannot be deep-copied is shared. A cluster-scoped process taken over from a
    stopping node starts from the state its module's ``handoff(pi)`` gave."""
    moved = takeover()
    if moved is not None and moved.kind == "takeover" and hasattr(pi.module, "handoff"):
        return replace(pi, state=moved.state)
    try:
        state = copy.deepcopy(pi.state)
    except Exception:
        state = pi.state
    return replace(pi, state=state)


class PiServer(Server):
    """The process behind a `Pi` whose ``proc`` and ``terminate`` are plain functions."""

    pi: Pi

    def init(self, pi: Pi) -> None:
        pi = _fresh(pi)
        result = pi.module.proc(INIT, pi)
        if isinstance(result, Error):
            raise _InitFailed(result)
        _, self.pi = _take(result, pi, INIT)

    def handle_call(self, request: Any) -> Any:
        data, self.pi = _take(self.pi.module.proc(request, self.pi), self.pi, request)
        return data

    def handle_cast(self, msg: Any) -> None:
        _, self.pi = _take(self.pi.module.proc(msg, self.pi), self.pi, msg)

    handle_info = handle_cast

    def terminate(self, reason: Any) -> None:
        hook = getattr(self.pi.module, "terminate", None)
        if hook is not None:
            hook(reason, self.pi)

    def handoff(self) -> Any:
        """The module's ``handoff(pi)``, or `NO_STATE` if it has none."""
        return _handoff(self.pi)


def _handoff(pi: Pi) -> Any:
    hook = getattr(pi.module, "handoff", None)
    return NO_STATE if hook is None else hook(pi)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AsyncPiServer(Server):
    """The process behind a `Pi` whose ``proc`` or ``terminate`` is ``async def``
    (either may be a plain function)."""

    pi: Pi

    async def init(self, pi: Pi) -> None:
        pi = _fresh(pi)
        result = await _maybe_await(pi.module.proc(INIT, pi))
        if isinstance(result, Error):
            raise _InitFailed(result)
        _, self.pi = _take(result, pi, INIT)

    async def handle_call(self, request: Any) -> Any:
        result = await _maybe_await(self.pi.module.proc(request, self.pi))
        data, self.pi = _take(result, self.pi, request)
        return data

    async def handle_cast(self, msg: Any) -> None:
        result = await _maybe_await(self.pi.module.proc(msg, self.pi))
        _, self.pi = _take(result, self.pi, msg)

    handle_info = handle_cast

    async def terminate(self, reason: Any) -> None:
        hook = getattr(self.pi.module, "terminate", None)
        if hook is not None:
            await _maybe_await(hook(reason, self.pi))

    def handoff(self) -> Any:
        """The module's ``handoff(pi)`` (a plain function), or `NO_STATE`."""
        return _handoff(self.pi)


# what the observer and the metrics call these processes (`ProcessInfo.behaviour`);
# set here, since a Server subclass may not define runtime (``_procreg_``) names
PiServer._procreg_kind = AsyncPiServer._procreg_kind = "pi"


class _InitFailed(Exception):
    def __init__(self, error: Error) -> None:
        super().__init__(error.code)
        self.error = error


def _spec(p: Pi) -> Any:
    hooks = (p.module.proc, getattr(p.module, "terminate", None))
    server = AsyncPiServer if any(map(inspect.iscoroutinefunction, hooks)) else PiServer
    return child(
        server,
        p,
        id=(p.table, p.name),
        restart=p.restart,
        shutdown=p.timeout,
        key=p.name,
        table=p.table,
        max_mailbox=p.max_mailbox,
        overflow=p.overflow,
        scope=p.scope,
    )


async def start(p: Pi) -> tuple[Pid, Hashable] | Error:
    """Start `p` under its supervisor; ``(pid, name)``, or an `Error`:
    ``Error(("already_started", pid))`` if the name is running, or the init's error."""
    _check(p)
    running = pid(p.table, p.name)
    if running is not None:
        return Error(("already_started", running))
    spec = _spec(p)
    try:
        try:
            new = await Supervisor.start_child(p.sup, spec)
        except AlreadyPresent:  # a stopped spec: the new Pi replaces it
            await Supervisor.delete_child(p.sup, spec.id)
            new = await Supervisor.start_child(p.sup, spec)
    except (AlreadyStarted, AlreadyRegistered) as exc:
        return Error(("already_started", exc.pid))
    except _InitFailed as exc:
        return exc.error
    except NoProcess as exc:
        return Error(("no_supervisor", p.sup, str(exc)))
    return new, p.name


def _server(table: str, name: Hashable) -> PiServer | AsyncPiServer | None:
    found = pid(table, name)
    if found is None:
        return None
    proc = current_node()._procs.get(found)
    return proc if isinstance(proc, (PiServer, AsyncPiServer)) else None


async def stop(table: str, name: Hashable) -> Pi | Error:
    """Stop the process and remove it from its supervisor; returns its last `Pi`."""
    server = _server(table, name)
    if server is None:
        return Error("not_found")
    sup = server.pi.sup
    await Supervisor.terminate_child(sup, (table, name))
    try:
        await Supervisor.delete_child(sup, (table, name))
    except Exception:  # a temporary child's spec is already gone
        pass
    return server.pi


async def restart(table: str, name: Hashable) -> tuple[Pid, Hashable] | Error:
    """Stop the process, then start it again from its last `Pi` (state kept)."""
    last = await stop(table, name)
    if isinstance(last, Error):
        return last
    return await start(last)


async def send(table: str, name: Hashable, msg: Any, timeout: float | None = 5.0) -> Any:
    """Call the process (n2o's ``send``); `NoProcess` if the name is not running.
    On a cluster the name is looked up on every node (a cluster-scoped process may
    run elsewhere)."""
    found = await whereis(table, name)
    if found is None:
        raise NoProcess(f"no pi process {name!r} in table {table!r}")
    return await current_node().call(found, msg, timeout)


def cast(table: str, name: Hashable, msg: Any) -> Error | None:
    """Cast to the process; ``Error("not_found")`` if the name is not running,
    ``Error("overload")`` if its mailbox is full (the message was dropped)."""
    found = pid(table, name)
    if found is None:
        return Error("not_found")
    node = current_node()
    alive = node.is_alive(found)
    if not node.cast(found, msg):
        return Error("overload") if alive else Error("not_found")
    return None


async def whereis(table: str, name: Hashable) -> Pid | None:
    """The pid running under `name` in `table` anywhere in the cluster, or None
    (`pid` answers from this node's knowledge only, without waiting)."""
    check_key(name, "pi name")
    return await current_node().registry.whereis(name, table)


def pid(table: str, name: Hashable) -> Pid | None:
    """The pid running under `name` in `table`, or None."""
    check_key(name, "pi name")
    found = current_node().registry.peek(name, table)
    return found if isinstance(found, Pid) else None
