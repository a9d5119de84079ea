"""Sessions: signed cookies, one session process per browser, idle timeout, bad cookies."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings

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
from procreg.web import signing
from procreg.web.session import SESSIONS_TABLE

SECRET = "test-secret-0123456789abcdef"


async def visit(request: Request) -> JSONResponse:
    handle = procreg.web.session(request)
    return JSONResponse({"visits": await handle.incr("visits"), "sid": handle.sid})


async def put(request: Request) -> JSONResponse:
    await procreg.web.session(request).set("secret", request.query_params["value"])
    return JSONResponse({"ok": True})


async def get(request: Request) -> JSONResponse:
    handle = procreg.web.session(request)
    return JSONResponse({"secret": await handle.get("secret"), "sid": handle.sid})


async def everything(request: Request) -> JSONResponse:
    handle = procreg.web.session(request)
    await handle.set("a", 1)
    await handle.set("b", 2)
    deleted = await handle.delete("a")
    missing = await handle.delete("nope")
    items = await handle.items()
    await handle.clear()
    after = await handle.items()
    same = request.state.session is handle
    return JSONResponse(
        {"deleted": deleted, "missing": missing, "items": items, "after": after, "same": same}
    )


async def killed(request: Request) -> JSONResponse:
    """The session process dies between lookup and call: the call starts a new one."""
    handle = procreg.web.session(request)
    await handle.set("x", "old")
    pid = await handle.pid()
    procreg.exit(pid, "kill")
    value = await handle.get("x", "gone")
    return JSONResponse({"value": value, "new_pid": await handle.pid() != pid})


async def race(request: Request) -> JSONResponse:
    handle = procreg.web.session(request)
    fresh = [procreg.web.Session(handle.sid, handle.node, 60.0, False) for _ in range(100)]
    await asyncio.gather(*(h.incr("race") for h in fresh))
    return JSONResponse({"race": await handle.get("race")})


async def count(request: Request) -> JSONResponse:
    return JSONResponse({"sessions": procreg.count(SESSIONS_TABLE)})


ROUTES = [
    Route("/visit", visit),
    Route("/put", put),
    Route("/get", get),
    Route("/everything", everything),
    Route("/killed", killed),
    Route("/race", race),
    Route("/count", count),
]


def make_app(**options: object) -> Starlette:
    options.setdefault("secret", SECRET)
    return procreg.web.install(Starlette(routes=ROUTES), **options)  # type: ignore[arg-type]


def test_cookie_is_set_signed_httponly_samesite() -> None:
    with TestClient(make_app()) as client:
        response = client.get("/visit")
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("procreg_session=")
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Path=/" in cookie
        assert "Secure" not in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        assert signing.CookieSigner(SECRET).unsign(value) == response.json()["sid"]
        # a valid cookie is not set again
        assert "set-cookie" not in client.get("/visit").headers


def test_secure_flag_and_cookie_name() -> None:
    with TestClient(make_app(secure=True, cookie_name="sid")) as client:
        cookie = client.get("/visit").headers["set-cookie"]
        assert cookie.startswith("sid=")
        assert "; Secure" in cookie


def test_counter_increments_within_a_session() -> None:
    with TestClient(make_app()) as client:
        assert [client.get("/visit").json()["visits"] for _ in range(3)] == [1, 2, 3]
        other = TestClient(client.app)
        other.portal = client.portal  # the same server, a second browser
        assert other.get("/visit").json()["visits"] == 1
        assert client.get("/visit").json()["visits"] == 4


def test_handle_operations() -> None:
    with TestClient(make_app()) as client:
        body = client.get("/everything").json()
    assert body == {
        "deleted": True,
        "missing": False,
        "items": {"b": 2},
        "after": {},
        "same": True,
    }


def _tamper(value: str) -> list[str]:
    sid, mac = value.rsplit(".", 1)
    flip = {"A": "B"}.get(mac[0], "A")
    other_sid = ("B" if sid[0] != "B" else "C") + sid[1:]
    return [
        f"{sid}.{flip}{mac[1:]}",  # signature altered
        f"{other_sid}.{mac}",  # id altered
        sid,  # no signature
        signing.CookieSigner("another-secret-0123456789").sign(sid),  # foreign secret
        "garbage",
        "",
        "x" * 500,
    ]


def test_tampered_cookie_gets_a_fresh_session_never_the_victims() -> None:
    with TestClient(make_app()) as victim:
        victim.get("/put", params={"value": "victim's data"})
        victim_sid = victim.get("/get").json()["sid"]
        value = victim.cookies["procreg_session"]
        for bad in _tamper(value):
            attacker = TestClient(victim.app, cookies={"procreg_session": bad})
            attacker.portal = victim.portal
            response = attacker.get("/get")
            body = response.json()
            assert body["secret"] is None, bad
            assert body["sid"] != victim_sid, bad
            assert "set-cookie" in response.headers, bad
        assert victim.get("/get").json() == {"secret": "victim's data", "sid": victim_sid}


def test_idle_timeout_gives_a_fresh_empty_session() -> None:
    with TestClient(make_app(idle_timeout=0.2)) as client:
        assert client.get("/visit").json()["visits"] == 1
        assert client.get("/visit").json()["visits"] == 2
        assert client.get("/count").json()["sessions"] == 1
        time.sleep(0.5)
        assert client.get("/count").json()["sessions"] == 0  # ended, entry gone
        assert client.get("/visit").json()["visits"] == 1  # a new, empty process


def test_call_retries_once_when_the_process_died_after_lookup() -> None:
    with TestClient(make_app()) as client:
        assert client.get("/killed").json() == {"value": "gone", "new_pid": True}


def test_concurrent_requests_of_one_session_share_one_process() -> None:
    with TestClient(make_app()) as client:
        assert client.get("/race").json() == {"race": 100}
        assert client.get("/count").json()["sessions"] == 1


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signing.SECRET_ENV, "from-the-environment-0123")
    with TestClient(make_app(secret=None)) as client:
        value = client.get("/visit").headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert signing.CookieSigner("from-the-environment-0123").unsign(value) is not None


def test_random_secret_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(signing.SECRET_ENV, raising=False)
    monkeypatch.setattr(signing, "_process_secret", None)
    with caplog.at_level(logging.WARNING, logger="procreg.web"):
        first = signing.CookieSigner()
        second = signing.CookieSigner()
    assert "no session secret" in caplog.text
    assert second.unsign(first.sign("a" * 24)) == "a" * 24  # one secret per process


def test_bad_configuration_is_refused() -> None:
    app = Starlette()
    with pytest.raises(ValueError, match="16 bytes"):
        procreg.web.SessionMiddleware(app, secret="short")
    with pytest.raises(ValueError, match="cookie name"):
        procreg.web.SessionMiddleware(app, secret=SECRET, cookie_name="bad name;")
    with pytest.raises(ValueError):
        procreg.web.SessionMiddleware(app, secret=SECRET, idle_timeout=-1)


def test_session_without_middleware_says_what_to_do() -> None:
    async def handler(request: Request) -> JSONResponse:
        try:
            procreg.web.session(request)
        except RuntimeError as exc:
            return JSONResponse({"error": str(exc)})
        return JSONResponse({})

    app = Starlette(routes=[Route("/", handler)], lifespan=procreg.web.lifespan())
    with TestClient(app) as client:
        assert "SessionMiddleware" in client.get("/").json()["error"]


def test_signer_roundtrip_and_rejects() -> None:
    signer = signing.CookieSigner(SECRET)
    sid = signing.new_session_id()
    assert len(sid) == 24
    assert signer.unsign(signer.sign(sid)) == sid
    for bad in _tamper(signer.sign(sid)):
        assert signer.unsign(bad) is None
    assert signer.unsign(None) is None
