"""Cluster-scoped processes, the runtime's side: the `scope` option, how a new
incarnation receives the state its predecessor handed off (`takeover`), and how a
process is frozen and emptied for a handoff.

``scope="node"`` (the default) is what procreg always did: a registered process lives
and dies with its node. ``scope="cluster"`` (on `procreg.get_or_spawn`,
`procreg.child` and `procreg.pi.Pi`) makes it *one instance cluster-wide*: its spec is
kept in the cluster store, and when its node dies or fences itself a surviving node
starts it again (`procreg.cluster.scoped`); when its node stops gracefully, the
process hands its state off (its ``handoff()`` hook) and is started on its new home
node, whose ``init`` reads that state with `takeover`. The name is OTP's: a
distributed application moves by *failover* (its node died) or *takeover* (a node
took it over while the old one still ran). On a node without a cluster the option
changes nothing (the node is the whole cluster).

The cluster side reaches these through `ScopedHooks`, which the cluster sets on the
node (``node._cluster.scoped``); behaviours call `hooks(node)`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from .process import BUSY, CALL, CAST, EXITING, IDLE, INFO, SCHEDULED

if TYPE_CHECKING:
    from .pid import Pid
    from .process import _Proc

__all__ = ["NO_STATE", "SCOPES", "ScopedHooks", "Takeover", "check_scope", "hooks", "takeover"]

SCOPES: Final = ("node", "cluster")
"""The values of the ``scope=`` option."""


class _NoState:
    __slots__ = ()

    def __repr__(self) -> str:
        return "procreg.scope.NO_STATE"


NO_STATE: Final = _NoState()
"""Returned by a ``handoff()`` hook that has nothing to hand off this time (the
process moves and starts fresh)."""


def check_scope(scope: Any) -> None:
    """`ValueError` unless `scope` is one of `SCOPES`."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


@dataclass(frozen=True)
class Takeover:
    """What a cluster-scoped process's new incarnation learns in ``init`` (from
    `takeover`): `kind` is ``"takeover"`` (its predecessor handed `state` off on a
    graceful stop of node `node`) or ``"failover"`` (node `node` died or fenced
    itself; `state` is None: nothing could be handed off)."""

    kind: str
    node: str
    state: Any = None


_current: contextvars.ContextVar[Takeover | None] = contextvars.ContextVar(
    "procreg_takeover", default=None
)


def takeover() -> Takeover | None:
    """Inside ``init`` of a cluster-scoped process: how it came to start here — a
    `Takeover` (``kind`` ``"takeover"`` with the `state` its predecessor's
    ``handoff()`` returned, or ``"failover"``), or None for a first start (or a
    restart by its own supervisor).

    >>> takeover() is None
    True
    """
    return _current.get()


def set_takeover(value: Takeover | None) -> contextvars.Token[Takeover | None]:
    """Make `takeover` answer `value` in this context (until `reset_takeover`): set by
    the node that starts a moved process, around the start, so its ``init`` (sync,
    or async in a task that copies the context) sees it."""
    return _current.set(value)


def reset_takeover(token: contextvars.Token[Takeover | None]) -> None:
    _current.reset(token)


class ScopedHooks(Protocol):
    """What the cluster (`procreg.cluster.scoped.Scoped`) offers the behaviours."""

    def prepare(self, record: tuple[Any, ...]) -> bytes:
        """How to start a cluster-scoped process again elsewhere — ``("gos",
        factory, args, meta, idle_timeout)`` or ``("child", supervisor_name,
        child_spec)`` — made ready for the store before it starts: `TypeError` if
        another node could not rebuild it."""

    async def started(self, table: str, key: Hashable, pid: Pid, prepared: bytes) -> None:
        """A cluster-scoped process was started here as `pid` for `key` (`prepared`
        from `prepare`). Returns once its record is in the store."""

    async def get_or_spawn(
        self,
        key: Hashable,
        factory: Any,
        args: tuple[Any, ...],
        table: str,
        placement: str,
        meta: dict[str, Any] | None,
        idle_timeout: float | None,
    ) -> tuple[Pid, bool]:
        """`procreg.get_or_spawn(..., scope="cluster")` on a clustered node."""

    def pending_takeover(self, table: str, key: Hashable) -> Takeover | None:
        """The takeover prepared for `key` on this node (a supervisor child about to
        be started by the cluster), taken: None if there is none."""


def hooks(node: Any) -> ScopedHooks | None:
    """The cluster's hooks on a clustered node (a `procreg.Node` whose cluster has
    them), None on an embedded one."""
    scoped: ScopedHooks | None = getattr(getattr(node, "_cluster", None), "scoped", None)
    return scoped


# -- a handoff, on the process's side ----------------------------------------------------
def quiet(proc: _Proc) -> bool:
    """True if `proc` is not running a handler now (so freezing it cannot cut one)."""
    return proc._procreg_st in (IDLE, SCHEDULED) and (
        proc._procreg_ext is None or proc._procreg_ext.task is None
    )


def idle(proc: _Proc) -> bool:
    """True if `proc` is `quiet` with an empty mailbox."""
    return proc._procreg_st == IDLE and quiet(proc)


def freeze(proc: _Proc) -> None:
    """Stop `proc` from handling mail (it must be `quiet`): it stays alive and
    registered, and what is sent to it queues in its mailbox, as while an async
    handler runs. Its timers are cancelled now (they die with it anyway): a tick
    of its own timer must not reach its next incarnation, which arms its own.
    Only `take_mail` and its end follow."""
    proc._procreg_st = BUSY
    ext = proc._procreg_ext
    if ext is not None and ext.timers:
        for timer in list(ext.timers):
            timer.cancel()


def take_mail(proc: _Proc) -> list[tuple[str, Any, Any]]:
    """Empty the mailbox of a frozen server: ``("call", caller, request)``,
    ``("cast", msg, None)`` and ``("info", msg, None)`` in arrival order. Its
    callers are no longer owed by it (they are relayed to the new incarnation).
    What timers delivered is left out: a timer targeting a process ends with it
    (as in OTP, where a timer to a pid is cancelled when the pid dies), and its
    delivered, unhandled messages end too, so a tick's fate does not depend on
    whether it fired just before the freeze or just after."""
    mail = proc._procreg_mail
    proc._procreg_mail = None
    out: list[tuple[str, Any, Any]] = []
    if not mail:
        return out
    for item in mail:
        tag = item[0] if isinstance(item, tuple) else None
        if tag == CALL:
            out.append(("call", item[1], item[2]))
        elif tag == CAST:
            out.append(("cast", item[1], None))
        elif tag == INFO:
            out.append(("info", item[1], None))
    return out


def is_server(proc: _Proc) -> bool:
    """True for a `Server` (a handoff freezes it); a coroutine process is just ended."""
    return hasattr(proc, "_procreg_async_mask")


def ending(proc: _Proc) -> bool:
    return proc._procreg_st >= EXITING
