"""What a node tells observers about itself and its processes: `ProcessInfo`
(`Node.info`) and `NodeStats` (`Node.stats`).

Both are frozen records: a snapshot taken when asked, which later changes to the node
do not touch and which changing does not touch the node. ``as_dict()`` gives the
same fields as a new plain dict (tuples as lists), for JSON.

>>> import procreg
>>> async def main():
...     node = procreg.current_node()
...     pid = procreg.spawn(procreg.receive)
...     await procreg.register("job", pid)
...     info = node.info(pid)
...     return info.keys, info.status, node.stats().processes
>>> procreg.run(main)
(("('default', 'job')",), 'idle', 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, make_dataclass
from typing import Any, Final, Literal, TypeVar

from .pid import Pid

__all__ = [
    "BEHAVIOURS",
    "EXIT_CLASSES",
    "NodeStats",
    "ProcessInfo",
    "ProcessStatus",
    "exit_class",
    "readable_key",
]

_R = TypeVar("_R")

ProcessStatus = Literal["idle", "runnable", "busy", "exiting", "dead"]
"""Where a process is in its life: ``idle`` (no mail, not waiting for its turn),
``runnable`` (a server in the run queue, or a coroutine process running), ``busy``
(an async handler is running; new mail waits), ``exiting`` (ending: its
``terminate`` may be running), ``dead``."""


EXIT_CLASSES: Final = (
    "normal",
    "shutdown",
    "kill",
    "idle",
    "noconnection",
    "overload",
    "fenced",
    "conflict",
    "exception",
    "other",
)
"""The classes of exit reasons that `exit_class` sorts reasons into (and the
``reason`` label of the ``procreg_process_exits_total`` metric): the runtime's own
reasons by name, ``"exception"`` for a process ended by an exception (a crash, or an
exception reason that came over a link), ``"other"`` for anything else."""

_NAMED_EXITS: Final = frozenset(EXIT_CLASSES[:-2])


def exit_class(reason: Any) -> str:
    """The class of an exit `reason`: one of `EXIT_CLASSES`."""
    if type(reason) is str:
        return reason if reason in _NAMED_EXITS else "other"
    if isinstance(reason, BaseException):
        return "exception"
    return "other"


def _part(value: Any) -> str:
    if type(value) is str:
        return value if value and value.isprintable() and " / " not in value else repr(value)
    if type(value) is tuple:
        return "(" + " / ".join(_part(v) for v in value) + ")"
    return repr(value)


def readable_key(key: Any, table: str | None = None) -> str:
    """`key` as people read it: a string as itself (quoted only if it is empty or
    holds unprintable characters or `` / ``), a tuple's items joined by `` / ``,
    anything else as its repr; `table`, if given, first, before a colon (so
    ``("room", "lobby")`` in table ``"default"`` reads ``default: room / lobby``).
    Session keys (``("session", sid)``, in the ``"sessions"`` table or as a group)
    show only the first 4 characters of the session id, which is half a secret."""
    if type(key) is tuple and len(key) == 2 and key[0] == "session":
        text = f"session / {str(key[1])[:4]}…"
    elif type(key) is tuple:
        text = " / ".join(_part(v) for v in key) if key else "()"
    else:
        text = _part(key)
    return text if table is None else f"{_part(table)}: {text}"


BEHAVIOURS: Final = ("coroutine", "server", "supervisor", "pi", "session", "connection")
"""What `ProcessInfo.behaviour` may be: a spawned ``async def`` body (``coroutine``),
a `Server`, a supervisor, an n2o_pi process (``pi``), a web session process
(``session``) or a WebSocket connection's process (``connection``); a behaviour a
library adds shows under its own name."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A live local process as `Node.info` saw it."""

    pid: Pid
    """The process."""
    kind: str
    """Its class name (``"Supervisor"`` for a supervisor, ``"Process"`` for a
    spawned function)."""
    keys: tuple[str, ...]
    """The registry entries it holds, as the reprs of ``(table, key)`` pairs, sorted."""
    groups: tuple[str, ...]
    """The groups it belongs to, as the reprs of the group names, sorted."""
    mailbox: int
    """Messages waiting in its mailbox now (count)."""
    mailbox_peak: int
    """The most messages that ever waited in its mailbox at once (count)."""
    max_mailbox: int | None
    """Its mailbox bound (messages); None if unbounded."""
    overflow: str
    """What a full mailbox does with a new message: ``"drop"`` or ``"exit"``."""
    dropped: int
    """Messages its full mailbox refused (count, since it started)."""
    handled: int
    """Messages it handled (count, since it started)."""
    age: float
    """Seconds since it started (measured with ``time.monotonic``)."""
    status: ProcessStatus
    """Where it is in its life: see `ProcessStatus`."""
    links: int
    """Processes it is linked to (count)."""
    monitors: int
    """Monitors other processes hold on it (count)."""
    behaviour: str = "coroutine"
    """What kind of process it is, in the terms of `BEHAVIOURS` (``"server"`` for a
    `Server` subclass, whose class name is `kind`)."""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a new dict (``keys`` and ``groups`` as lists)."""
        return {
            "pid": self.pid,
            "kind": self.kind,
            "keys": list(self.keys),
            "groups": list(self.groups),
            "mailbox": self.mailbox,
            "mailbox_peak": self.mailbox_peak,
            "max_mailbox": self.max_mailbox,
            "overflow": self.overflow,
            "dropped": self.dropped,
            "handled": self.handled,
            "age": self.age,
            "status": self.status,
            "links": self.links,
            "monitors": self.monitors,
            "behaviour": self.behaviour,
        }


@dataclass(frozen=True, slots=True)
class NodeStats:
    """A node's counters as `Node.stats` saw them; the counts run from the node's
    start."""

    node: str
    """The node's name."""
    creation: int
    """Its creation: the number that tells this incarnation of the name from earlier
    ones (from the cluster's store when clustered, else from a counter)."""
    processes: int
    """Processes alive now (count)."""
    spawned: int
    """Processes started (count)."""
    exited: int
    """Processes ended, for any reason (count)."""
    crashed: int
    """Processes ended by an exception (count)."""
    handled: int
    """Messages handled by all its processes (count)."""
    dropped: int
    """Messages refused by full mailboxes (count)."""
    overloaded: int
    """Processes ended with reason ``"overload"`` (count)."""
    max_mailbox: int | None
    """The node's default mailbox bound (messages); None if unbounded."""
    runq: int
    """Processes waiting for their turn to run now (count)."""
    uptime: float
    """Seconds since the node started."""
    calls: int = 0
    """Calls handled by its servers (count; a call is one of the messages in
    `handled`)."""
    restarts: int = 0
    """Children restarted by its supervisors (count)."""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a new dict."""
        return {
            "node": self.node,
            "creation": self.creation,
            "processes": self.processes,
            "spawned": self.spawned,
            "exited": self.exited,
            "crashed": self.crashed,
            "handled": self.handled,
            "dropped": self.dropped,
            "overloaded": self.overloaded,
            "max_mailbox": self.max_mailbox,
            "runq": self.runq,
            "uptime": self.uptime,
            "calls": self.calls,
            "restarts": self.restarts,
        }


def _builder(cls: type[_R]) -> Callable[..., _R]:
    """A constructor of `cls` (a frozen dataclass with slots) at the cost of a plain
    one: a frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``,
    which made `Node.info` and `Node.stats` slower than the dicts they replaced. This
    is a mutable twin of `cls` with the same slots whose instances turn themselves
    into `cls` instances as their ``__init__`` ends (``__class__`` assignment between
    classes of the same layout), so what it returns is an ordinary, frozen `cls`.
    Takes the fields in order or by name."""

    def become(self: Any) -> None:
        self.__class__ = cls

    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    twin: Callable[..., _R] = make_dataclass(
        f"new_{cls.__name__}", names, slots=True, namespace={"__post_init__": become}
    )
    return twin


new_process_info: Callable[..., ProcessInfo] = _builder(ProcessInfo)
"""`ProcessInfo(...)`, faster: for `Node.info`."""
new_node_stats: Callable[..., NodeStats] = _builder(NodeStats)
"""`NodeStats(...)`, faster: for `Node.stats`."""
