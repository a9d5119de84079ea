"""Static checks of procreg's typing, for ``make typecheck`` (never run).

Each marked line must be an error for mypy (``# type: ignore[code]``, with
``--warn-unused-ignores``) and for pyright (``# pyright: ignore[rule]``, with
``reportUnnecessaryTypeIgnoreComment``): if a line stops being an error, the checker
reports the comment as unused and ``make typecheck`` fails. The other lines must pass.
"""

from __future__ import annotations

import dataclasses

import procreg


@dataclasses.dataclass(frozen=True)
class Get(procreg.Returns[int]):
    """A request whose reply is an int."""


class Counter(procreg.Server):
    def init(self, start: int, step: int = 1) -> None:  # narrows init: no override error
        self.n, self.step = start, step

    def handle_call(self, request: Get) -> int:  # narrows the request, renames it
        return self.n

    def handle_cast(self, by: int) -> None:
        self.n += by * self.step

    def handle_info(self, message: object) -> None:
        pass

    def terminate(self, why: object) -> None:
        pass


class AsyncCounter(procreg.Server):
    async def init(self, start: int) -> None:  # an async init is an override too
        self.n = start


class Plain(procreg.Server):
    pass


async def body(name: str, count: int, flag: bool = False) -> None:
    await procreg.receive()


async def checks() -> None:
    pid = procreg.spawn(Counter, 1)
    procreg.spawn(Counter, 1, 2)
    procreg.spawn(AsyncCounter, 1)
    procreg.spawn(Plain)
    procreg.spawn(body, "x", 1)
    Counter.start(3)
    await Counter.start_ready(3, 4, link=False)
    await procreg.get_or_spawn("k", Counter, 1, table="t")
    await procreg.spawn_unique("k", body, "x", 2)
    procreg.spawn_monitor(body, "x", 3, True)
    n: int = await procreg.call(pid, Get())  # typed by Returns[int]
    anything = await procreg.call(pid, "free-form")  # Any
    assert n == anything

    procreg.spawn(Counter, "one")  # a Server's init arguments are not checked
    procreg.spawn(body, 1, "x")  # type: ignore[call-arg, arg-type]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await procreg.get_or_spawn("k", body, "x")  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue, reportArgumentType]
    procreg.spawn(Counter())  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    reply = await procreg.call(pid, Get())
    s: str = reply  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    assert s


def run_checks() -> int:
    async def main(x: int) -> int:
        return x

    result: int = procreg.run(main, 1)
    procreg.run(main, "one")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    return result
