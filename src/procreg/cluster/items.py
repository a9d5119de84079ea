"""The items of the cluster protocol between nodes (one small pickled tuple per
operation, `Remote`), and what is kept per peer and per incoming call: `Peer`
(what to undo if that node goes down) and `RemoteCaller` (how to answer a call that
came from it)."""

from __future__ import annotations

import asyncio
import pickle
from typing import TYPE_CHECKING, Any, Final

from ..errors import NoProcess, Overloaded, ProcessExited
from ..pid import Pid, Ref
from .codec import pack_item

if TYPE_CHECKING:
    from .remote import Remote

__all__ = [
    "SEND",
    "CAST",
    "CALL",
    "REPLY",
    "FAIL",
    "EXIT",
    "LINK",
    "UNLINK",
    "LINK_EXIT",
    "MONITOR",
    "DEMONITOR",
    "DOWN",
    "GROUP_SEND",
    "SPAWN",
    "RESET",
    "GPUB",
    "GNONE",
    "GVIEW",
    "LINK_LOST",
    "Peer",
    "RemoteCaller",
    "pack_lenient",
]

SEND: Final = 1
CAST: Final = 2
CALL: Final = 3
REPLY: Final = 4
FAIL: Final = 5
EXIT: Final = 6
LINK: Final = 7
UNLINK: Final = 8
LINK_EXIT: Final = 9
MONITOR: Final = 10
DEMONITOR: Final = 11
DOWN: Final = 12
GROUP_SEND: Final = 13
SPAWN: Final = 14
RESET: Final = 15  # "I dropped our links, monitors and calls": treat me as disconnected
GPUB: Final = 16  # a publish to a group: for the members the receiver has (`groupview`)
GNONE: Final = 17  # "I have no member of this group": drop me from your view of it
GVIEW: Final = 18  # members added and removed here (acknowledged if it has a call id)
LINK_LOST: Final = 19  # "a RESET of yours ended my side of this link": noconnection


def pack_lenient(item: tuple[Any, ...]) -> bytes:
    """Pickle a runtime item whose last field is an exit reason. A reason that does
    not survive a pickle round trip here (an exception holding a socket, or one whose
    ``__init__`` takes other arguments than it passes to ``Exception``) travels as its
    repr, so the Down or exit signal is never lost on the receiving side."""
    try:
        data = pack_item(item)
        pickle.loads(data)
    except Exception:
        return pack_item((*item[:-1], repr(item[-1])))
    return data


class RemoteCaller:
    """The caller of a call that came from another node: `reply` and `fail` send the
    answer back. Servers treat it like a local caller."""

    __slots__ = ("call_id", "done", "node", "remote")

    def __init__(self, remote: Remote, node: str, call_id: int) -> None:
        self.remote = remote
        self.node = node
        self.call_id = call_id
        self.done = False

    def reply(self, value: Any) -> None:
        if self.done:
            return
        self.done = True
        try:
            item = pack_item((REPLY, self.call_id, value))
        except TypeError as exc:
            item = pack_item((FAIL, self.call_id, "error", f"unpicklable reply: {exc}"))
        self.remote.transport.enqueue(self.node, item)

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        if isinstance(exc, ProcessExited):
            item = pack_lenient((FAIL, self.call_id, "exited", exc.reason))
        elif isinstance(exc, NoProcess):
            item = pack_item((FAIL, self.call_id, "noproc", str(exc)))
        elif isinstance(exc, Overloaded):
            item = pack_item((FAIL, self.call_id, "overload", (exc.pid, exc.bound)))
        else:  # the exception itself when it survives a pickle round trip, else its repr
            item = pack_lenient((FAIL, self.call_id, "error", exc))
        self.remote.transport.enqueue(self.node, item)


class Peer:
    """What we must undo if one other node goes down."""

    __slots__ = ("calls", "links", "name", "watch_in", "watch_out")

    def __init__(self, name: str) -> None:
        self.name = name
        self.links: set[tuple[Pid, Pid]] = set()  # (our pid, their pid)
        self.watch_out: dict[Ref, tuple[Pid, Pid]] = {}  # ref -> (our watcher, their pid)
        self.watch_in: dict[Ref, tuple[Pid, Pid]] = {}  # ref -> (our pid, their watcher)
        self.calls: dict[int, tuple[asyncio.Future[Any], Pid]] = {}
