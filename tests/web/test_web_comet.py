"""Comet pools: one process per WebSocket connection, joined to a pool; publish; bad input."""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.websockets import WebSocket, WebSocketDisconnect

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

import procreg
import procreg.web
from procreg.web.comet import Connection

MAX_FRAME = 1024


async def on_message(websocket: WebSocket, data: Any, conn: Connection) -> None:
    if data == "crash":
        raise RuntimeError("asked to crash")
    if data == "bye":
        conn.close(4000, "bye")
        return
    if data == "session":
        assert conn.session is not None
        conn.send({"visits": await conn.session.incr("visits")})
        return
    conn.send({"echo": data, "me": str(procreg.self()), "pool": conn.pool})


async def on_connect(websocket: WebSocket, conn: Connection) -> None:
    conn.send({"hello": conn.pool})


async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    reached = await procreg.web.publish(request.path_params["pool"], body)
    return JSONResponse({"reached": reached})


async def raw(request: Request) -> JSONResponse:
    """A plain procreg.publish to the pool's group: forwarded as JSON too."""
    group = procreg.web.pool_group(request.path_params["pool"])
    return JSONResponse({"reached": await procreg.publish(group, {"raw": True})})


async def members(request: Request) -> JSONResponse:
    pids = await procreg.members(procreg.web.pool_group(request.path_params["pool"]))
    return JSONResponse({"members": [list(p) for p in pids]})


async def kill(request: Request) -> JSONResponse:
    pids = await procreg.members(procreg.web.pool_group(request.path_params["pool"]))
    for pid in pids:
        procreg.exit(pid, "kill")
    return JSONResponse({"killed": len(pids)})


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            procreg.web.comet_route(
                "/ws/{pool}",
                pool=lambda ws: ws.path_params["pool"],
                on_message=on_message,
                on_connect=on_connect,
                max_frame=MAX_FRAME,
            ),
            procreg.web.comet_route("/quiet", pool="quiet"),
            Route("/publish/{pool}", publish, methods=["POST"]),
            Route("/raw/{pool}", raw, methods=["POST"]),
            Route("/members/{pool}", members),
            Route("/kill/{pool}", kill, methods=["POST"]),
        ]
    )
    return procreg.web.install(app, secret="0123456789abcdef-secret")


@pytest.fixture
def client() -> Any:
    with TestClient(make_app()) as c:
        yield c


def count(client: TestClient, pool: str) -> int:
    return len(client.get(f"/members/{pool}").json()["members"])


def test_join_on_connect_and_leave_on_disconnect(client: TestClient) -> None:
    assert count(client, "room") == 0
    with client.websocket_connect("/ws/room") as ws:
        assert ws.receive_json() == {"hello": "room"}
        assert count(client, "room") == 1
        with client.websocket_connect("/ws/room") as ws2:
            ws2.receive_json()
            assert count(client, "room") == 2
        assert count(client, "room") == 1
    assert count(client, "room") == 0
    assert client.app.router.lifespan_context.node.process_count() == 0  # processes ended


def test_publish_reaches_the_pool_and_no_other(client: TestClient) -> None:
    with (
        client.websocket_connect("/ws/a") as a1,
        client.websocket_connect("/ws/a") as a2,
        client.websocket_connect("/ws/b") as b,
    ):
        for ws in (a1, a2, b):
            ws.receive_json()  # hello
        assert client.post("/publish/a", json={"n": 1}).json() == {"reached": 2}
        assert client.post("/publish/b", json={"n": 2}).json() == {"reached": 1}
        assert a1.receive_json() == {"n": 1}
        assert a2.receive_json() == {"n": 1}
        assert b.receive_json() == {"n": 2}  # b never saw a's message
        assert client.post("/raw/a").json() == {"reached": 2}
        assert a1.receive_json() == {"raw": True}


def test_publish_to_an_unknown_pool_reaches_nobody(client: TestClient) -> None:
    assert client.post("/publish/nobody-here", json={"x": 1}).json() == {"reached": 0}


def test_on_message_runs_in_the_connection_process(client: TestClient) -> None:
    with client.websocket_connect("/ws/echo") as ws:
        ws.receive_json()
        ws.send_json({"text": "hi"})
        reply = ws.receive_json()
        assert reply["echo"] == {"text": "hi"}
        assert reply["pool"] == "echo"
        assert [reply["me"]] == [
            str(procreg.Pid(*p)) for p in client.get("/members/echo").json()["members"]
        ]


def test_session_reaches_the_websocket(client: TestClient) -> None:
    client.get("/members/x")  # gets the cookie
    with client.websocket_connect("/ws/s") as ws:
        ws.receive_json()
        ws.send_json("session")
        assert ws.receive_json() == {"visits": 1}
        ws.send_json("session")
        assert ws.receive_json() == {"visits": 2}


def _closed(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = ws.receive()
    assert message["type"] == "websocket.close", message
    return message


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "websocket.receive", "text": "not json {"}, 1003),
        ({"type": "websocket.receive", "bytes": b"\x00\x01"}, 1003),
        ({"type": "websocket.receive", "text": "NaN"}, 1003),
        ({"type": "websocket.receive", "text": '"' + "x" * MAX_FRAME + '"'}, 1009),
        ({"type": "websocket.receive", "text": '"' + "é" * (MAX_FRAME // 2) + '"'}, 1009),
    ],
)
def test_bad_frames_close_the_connection_and_spare_the_pool(
    client: TestClient, frame: dict[str, Any], code: int
) -> None:
    with client.websocket_connect("/ws/pool") as good, client.websocket_connect("/ws/pool") as bad:
        good.receive_json()
        bad.receive_json()
        bad.send(frame)
        closed = _closed(bad)
        assert closed["code"] == code
        assert closed.get("reason")
        assert count(client, "pool") == 1  # the bad connection's process ended
        assert client.post("/publish/pool", json={"still": "works"}).json() == {"reached": 1}
        assert good.receive_json() == {"still": "works"}
        good.send_json("ping")
        assert good.receive_json()["echo"] == "ping"


def test_a_frame_just_under_the_limit_is_fine(client: TestClient) -> None:
    with client.websocket_connect("/ws/big") as ws:
        ws.receive_json()
        text = "y" * (MAX_FRAME - 2)
        ws.send_json(text)
        assert ws.receive_json()["echo"] == text


def test_a_crash_in_on_message_closes_with_1011(client: TestClient) -> None:
    with client.websocket_connect("/ws/c") as ws, client.websocket_connect("/ws/c") as other:
        ws.receive_json()
        other.receive_json()
        ws.send_json("crash")
        assert _closed(ws)["code"] == 1011
        assert count(client, "c") == 1
        assert client.post("/publish/c", json={"ok": 1}).json() == {"reached": 1}
        assert other.receive_json() == {"ok": 1}


def test_killing_the_connection_process_closes_the_socket(client: TestClient) -> None:
    with client.websocket_connect("/ws/k") as ws:
        ws.receive_json()
        assert client.post("/kill/k").json() == {"killed": 1}
        assert _closed(ws)["code"] == 1011


def test_the_process_can_close_its_connection(client: TestClient) -> None:
    with client.websocket_connect("/ws/close") as ws:
        ws.receive_json()
        ws.send_json("bye")
        closed = _closed(ws)
        assert (closed["code"], closed["reason"]) == (4000, "bye")
    assert count(client, "close") == 0


def test_without_on_message_frames_are_checked_and_dropped(client: TestClient) -> None:
    with client.websocket_connect("/quiet") as ws:
        ws.send_json({"ignored": True})
        assert client.post("/publish/quiet", json={"n": 1}).json() == {"reached": 1}
        assert ws.receive_json() == {"n": 1}
        ws.send_text("not json")
        assert _closed(ws)["code"] == 1003


def test_json_nested_too_deep_is_refused(client: TestClient) -> None:
    with client.websocket_connect("/quiet") as ws:
        ws.send_text("[" * 5000 + "]" * 5000)
        assert _closed(ws)["code"] == 1003


def test_cross_site_handshake_is_refused(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect("/ws/x", headers={"origin": "http://evil.example"}),
    ):
        pass
    assert refused.value.code == 1008
    with client.websocket_connect("/ws/x", headers={"origin": "http://testserver"}) as ws:
        assert ws.receive_json() == {"hello": "x"}


def test_unknown_room_names_are_fine(client: TestClient) -> None:
    for name in ("never-seen-before", "%C3%A9t%C3%A9", "a%20b"):
        with client.websocket_connect(f"/ws/{name}") as ws:
            assert "hello" in ws.receive_json()


def test_many_messages_arrive_in_order(client: TestClient) -> None:
    with client.websocket_connect("/ws/order") as ws:
        ws.receive_json()
        for i in range(50):
            client.post("/publish/order", json={"i": i})
        assert [ws.receive_json()["i"] for _ in range(50)] == list(range(50))


def test_publish_rejects_what_is_not_json() -> None:
    async def main() -> None:
        with pytest.raises(TypeError):
            await procreg.web.publish("p", {"a": object()})
        with pytest.raises(ValueError):
            await procreg.web.publish("p", float("nan"))
        with pytest.raises(ValueError, match="scope"):
            await procreg.web.publish("p", 1, scope="galactic")
        assert await procreg.web.publish("p", 1, scope="global") == 0

    procreg.run(main)


def test_endpoint_checks_its_options() -> None:
    with pytest.raises(TypeError, match="async def"):
        procreg.web.CometEndpoint("p", on_message=lambda ws, d, c: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_frame"):
        procreg.web.CometEndpoint("p", max_frame=0)
    with pytest.raises(ValueError, match="scope"):
        procreg.web.CometEndpoint("p", scope="everywhere")


def test_slow_on_message_applies_back_pressure() -> None:
    seen: list[int] = []

    async def slow(websocket: WebSocket, data: Any, conn: Connection) -> None:
        time.sleep(0.001)
        seen.append(data)
        if data == 99:
            conn.send({"done": len(seen)})

    app = procreg.web.install(
        Starlette(routes=[procreg.web.comet_route("/s", pool="s", on_message=slow, max_backlog=4)]),
        sessions=False,
    )
    with TestClient(app) as c, c.websocket_connect("/s") as ws:
        for i in range(100):
            ws.send_json(i)
        assert ws.receive_json() == {"done": 100}
    assert seen == list(range(100))
