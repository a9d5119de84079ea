"""The observer's JSON endpoints: tables, paging and search over many processes, the
supervision tree, rates, and the token that guards write actions."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.routing import Mount

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

import procreg
import procreg.web
from procreg.web.lifespan import NodeLifespan
from procreg.web.observer.snapshot import RateMeter, mask_key, parse_pid

TOKEN = "observer-token-0123456789"
LOCAL = ("127.0.0.1", 40000)


class Idle(procreg.Server):
    def handle_call(self, request: object) -> object:
        return request


class Harness:
    """An app with the observer mounted at /observer, and a way to run code on its node."""

    def __init__(self, client: TestClient, lifespan: NodeLifespan) -> None:
        self.client = client
        self.lifespan = lifespan

    @property
    def node(self) -> procreg.Node:
        assert self.lifespan.node is not None
        return self.lifespan.node

    def run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        async def inside() -> Any:
            with procreg.web.use_node(self.node):
                return await fn()

        assert self.client.portal is not None
        return self.client.portal.call(inside)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get("/observer" + path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


def make(**observer_options: Any) -> tuple[Starlette, NodeLifespan]:
    lifespan = procreg.web.lifespan(name="obs")
    observer = procreg.web.Observer(**observer_options)
    return Starlette(routes=[Mount("/observer", observer)], lifespan=lifespan), lifespan


@pytest.fixture
def h() -> Iterator[Harness]:
    app, lifespan = make(writable=True, token=TOKEN, scan_limit=5000)
    with TestClient(app, client=LOCAL) as client:
        yield Harness(client, lifespan)


def test_page_and_assets_are_served_with_a_strict_policy(h: Harness) -> None:
    page = h.client.get("/observer/")
    assert page.status_code == 200
    assert "procreg observer" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    script = h.client.get("/observer/observer.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text
    assert h.client.get("/observer/observer.css").status_code == 200


def test_overview_lists_the_node_tables_and_pools(h: Harness) -> None:
    async def setup() -> None:
        for i in range(7):
            await procreg.get_or_spawn(("thing", i), Idle, table="things")
        for _ in range(3):
            await procreg.join(procreg.web.pool_group("lobby"), Idle.start())

    h.run(setup)
    body = h.get("/api/overview")
    (node,) = body["nodes"]
    assert node["node"] == "obs" and node["processes"] == 10
    assert set(node["rates"]) == {"spawn", "exit", "crash", "messages"}
    assert {"table": "things", "count": 7, "nodes": {"obs": 7}} in body["tables"]
    assert {"group": "pool / lobby", "members": 3} in body["pools"]
    assert body["self"] == "obs" and body["clustered"] is False and body["events"] == []
    assert node["answered"] is True and node["self"] is True and node["cluster"] is None
    assert body["writable"] is True


def test_paging_20000_processes_builds_only_the_page(h: Harness) -> None:
    async def setup() -> None:
        for i in range(20_000):
            await procreg.get_or_spawn(("many", i), Idle, table="many")

    h.run(setup)
    calls = 0
    real_info = h.node.info

    def counting(pid: procreg.Pid) -> Any:
        nonlocal calls
        calls += 1
        return real_info(pid)

    h.node.info = counting  # type: ignore[method-assign]
    first = h.get("/api/processes", offset=0, limit=50)
    assert first["total"] == 20_000 and len(first["rows"]) == 50
    assert calls == 50
    row = first["rows"][0]
    assert row["kind"] == "Idle" and row["keys"] == ["many: many / 0"]
    assert row["behaviour"] == "server" and row["node"] == "obs"
    assert {"mailbox", "handled", "age", "status"} <= set(row)
    last = h.get("/api/processes", offset=19_990, limit=50)
    assert [r["keys"][0] for r in last["rows"]][-1] == "many: many / 19999"
    assert len(last["rows"]) == 10
    assert h.get("/api/processes", offset=10**9)["rows"] == []
    assert len(h.get("/api/processes", limit=10**6)["rows"]) == 500  # capped


def test_search_is_bounded_and_resumable(h: Harness) -> None:
    async def setup() -> None:
        for i in range(12_000):
            await procreg.get_or_spawn(("filler", i), Idle, table="filler")
        for i in range(3):
            await procreg.get_or_spawn(("needle", i), Idle, table="hay")

    h.run(setup)
    first = h.get("/api/processes", q="NEEDLE")  # case-insensitive
    assert first["rows"] == [] and first["truncated"] is True
    assert first["scanned"] == 5000 and first["next_cursor"] == 5000
    found: list[str] = []
    cursor: int | None = 0
    while cursor is not None:
        page = h.get("/api/processes", q="needle", cursor=cursor)
        found += [r["keys"][0] for r in page["rows"]]
        cursor = page["next_cursor"]
    assert found == [f"hay: needle / {i}" for i in range(3)]
    by_kind = h.get("/api/processes", q="idle", limit=5)
    assert len(by_kind["rows"]) == 5 and by_kind["truncated"] is False
    pid = by_kind["rows"][0]["pid"]
    assert h.get("/api/processes", q=pid)["rows"][0]["pid"] == pid


def test_process_detail(h: Harness) -> None:
    pid = h.run(lambda: procreg.get_or_spawn("one", Idle))
    assert h.get(f"/api/processes/{pid.node}.{pid.creation}.{pid.serial}")["pid"] == str(pid)
    assert h.client.get("/observer/api/processes/nope").status_code == 404
    assert h.client.get("/observer/api/processes/obs.1.999999").status_code == 404


def test_mailbox_bounds_drops_and_overloads_are_shown(h: Harness) -> None:
    class Stuck(procreg.Server):
        async def handle_cast(self, msg: object) -> None:
            await asyncio.Event().wait()

    async def setup() -> tuple[str, str]:
        full = Stuck.start(max_mailbox=3)
        gone = Stuck.start(max_mailbox=1, overflow="exit")
        for pid in (full, gone):
            for i in range(6):
                procreg.cast(pid, i)
            await asyncio.sleep(0)
            for i in range(6):
                procreg.cast(pid, i)
        return str(full), str(gone)

    full, gone = h.run(setup)
    row = h.get(f"/api/processes/{full}")
    assert (row["mailbox"], row["max_mailbox"], row["mailbox_peak"]) == (3, 3, 3)
    assert row["dropped"] == 3 + 5  # 6 sent, 3 fit; then 1 taken, 1 fits, 5 refused
    assert h.client.get(f"/observer/api/processes/{gone}").status_code == 404
    node = h.get("/api/overview")["nodes"][0]
    assert node["overloaded"] == 1
    assert node["dropped"] == 8 + 1  # the "exit" one refused one message, then ended
    assert "peak" in h.client.get("/observer/").text


def test_supervision_tree(h: Harness) -> None:
    async def setup() -> None:
        root = await procreg.supervisor.root()
        await procreg.Supervisor.start_child(root, procreg.child(Idle, id="w1", key="w1"))
        inner = procreg.child(procreg.Supervisor, [procreg.child(Idle, id="leaf")], id="inner")
        await procreg.Supervisor.start_child(root, inner)

    h.run(setup)
    (tree,) = h.get("/api/tree")["trees"]
    assert tree["id"] == "root" and tree["kind"] == "supervisor"
    assert tree["behaviour"] == "supervisor"
    children = {c["id"]: c for c in tree["children"]}
    assert children["w1"]["process_kind"] == "Idle" and children["w1"]["behaviour"] == "server"
    assert children["w1"]["keys"] == ["default: w1"]
    inner = children["inner"]
    assert inner["kind"] == "supervisor"
    assert [c["id"] for c in inner["children"]] == ["leaf"]


def test_tree_is_empty_without_supervisors(h: Harness) -> None:
    assert h.get("/api/tree") == {"node": "obs", "trees": []}


def test_scoped_view_on_an_embedded_node_says_so(h: Harness) -> None:
    body = h.get("/api/scoped")
    assert body["clustered"] is False and body["self"] == "obs"
    assert body["processes"] == [] and body["local"] == [] and body["history"] == []
    assert body["total"] == 0 and body["truncated"] is False


def test_kill_needs_writable_and_the_token() -> None:
    for options in ({}, {"writable": False, "token": TOKEN}):
        app, lifespan = make(**options)
        with TestClient(app, client=LOCAL) as client:
            pid = Harness(client, lifespan).run(lambda: procreg.get_or_spawn("victim", Idle))
            url = f"/observer/api/processes/{str(pid)[1:-1]}/kill"
            response = client.post(url, headers={"x-procreg-token": TOKEN})
            assert response.status_code == 403
            assert "read-only" in response.json()["error"]


def test_kill_with_the_token(h: Harness) -> None:
    pid = h.run(lambda: procreg.get_or_spawn("victim", Idle))
    url = f"/observer/api/processes/{str(pid)[1:-1]}/kill"
    assert h.client.post(url).status_code == 403
    assert h.client.post(url, headers={"x-procreg-token": "wrong" * 5}).status_code == 403
    assert h.client.post(url, params={"token": TOKEN[:-1]}).status_code == 403
    assert h.node.is_alive(pid)
    response = h.client.post(url, headers={"x-procreg-token": TOKEN})
    assert response.json() == {"killed": str(pid)}
    assert not h.node.is_alive(pid)
    assert h.client.post(url, params={"token": TOKEN}).status_code == 404  # already gone
    assert h.client.get(url).status_code == 405  # writes are POST only


def test_remote_clients_are_refused() -> None:
    app, _ = make()
    with TestClient(app, client=("192.0.2.10", 5555)) as client:
        assert client.get("/observer/api/overview").status_code == 403
    app, _ = make(allow_remote=True)
    with TestClient(app, client=("192.0.2.10", 5555)) as client:
        assert client.get("/observer/api/overview").status_code == 200


def test_observer_options_are_checked() -> None:
    with pytest.raises(ValueError, match="token"):
        procreg.web.Observer(writable=True)
    with pytest.raises(ValueError, match="16"):
        procreg.web.Observer(writable=True, token="short")


def test_bad_query_parameters_get_400(h: Harness) -> None:
    assert h.client.get("/observer/api/processes", params={"offset": "x"}).status_code == 400


def test_malformed_pids_are_not_found_not_a_crash(h: Harness) -> None:
    # "²" passes str.isdigit but int() refuses it; a 5000-digit serial
    # is past int()'s default digit limit
    for text in ("<obs.1.²>", "<obs.².1>", "obs.1." + "9" * 5000):
        assert h.client.get(f"/observer/api/processes/{text}").status_code == 404, text
        response = h.client.post(
            f"/observer/api/processes/{text}/kill", headers={"X-Procreg-Token": TOKEN}
        )
        assert response.status_code == 404, text


def test_session_ids_are_masked() -> None:
    app = procreg.web.install(Starlette(), secret="0123456789abcdef-secret", observer=True)
    with TestClient(app, client=LOCAL) as client:

        async def open_session() -> str:
            handle = procreg.web.Session(
                "AbCdEfGhIjKlMnOpQrStUvWx", procreg.current_node(), 60, True
            )
            await handle.set("k", "v")
            return handle.sid

        lifespan = app.router.lifespan_context
        assert isinstance(lifespan, NodeLifespan)
        sid = Harness(client, lifespan).run(open_session)
        rows = client.get("/observer/api/processes").json()["rows"]
        assert rows[0]["keys"] == ["sessions: session / AbCd…"]
        assert client.get("/observer/api/processes", params={"q": sid}).json()["rows"] == []


def test_rate_meter() -> None:
    meter = RateMeter(min_interval=0.5)
    zero = dict.fromkeys(["processes", "dropped", "overloaded", "runq", "uptime"], 0)
    stats = procreg.NodeStats(
        "n", 1, spawned=0, exited=0, crashed=0, handled=0, max_mailbox=None, **zero
    )
    assert meter.sample(stats, now=100.0) == {"spawn": 0, "exit": 0, "crash": 0, "messages": 0}
    meter.sample(replace(stats, spawned=10, handled=1000), now=101.0)
    rates = meter.sample(replace(stats, spawned=30, handled=4000, exited=5), now=102.0)
    assert rates == {"spawn": 20.0, "exit": 5.0, "crash": 0.0, "messages": 3000.0}
    assert meter.sample(replace(stats, spawned=99), now=102.1)["spawn"] == 20.0  # too soon
    assert [h["messages"] for h in meter.history()] == [1000.0, 3000.0]


def test_rates_move_with_activity(h: Harness) -> None:
    h.get("/api/overview")

    async def work() -> None:
        pids = [Idle.start() for _ in range(200)]
        for pid in pids:
            await procreg.call(pid, "x")
        await asyncio.sleep(1.05)

    h.run(work)
    rates = h.get("/api/overview")["nodes"][0]["rates"]
    assert rates["spawn"] > 0 and rates["messages"] > 0


def test_helpers() -> None:
    assert parse_pid("<web.1.42>") == procreg.Pid("web", 1, 42)
    assert parse_pid("my.node.3.7") == procreg.Pid("my.node", 3, 7)
    assert parse_pid("1.2") is None and parse_pid("a.b.c") is None
    assert parse_pid("web.1.²") is None and parse_pid("web.²³.1") is None
    assert mask_key("('session', 'abcdefghijklmnopqrst')") == "('session', 'abcd…')"
    assert mask_key("('room', 'lobby')") == "('room', 'lobby')"
