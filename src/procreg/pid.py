"""Process identifiers (`Pid`) and unique references (`Ref`).

A `Pid` names one process for its whole life and never names another: it carries the
node's name, the node's *creation* (a number that changes every time a node with that
name starts) and a serial unique within that node incarnation.

>>> p = Pid("web1", 1, 42)
>>> p
<web1.1.42>
>>> p.node, p.creation, p.serial
('web1', 1, 42)
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["Pid", "Ref"]


class Pid(tuple[str, int, int]):
    """The identity of a process: ``(node, creation, serial)``.

    Hashable, ordered, picklable and cheap: it is a tuple underneath, so hashing and
    equality run in C. Create pids with `procreg.spawn` or `Server.start`, not by hand.
    """

    __slots__ = ()

    def __new__(cls, node: str, creation: int, serial: int) -> Pid:
        return tuple.__new__(cls, (node, creation, serial))

    @property
    def node(self) -> str:
        """Name of the node the process runs on."""
        return self[0]

    @property
    def creation(self) -> int:
        """Incarnation number of that node when the process was spawned."""
        return self[1]

    @property
    def serial(self) -> int:
        """Serial number, unique within one node incarnation."""
        return self[2]

    def __repr__(self) -> str:
        return f"<{self[0]}.{self[1]}.{self[2]}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pid, (self[0], self[1], self[2]))

    def __getnewargs__(self) -> tuple[str, int, int]:
        return (self[0], self[1], self[2])


_ref_counter = itertools.count(1)


class Ref:
    """A unique reference, as returned by `procreg.monitor`.

    Two refs are equal only if they are the same monitor. Picklable, so a `Down`
    message can cross nodes.
    """

    __slots__ = ("_id", "_node")

    def __init__(self, node: str = "", ident: int | None = None) -> None:
        self._node = node
        self._id = next(_ref_counter) if ident is None else ident

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and self._id == other._id and self._node == other._node

    def __hash__(self) -> int:
        return hash((self._node, self._id))

    def __repr__(self) -> str:
        return f"#Ref<{self._node}.{self._id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ref, (self._node, self._id))
