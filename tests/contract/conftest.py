"""The contract suite: what every registry backend must do, run against each of them.

The fixture `backend` is parametrised with ids ``local`` (`LocalBackend`, the
embedded node), ``redis`` (`RedisBackend`: nodes in this process on a throwaway
Redis, one server for the session, emptied before each test) and ``loopback``
(`procreg.testing.loopback`: an in-memory cluster of nodes in this event loop). A
test drives it through two calls:

- ``backend.run(main, *args)``: `procreg.run` for that backend: ``main`` is the first
  process of a node (on ``loopback``, node ``n1`` of two, so that the store is
  shared);
- ``backend.cluster(n)``: an async context manager giving `n` node handles in one
  event loop (``handle.run(fn, *args)``, ``handle.spawn(fn, *args)``,
  ``handle.node``) for the multi-node contract, whose tests take the fixture
  `cluster_backend` (``redis`` and ``loopback`` only).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import procreg
from procreg.testing import LoopbackCluster, RedisServer, find_server_binary

T = TypeVar("T")

SECRET = "contract-test-secret"
LEASE = 3.0
CLUSTER_LEASE = 1.5  # nodes of one test see each other within lease / 3
_names = itertools.count(1)


class NodeHandle:
    """A node started in a context of its own (the test's code stays outside it):
    `run` and `spawn` act in the node's context."""

    def __init__(self, node: procreg.Node, ctx: contextvars.Context) -> None:
        self.node = node
        self.ctx = ctx

    @property
    def name(self) -> str:
        return self.node.name

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``fn(*args)`` as a process of this node; its result."""
        result: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.ctx.copy().run(self.node.spawn_main, fn, args, result)
        return await result

    def spawn(self, fn: Any, *args: Any, **options: Any) -> procreg.Pid:
        pid: procreg.Pid = self.ctx.copy().run(self.node.spawn, fn, *args, **options)
        return pid


async def start_in_own_context(node: procreg.Node) -> NodeHandle:
    ctx = contextvars.copy_context()
    await asyncio.get_running_loop().create_task(node.start(), context=ctx)
    return NodeHandle(node, ctx)


async def stop_in_own_context(handle: NodeHandle) -> None:
    await asyncio.get_running_loop().create_task(handle.node.stop(), context=handle.ctx)


class Backend:
    """One registry backend under test (see the module)."""

    id = "?"
    multi_node = True

    def run(self, main: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def cluster(self, n: int) -> AsyncIterator[list[NodeHandle]]:
        raise NotImplementedError
        yield []  # pragma: no cover

    def new_node(self) -> procreg.Node:
        """A node (not started) for tests that drive one node by hand."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Called after each test."""


class LocalBackendUnderTest(Backend):
    id = "local"
    multi_node = False

    def run(self, main: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return procreg.run(main, *args)

    @contextlib.asynccontextmanager
    async def cluster(self, n: int) -> AsyncIterator[list[NodeHandle]]:
        pytest.skip("the embedded node is a cluster of one")
        yield []  # pragma: no cover

    def new_node(self) -> procreg.Node:
        return procreg.Node()


class RedisBackendUnderTest(Backend):
    id = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def _options(self, lease: float = LEASE) -> dict[str, Any]:
        return {"cluster": self.server.url, "secret": SECRET, "lease": lease}

    def run(self, main: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return procreg.run(main, *args, name=f"r{next(_names)}", **self._options())

    def new_node(self) -> procreg.Node:
        return procreg.Node(f"r{next(_names)}", **self._options())

    @contextlib.asynccontextmanager
    async def cluster(self, n: int) -> AsyncIterator[list[NodeHandle]]:
        handles: list[NodeHandle] = []
        try:
            for _ in range(n):
                node = procreg.Node(f"r{next(_names)}", **self._options(CLUSTER_LEASE))
                handles.append(await start_in_own_context(node))
            names = sorted(h.name for h in handles)
            for _ in range(500):  # until every node lists every other one
                if all(h.node.nodes() == names for h in handles):
                    break
                await asyncio.sleep(0.01)
            yield handles
        finally:
            for handle in reversed(handles):
                await stop_in_own_context(handle)

    def cleanup(self) -> None:
        client = self.server.client()
        try:
            client.flushall()
        finally:
            client.close()


class LoopbackBackendUnderTest(Backend):
    id = "loopback"

    def run(self, main: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        async def runner() -> T:
            async with LoopbackCluster(2) as (first, _):
                return await first.run(main, *args)

        return asyncio.run(runner())

    def new_node(self) -> procreg.Node:
        return procreg.Node("n1", dist=procreg.testing.LoopbackNet())

    @contextlib.asynccontextmanager
    async def cluster(self, n: int) -> AsyncIterator[list[NodeHandle]]:
        async with LoopbackCluster(n) as cluster:
            # the start context of each node (as `LoopbackCluster` keeps it)
            yield [NodeHandle(node, node.member.ctx) for node in cluster]


@pytest.fixture(scope="session")
def contract_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """One throwaway Redis for the session's ``redis`` contract tests (None if no
    server binary or no redis-py)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        yield None
        return
    binary = find_server_binary()
    if binary is None:
        yield None
        return
    workdir: Path = tmp_path_factory.mktemp("contract-redis")
    server = RedisServer(binary=binary, workdir=workdir).start()
    try:
        yield server
    finally:
        server.kill()


def _backend(request: pytest.FixtureRequest, which: str) -> Backend:
    if which == "local":
        return LocalBackendUnderTest()
    if which == "redis":
        server = request.getfixturevalue("contract_redis")
        if server is None:
            from conftest import skip_or_fail

            skip_or_fail(
                "the redis contract tests need redis-py and a redis-server: "
                "pip install -e '.[test]'"
            )
        return RedisBackendUnderTest(server)
    return LoopbackBackendUnderTest()


@pytest.fixture(params=["local", "redis", "loopback"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The registry backend under test: ``local``, ``redis`` or ``loopback``."""
    chosen = _backend(request, request.param)
    try:
        yield chosen
    finally:
        chosen.cleanup()


@pytest.fixture(params=["redis", "loopback"])
def cluster_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A backend with more than one node (``redis``, ``loopback``), for the
    multi-node contract (``backend.cluster(n)``)."""
    chosen = _backend(request, request.param)
    try:
        yield chosen
    finally:
        chosen.cleanup()
