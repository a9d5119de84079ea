"""Back-pressure on comet connections (issue 13): a client that falls behind is
dropped with close code 1013 and leaves its pool, the others keep receiving
everything, and `publish` says whom it did not reach.

Two kinds of tests: real ones (uvicorn on a free 127.0.0.1 port, `websockets`
clients, as `bench/web.py` does) for a client that never reads, and in-process
ones (Starlette's TestClient) where the connection process is held busy on purpose.
No timing thresholds: loops are bounded in count, waits only guard against hangs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

import procreg
import procreg.web
from procreg.web.comet import CLOSE_TRY_AGAIN_LATER, Connection, Frame
from procreg.web.context import use_node

BUFFER = 16 * 1024  # small socket buffers: a stalled client is seen after ~100 KB


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    """Serve `app` with uvicorn on a free loopback port (small send buffers, no pings,
    no compression: the bytes queued are the bytes sent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)  # accepted sockets too
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        ws_ping_interval=None,
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10.0)
        sock.close()


async def client(port: int, path: str, *, small: bool = False) -> ClientConnection:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return await connect(
        f"ws://127.0.0.1:{port}{path}",
        sock=sock,
        ping_interval=None,
        compression=None,
        max_size=1 << 20,
        max_queue=4,  # the library's own buffer: a client that does not read stalls soon
    )


class Reader:
    """A fast client: reads every message as it comes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.got: list[Any] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                self.got.append(message)

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def read_to_close(ws: ClientConnection, limit: int = 100_000) -> tuple[int, Any]:
    """Read what is left until the close frame: (messages read, close frame)."""
    n = 0
    try:
        for _ in range(limit):
            await asyncio.wait_for(ws.recv(), 30.0)
            n += 1
    except ConnectionClosed as exc:
        return n, exc.rcvd
    raise AssertionError("the connection was never closed")


async def until(condition: Any, turns: int = 3000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never met")


async def members(n: int) -> list[procreg.Pid]:
    """The pool's members, once there are `n` of them."""
    group = procreg.web.pool_group("p")
    for _ in range(3000):
        pids = await procreg.members(group)
        if len(pids) == n:
            return pids
        await asyncio.sleep(0.002)
    raise AssertionError(f"the pool never had {n} members")


def noise(i: int) -> dict[str, Any]:
    """A message of ~8 KB that does not compress."""
    return {"i": i, "pad": base64.b64encode(os.urandom(6000)).decode()}


def real_app(**options: Any) -> tuple[Starlette, Any]:
    route = procreg.web.comet_route("/ws", pool="p", **options)
    app = procreg.web.install(Starlette(routes=[route]), sessions=False)
    return app, route.endpoint


def test_a_client_that_never_reads_is_closed_with_1013_and_leaves_its_pool() -> None:
    async def main() -> None:
        app, endpoint = real_app(max_queue=50, send_timeout=60.0)
        async with served(app) as port:
            node = app.router.lifespan_context.node
            slow = await client(port, "/ws", small=True)
            fast = [Reader(await client(port, "/ws")) for _ in range(2)]
            with use_node(node):
                await members(3)
                sent = 0
                refused = None
                for i in range(3000):  # bounded: the slow client stalls after ~70
                    result = await procreg.web.publish("p", noise(i))
                    sent += 1
                    if result.missed:
                        refused = result
                        break
                    await until(lambda n=sent: all(len(r.got) >= n for r in fast))
                assert refused is not None, "the slow client was never refused"
                assert (refused.reached, refused.missed) == (2, 1)
                # it ends with "overload" and leaves the pool once it has unwound
                await members(2)
                after = [await procreg.web.publish("p", {"after": i}) for i in range(5)]
                assert [(r.reached, r.missed) for r in after] == [(2, 0)] * 5
                await until(lambda: all(len(r.got) == sent + 5 for r in fast))
            for r in fast:  # the fast clients got everything, in order
                assert [json.loads(m)["i"] for m in r.got[:sent]] == list(range(sent))
                assert r.got[sent:] == [f'{{"after":{i}}}' for i in range(5)]
            read, close = await read_to_close(slow)
            assert close is not None and close.code == CLOSE_TRY_AGAIN_LATER
            assert read < sent  # what it had not read was dropped, not queued forever
            stats = node.stats()
            assert stats.overloaded == 1 and stats.dropped == 1
            assert endpoint.stats() == {"connections": 2, "closed_slow": 1, "send_timeouts": 0}
            for r in fast:
                await r.close()

    asyncio.run(main())


def test_a_write_blocked_over_send_timeout_drops_the_client() -> None:
    """No more publishing once the socket has stalled: the queue never fills, the
    send timeout alone drops the client."""

    async def main() -> None:
        app, endpoint = real_app(max_queue=100_000, max_queue_bytes=1 << 30, send_timeout=0.2)
        async with served(app) as port:
            node = app.router.lifespan_context.node
            slow = await client(port, "/ws", small=True)
            with use_node(node):
                (pid,) = await members(1)
                sent = 0
                for i in range(3000):  # until a write blocks and messages wait behind it
                    await procreg.web.publish("p", noise(i))
                    sent += 1
                    await asyncio.sleep(0)
                    info = node.info(pid)
                    if info is not None and info.mailbox >= 3:
                        break
                assert node.info(pid) is not None
                await until(lambda: not node.is_alive(pid))
            read, close = await read_to_close(slow)
            assert close is not None and close.code == CLOSE_TRY_AGAIN_LATER
            assert read < sent
            assert endpoint.stats() == {"connections": 0, "closed_slow": 1, "send_timeouts": 1}
            assert node.stats().overloaded == 1
            assert node.stats().dropped == 0  # nothing was refused: the write timed out

    asyncio.run(main())


# -- in process: the connection process held busy by its on_message ------------------------


def busy_app(**options: Any) -> tuple[Starlette, Any, dict[str, Any]]:
    """A pool whose connection blocks in on_message("block") until POST /release;
    POST /pub publishes `n` frames of exactly `size` bytes and returns the results."""
    state: dict[str, Any] = {"blocked": 0}

    async def on_message(websocket: WebSocket, data: Any, conn: Connection) -> None:
        if data == "block":
            gate = state["gate"] = asyncio.get_running_loop().create_future()
            state["blocked"] += 1
            await asyncio.shield(gate)

    async def pub(request: Request) -> JSONResponse:
        n, size = int(request.query_params["n"]), int(request.query_params["size"])
        for _ in range(1000):  # wait until the connection process is blocked
            if state["blocked"]:
                break
            await asyncio.sleep(0.002)
        out = []
        for _ in range(n):
            result = await procreg.web.publish("b", "x" * (size - 2))  # + 2 quotes
            out.append([result.reached, result.missed])
        return JSONResponse({"results": out})

    route = procreg.web.comet_route("/ws", pool="b", on_message=on_message, **options)
    app = Starlette(routes=[route, Route("/pub", pub, methods=["POST"])])
    return procreg.web.install(app, sessions=False), route.endpoint, state


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        ({"max_queue": 3}, 3),  # the message bound
        ({"max_queue_bytes": 5000}, 5),  # the byte bound: 5 frames of 1,000 bytes
    ],
)
def test_a_connection_behind_its_queue_bound_is_dropped_with_1013(
    options: dict[str, Any], accepted: int
) -> None:
    app, endpoint, _ = busy_app(**options)
    with TestClient(app) as c, c.websocket_connect("/ws") as ws:
        ws.send_json("block")
        results = c.post("/pub", params={"n": 8, "size": 1000}).json()["results"]
        assert results == [[1, 0]] * accepted + [[0, 1]] * (8 - accepted)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == CLOSE_TRY_AGAIN_LATER
        node = app.router.lifespan_context.node
        assert node.stats().overloaded == 1 and node.stats().dropped == 1
        assert endpoint.stats()["closed_slow"] == 1
        assert c.post("/pub", params={"n": 1, "size": 10}).json()["results"] == [[0, 0]]


def test_a_frame_bigger_than_the_byte_budget_passes_when_nothing_waits() -> None:
    app, _, _ = busy_app(max_queue_bytes=100)
    with TestClient(app) as c, c.websocket_connect("/ws") as ws:
        ws.send_json("block")
        results = c.post("/pub", params={"n": 2, "size": 500}).json()["results"]
        assert results == [[1, 0], [0, 1]]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == CLOSE_TRY_AGAIN_LATER


def test_limits_come_from_the_endpoint_then_install_then_the_defaults() -> None:
    own = procreg.web.CometEndpoint("p", max_queue=7)
    default = procreg.web.CometEndpoint("p")
    app = procreg.web.install(
        Starlette(), sessions=False, comet_max_queue=11, comet_send_timeout=2.5
    )

    class Fake:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

    ws: Any = Fake({"app": app})
    assert own.limits(ws) == (7, procreg.web.comet.DEFAULT_MAX_QUEUE_BYTES, 2.5)
    assert default.limits(ws) == (11, 1024 * 1024, 2.5)
    assert default.limits(Fake({})) == (1000, 1024 * 1024, 10.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [{"max_queue": 0}, {"max_queue_bytes": -1}, {"max_queue": 1.5}, {"send_timeout": 0}],
)
def test_bad_limits_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        procreg.web.CometEndpoint("p", **options)
    with pytest.raises(ValueError):
        procreg.web.install(
            Starlette(), sessions=False, **{f"comet_{k}": v for k, v in options.items()}
        )


def test_frame_size_is_its_utf8_length() -> None:
    assert Frame('"abc"').size == 5
    assert Frame('"é€"').size == 2 + 2 + 3
    assert Frame("x", 99).size == 99
    assert Frame("x") == Frame("x", 7)  # the size is not part of equality


def test_a_connection_overloaded_before_its_body_runs_still_closes_with_1013() -> None:
    """Frames published between the spawn and the body's first step can fill the
    queue: the process then ends without its body ever running, and the endpoint
    must still learn how to close."""
    from procreg.web.comet import CometProcess, _connection_process

    class FakeSocket:
        def __init__(self) -> None:
            self.scope: dict[str, Any] = {}

    async def main() -> tuple[bool, Any, Any]:
        node = procreg.current_node()
        conn = Connection(FakeSocket(), "p", "local", node)  # type: ignore[arg-type]
        proc = node._start_body(
            node._new_pid(), _connection_process, (conn, None, None), None, CometProcess
        )
        assert isinstance(proc, CometProcess)
        proc._conn = conn
        node.bound(proc, 2, "exit")
        conn.pid = proc.pid
        sent = [node.send(proc.pid, Frame(f'"{i}"')) for i in range(3)]
        assert sent == [True, True, False]
        close = await asyncio.wait_for(conn._done, 5.0)
        return node.is_alive(proc.pid), close, node.stats().overloaded

    alive, close, overloaded = procreg.run(main)
    assert not alive
    assert close is not None and close.code == CLOSE_TRY_AGAIN_LATER
    assert overloaded == 1
