"""A typical procreg web app, typed: it type-checks clean under ``mypy --strict`` and
pyright's basic and strict modes (``make typecheck`` checks it).

A shopping cart per browser session, kept in a process found by key; requests whose
reply type is declared (`procreg.Returns`), so that ``await procreg.call(...)`` is typed;
a supervised auditor that counts what was added; and a comet pool that announces it.

    python examples/typed_app.py                    # http://127.0.0.1:8000/
    uvicorn examples.typed_app:app                  # the same, one worker
    PROCREG_CLUSTER=redis://127.0.0.1:6379/0 PROCREG_WEB_SECRET=... \\
        uvicorn examples.typed_app:app --workers 2  # several workers: docs/DEPLOYING.md

``POST /cart/{item}`` adds an item to this browser's cart, ``GET /cart`` lists it,
``GET /stats`` asks the auditor, ``/ws`` hears every addition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncGenerator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import procreg
import procreg.web

# -- the requests: each declares the type of its reply -----------------------------------


@dataclasses.dataclass(frozen=True)
class Add(procreg.Returns[int]):
    """Put `count` of `item` in the cart; the reply is the number of items in it."""

    item: str
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Contents(procreg.Returns[dict[str, int]]):
    """The cart's items and their counts."""


@dataclasses.dataclass(frozen=True)
class Added(procreg.Returns[int]):
    """How many items the auditor saw added since it started."""


# -- the processes -----------------------------------------------------------------------


class Cart(procreg.Server):
    """One process per session: ``get_or_spawn(("cart", sid), Cart, sid)``."""

    def init(self, owner: str) -> None:
        self.owner = owner
        self.items: dict[str, int] = {}

    def handle_call(self, request: Add | Contents) -> int | dict[str, int]:
        match request:
            case Add(item, count):
                self.items[item] = self.items.get(item, 0) + count
                return sum(self.items.values())
            case Contents():
                return dict(self.items)


AUDITOR = ("app", "auditor")  # the auditor's registry key


class Auditor(procreg.Server):
    """A supervised singleton: restarted if it crashes, always found under `AUDITOR`."""

    def init(self) -> None:
        self.added = 0

    def handle_cast(self, count: int) -> None:
        self.added += count

    def handle_call(self, request: Added) -> int:
        return self.added


async def greeter(pool: str, text: str) -> None:
    """A coroutine process: announces itself to `pool`, then answers pings."""
    await procreg.web.publish(pool, {"text": text})
    while True:
        message = await procreg.receive()
        if isinstance(message, procreg.Call):
            procreg.reply(message.caller, "pong")


# -- the web side --------------------------------------------------------------------------


async def cart_of(request: Request) -> procreg.Pid:
    sid = procreg.web.session(request).sid
    return await procreg.get_or_spawn(
        ("cart", sid), Cart, sid, table="carts", idle_timeout=30 * 60.0
    )


async def add(request: Request) -> JSONResponse:
    item = str(request.path_params["item"])
    size = await procreg.call(await cart_of(request), Add(item))  # typed: int
    auditor = await procreg.whereis(AUDITOR)  # wherever the auditor runs now
    if auditor is not None:
        procreg.cast(auditor, 1)
    await procreg.web.publish("carts", {"added": item, "size": size})
    return JSONResponse({"size": size})


async def contents(request: Request) -> JSONResponse:
    items = await procreg.call(await cart_of(request), Contents())  # dict[str, int]
    return JSONResponse({"items": items, "total": sum(items.values())})


async def stats(request: Request) -> JSONResponse:
    auditor = await procreg.whereis(AUDITOR)
    added = 0 if auditor is None else await procreg.call(auditor, Added())  # int
    return JSONResponse({"added": added, "nodes": procreg.nodes()})


@contextlib.asynccontextmanager
async def startup(app: Starlette) -> AsyncGenerator[None, None]:
    """Runs inside the procreg node: start the supervised processes."""
    await procreg.Supervisor.start([procreg.child(Auditor, id="auditor", key=AUDITOR)], name="app")
    procreg.spawn(greeter, "carts", "the shop is open")
    yield


app = Starlette(
    routes=[
        Route("/cart/{item}", add, methods=["POST"]),
        Route("/cart", contents),
        Route("/stats", stats),
        procreg.web.comet_route("/ws", pool="carts"),
    ],
    lifespan=startup,
)
# the node (cluster from PROCREG_CLUSTER, if set), sessions (secret from
# PROCREG_WEB_SECRET) and, on this machine only, the observer
procreg.web.install(
    app,
    secret=os.environ.get("PROCREG_WEB_SECRET") or None,
    observer=True,
)

if __name__ == "__main__":
    procreg.web.serve(app, host="127.0.0.1", port=8000)
