"""The demo app through Starlette's test client: page, session counter and nickname,
chat rooms over WebSocket (text kept as typed; the page never renders it as HTML),
the clock, the mounted observer."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from procreg.web.demo import assets, create_app

SECRET = "demo-test-secret-0123456789"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(secret=SECRET, name="demo-test"), client=("127.0.0.1", 40000)) as c:
        yield c


def until(ws: Any, kind: str, limit: int = 20) -> dict[str, Any]:
    """The next message of type `kind` (clock ticks may come in between)."""
    for _ in range(limit):
        msg: dict[str, Any] = ws.receive_json()
        if msg["type"] == kind:
            return msg
    raise AssertionError(f"no {kind} message")


def test_page_is_plain_html_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert '<script src="/static/demo.js"></script>' in page.text
    assert "<script>" not in page.text  # no inline script
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert "ws://testserver" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/demo.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "textContent" in script.text
    assert "http" not in assets.INDEX_HTML  # no CDN, nothing from elsewhere
    assert client.get("/static/demo.css").status_code == 200


def test_visit_counter_lives_in_the_session(client: TestClient) -> None:
    assert [client.post("/api/visit").json()["visits"] for _ in range(3)] == [1, 2, 3]
    client.cookies.clear()
    assert client.post("/api/visit").json()["visits"] == 1


def test_nickname(client: TestClient) -> None:
    assert client.post("/api/visit").json()["nick"] is None
    assert client.post("/api/nick", json={"nick": "  Ann   Lee "}).json() == {"nick": "Ann Lee"}
    assert client.post("/api/visit").json()["nick"] == "Ann Lee"
    assert client.post("/api/nick", json={"nick": ""}).status_code == 400
    assert client.post("/api/nick", json={"nick": 5}).status_code == 400
    assert client.post("/api/nick", json=["x"]).status_code == 400
    assert client.post("/api/nick", data={"nick": "form"}).status_code == 400  # JSON only
    assert client.post("/api/nick", json={"nick": "x" * 100}).json()["nick"] == "x" * 32


def test_chat_in_a_room_is_kept_as_typed_and_reaches_everyone_there(
    client: TestClient,
) -> None:
    client.post("/api/nick", json={"nick": "<b>ann</b>"})
    with (
        client.websocket_connect("/ws/kitchen") as ann,
        client.websocket_connect("/ws/kitchen") as bob,
        client.websocket_connect("/ws/garden") as eve,
    ):
        for ws in (ann, bob, eve):
            assert until(ws, "history")["lines"] == []
        ann.send_json({"type": "say", "text": "<script>alert(1)</script> & hi"})
        for ws in (ann, bob):
            line = until(ws, "chat")
            assert line["text"] == "<script>alert(1)</script> & hi"
            assert line["nick"] == "<b>ann</b>"
            assert line["room"] == "kitchen"
        eve.send_json({"type": "say", "text": "only the garden"})
        assert until(eve, "chat")["text"] == "only the garden"
        bob.send_json({"type": "say", "text": "kitchen again"})
        assert until(ann, "chat")["text"] == "kitchen again"  # the garden's line never came
    # a newcomer gets the room's history
    with client.websocket_connect("/ws/kitchen") as late:
        history = until(late, "history")["lines"]
        assert [line["text"] for line in history] == [
            "<script>alert(1)</script> & hi",
            "kitchen again",
        ]
    rooms = {r["room"] for r in client.get("/api/rooms").json()["rooms"]}
    assert {"kitchen", "garden"} <= rooms


def test_room_names_cannot_reach_other_pools(client: TestClient) -> None:
    with (
        client.websocket_connect("/ws/lobby") as lobby,
        client.websocket_connect("/ws/clock") as room,
    ):
        until(lobby, "history")
        until(room, "history")
        room.send_json({"type": "say", "text": "in the room called clock"})
        assert until(room, "chat")["room"] == "clock"
        lobby.send_json({"type": "say", "text": "in the lobby"})
        assert until(lobby, "chat")["text"] == "in the lobby"  # not the clock room's line
        groups = {p["group"] for p in client.get("/observer/api/overview").json()["pools"]}
        assert {"pool / clock", "pool / (room / clock)"} <= groups


def test_bad_messages_get_an_error_and_the_socket_stays(client: TestClient) -> None:
    with client.websocket_connect("/ws/lobby") as ws:
        until(ws, "history")
        ws.send_json({"type": "shout"})
        assert "say" in until(ws, "error")["error"]
        ws.send_json({"type": "say", "text": "   "})  # empty: ignored
        ws.send_json({"type": "say", "text": "still here"})
        assert until(ws, "chat")["text"] == "still here"


def test_clock_ticks(client: TestClient) -> None:
    with client.websocket_connect("/ws/lobby") as ws:
        start = time.monotonic()
        first = until(ws, "clock", limit=50)
        second = until(ws, "clock", limit=50)
        assert time.monotonic() - start < 2.5
        assert second["epoch"] > first["epoch"]
        assert len(first["time"]) == 8  # HH:MM:SS


def test_the_observer_is_mounted_and_shows_the_demo(client: TestClient) -> None:
    client.post("/api/visit")
    with client.websocket_connect("/ws/lobby") as ws:
        until(ws, "history")
        rows = client.get("/observer/api/processes", params={"limit": 100}).json()["rows"]
        kinds = {r["kind"] for r in rows}
        assert {"AsyncPiServer", "SessionProcess", "Room", "CometProcess"} <= kinds
        behaviours = {r["behaviour"] for r in rows}
        assert {"pi", "session", "server", "connection", "supervisor"} <= behaviours
        tree = client.get("/observer/api/tree").json()["trees"][0]
        assert tree["children"][0]["id"] == "web / clock"
        assert client.post(f"/observer/api/processes/{rows[0]['pid']}/kill").status_code == 403


def test_the_demo_serves_prometheus_metrics(client: TestClient) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/api/visit")
    with client.websocket_connect("/ws/lobby") as ws:
        until(ws, "history")
        response = client.get("/metrics")
        assert response.status_code == 200
        kinds = {
            s.labels["behaviour"]: s.value
            for f in text_string_to_metric_families(response.text)
            if f.name == "procreg_processes"
            for s in f.samples
        }
    assert kinds["session"] == 1 and kinds["connection"] == 1 and kinds["pi"] == 1
