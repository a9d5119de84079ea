"""Typing helpers: call requests that declare their reply type; what type checkers
see of procreg's API.

Nothing here runs on a hot path: `Returns` is an empty base class.

**Typed replies.** `procreg.call` returns ``Any``, since what a server answers depends
on the request. A request class that derives from ``Returns[T]`` declares its reply
type, and ``await procreg.call(pid, request)`` is then typed ``T`` under mypy and
pyright (the server's ``handle_call`` is not checked against it: the declaration is a
promise of the request's author):

>>> import dataclasses, procreg
>>> @dataclasses.dataclass(frozen=True)
... class History(procreg.Returns[list[str]]):
...     last: int = 10
>>> class Room(procreg.Server):
...     def init(self) -> None:
...         self.lines = ["hello"]
...     def handle_call(self, request: History) -> list[str]:
...         return self.lines[-request.last :]
>>> async def main() -> list[str]:
...     room = procreg.spawn(Room)
...     return await procreg.call(room, History())   # typed list[str]
>>> procreg.run(main)
['hello']

**Typed factory arguments.** `procreg.spawn`, `procreg.spawn_monitor`,
`procreg.get_or_spawn` and `procreg.spawn_unique` check the arguments given for an
``async def`` body against its parameters (``procreg.spawn(body, 42)`` for
``async def body(name: str)`` is an error for mypy and pyright), and so does
`procreg.run` for its main function. A `Server` subclass's arguments are passed to
its ``init`` unchecked (typed ``Any``): no checker can follow them from the class to
its ``init`` when that has parameters with defaults.

**Server subclasses.** Type checkers see ``Server.init`` as ``init(*args, **kwargs)``,
so a subclass declares the parameters it takes (``def init(self, name: str) -> None``,
sync or async) without an incompatible-override error; the other callbacks
(``handle_call``, ``handle_cast``, ``handle_info``, ``terminate``) take their argument
positionally, so a subclass may name and narrow it as it likes
(``def handle_cast(self, line: str) -> None``).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Returns"]

R = TypeVar("R")


class Returns(Generic[R]):
    """Base class of a call request whose reply has type `R`: with
    ``class Get(procreg.Returns[int])``, ``await procreg.call(pid, Get())`` is typed
    ``int``. It is an empty base (no fields, no ``__init__``): a dataclass or a plain
    class can derive from it (a `typing.NamedTuple` cannot)."""

    __slots__ = ()
