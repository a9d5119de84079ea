"""The node lifecycle of a web app: `lifespan`, `install`, and which node a handler uses."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

import procreg
import procreg.web


class Echo(procreg.Server):
    def handle_call(self, request: object) -> object:
        return request


async def spawn_here(request: Request) -> JSONResponse:
    pid = Echo.start()
    node = procreg.current_node()
    return JSONResponse(
        {
            "node": node.name,
            "pid_node": pid.node,
            "state_node": request.state.procreg_node.name,
            "echo": await procreg.call(pid, "hi"),
        }
    )


def test_lifespan_starts_and_stops_a_node() -> None:
    lifespan = procreg.web.lifespan(name="web-a")
    app = Starlette(routes=[Route("/", spawn_here)], lifespan=lifespan)
    assert lifespan.node is None
    with TestClient(app) as client:
        node = lifespan.node
        assert node is not None and node.running
        body = client.get("/").json()
        assert body == {"node": "web-a", "pid_node": "web-a", "state_node": "web-a", "echo": "hi"}
        assert node.process_count() == 1
    assert lifespan.node is None
    assert not node.running


def test_two_apps_at_once_each_use_their_own_node() -> None:
    apps = [
        procreg.web.install(Starlette(routes=[Route("/", spawn_here)]), sessions=False, name=name)
        for name in ("left", "right")
    ]
    with TestClient(apps[0]) as left, TestClient(apps[1]) as right:
        for _ in range(2):
            assert left.get("/").json()["pid_node"] == "left"
            assert right.get("/").json()["pid_node"] == "right"


def test_inner_lifespan_runs_inside_the_node() -> None:
    seen: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def startup(app: Starlette) -> AsyncIterator[dict[str, object]]:
        pid = await procreg.get_or_spawn("service", Echo)
        seen["started"] = pid
        yield {"service": pid}
        seen["stopping_alive"] = procreg.is_alive(pid)

    async def handler(request: Request) -> JSONResponse:
        pid = request.state.service
        return JSONResponse({"same": pid == await procreg.whereis("service")})

    app = Starlette(routes=[Route("/", handler)], lifespan=startup)
    procreg.web.install(app, secret="0123456789abcdef-secret")
    with TestClient(app) as client:
        assert client.get("/").json() == {"same": True}
    assert seen["stopping_alive"] is True  # the app's lifespan ends before the node


def test_install_refuses_twice_and_non_starlette() -> None:
    app = procreg.web.install(Starlette(), secret="0123456789abcdef-secret")
    with pytest.raises(RuntimeError, match="already"):
        procreg.web.install(app)
    with pytest.raises(TypeError, match="Starlette"):
        procreg.web.install(object())  # type: ignore[type-var]


def test_install_mounts_the_observer() -> None:
    app = procreg.web.install(Starlette(), secret="0123456789abcdef-secret", observer=True)
    with TestClient(app, client=("127.0.0.1", 40000)) as client:
        assert client.get("/observer/api/overview").status_code == 200
        assert client.get("/observer").status_code == 200  # redirected to /observer/


def test_fastapi_app() -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/")
    async def home(request: Request) -> dict[str, object]:
        visits = await procreg.web.session(request).incr("visits")
        return {"visits": visits, "node": procreg.current_node().name}

    procreg.web.install(app, secret="0123456789abcdef-secret", name="fast")
    with TestClient(app) as client:
        assert client.get("/").json() == {"visits": 1, "node": "fast"}
        assert client.get("/").json() == {"visits": 2, "node": "fast"}


def test_node_middleware_without_a_node_lets_plain_handlers_run() -> None:
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", plain)])
    app.add_middleware(procreg.web.NodeMiddleware)
    with TestClient(app) as client:
        assert client.get("/").json() == {"ok": True}
