"""Web figures (issue 9): WebSocket fan-out and session lookups, each with its baseline
measured in the same run.

- `comet_fanout`: N WebSocket clients (a load generator in another interpreter,
  `bench.loadgen`, loopback only) held by one node, all in one pool; M messages
  published to the pool. Figures: deliveries per second (messages times clients over
  the time from the first publish to the last receipt) and server memory per
  connection (RSS growth while the clients connected, divided by N: it includes
  uvicorn's protocol objects, the Starlette WebSocket and the connection process).
  Baseline (the ``asyncio`` column): a plain set of Starlette WebSockets, no processes.
- `comet_slow_clients`: the same with 1 % of the clients never reading (a small
  receive window, so the server's writes to them block): deliveries per second to the
  clients that do read. procreg bounds what waits for each socket and drops a client
  that falls behind (close 1013); the baseline sends with one task per socket and
  message and never drops anyone.
- `session_lookups`: HTTP requests per second that each look a session process up and
  call it (``session(request).incr(...)``), from a local load generator (httpx in
  another interpreter) against uvicorn on 127.0.0.1. Baseline: the same app and
  middleware, a handler that does not touch the session.
- `session_lookups_inprocess`: the same lookup-and-call without HTTP, in-process, to
  show what the session layer itself costs (no baseline design).

``procreg bench --only comet_fanout,comet_slow_clients,session_http,session_lookup``
runs them (each HTTP measurement in a fresh interpreter). Traffic goes to 127.0.0.1
only; every step is bounded in count and time. They need the ``web`` extra
(Starlette, uvicorn, httpx, websockets); without it they are skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from procreg.node import Node

from .harness import REPO_ROOT, child_env
from .loadgen import raise_fd_limit
from .measure import Benchmark, Figure, Measurement, Sizes, rss_bytes, run_loop

__all__ = ["BENCHMARKS", "comet_fanout", "session_lookups", "session_lookups_inprocess"]

WEB_MODULES = ("starlette", "uvicorn", "httpx", "websockets")

SECRET = "procreg-web-bench-secret-0123456789"


@contextlib.asynccontextmanager
async def _served(app: Any, sndbuf: int | None = None) -> AsyncIterator[int]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port for the block; yields the port.
    `sndbuf`: SO_SNDBUF in bytes for the accepted sockets (Linux: they inherit it from
    the listening socket; it turns send-buffer autotuning, up to 4 MiB, off)."""
    import uvicorn

    # proto=IPPROTO_TCP: accepted sockets inherit it, and asyncio sets TCP_NODELAY only
    # on sockets that say they are TCP (without it, keep-alive responses stall 40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", backlog=4096, ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10.0)
        sock.close()


async def _loadgen(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env=child_env(),
    )


async def _result(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if not line:
        err = await proc.stderr.read() if proc.stderr is not None else b""
        raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(line)
    return result


class _Hub:
    """The baseline fan-out: a plain set of Starlette WebSockets, no processes; a
    message is encoded once and sent to each socket with one task per socket."""

    def __init__(self) -> None:
        self.sockets: set[Any] = set()
        self.pending: set[asyncio.Future[Any]] = set()

    async def endpoint(self, websocket: Any) -> None:
        await websocket.accept()
        self.sockets.add(websocket)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            self.sockets.discard(websocket)

    async def publish(self, message: Any) -> int:
        text = json.dumps(message)
        sockets = list(self.sockets)
        await asyncio.gather(*(ws.send_text(text) for ws in sockets), return_exceptions=True)
        return len(sockets)

    async def publish_nowait(self, message: Any) -> int:
        """The naive way not to wait for slow sockets: one task per socket and message,
        not awaited (the tasks of a client that never reads pile up)."""
        text = json.dumps(message)
        for ws in self.sockets:
            task = asyncio.ensure_future(ws.send_text(text))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        return len(self.sockets)


def _fanout_app(variant: str, limits: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(app, connected() -> int coroutine, publish(message) -> int coroutine); `limits`
    (``max_queue_bytes``, ``send_timeout``) for the procreg endpoint, and with them the
    baseline publishes without waiting for each socket."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from procreg.web.comet import comet_route, pool_group, publish
    from procreg.web.context import use_node
    from procreg.web.lifespan import NodeLifespan
    from procreg.web.mount import install

    if variant == "plain":
        hub = _Hub()

        async def plain_connected() -> int:
            return len(hub.sockets)

        app = Starlette(routes=[WebSocketRoute("/ws", hub.endpoint)])
        return app, plain_connected, hub.publish if limits is None else hub.publish_nowait
    route = comet_route("/ws", pool="bench", **(limits or {}))
    app = install(Starlette(routes=[route]), sessions=False)
    node_lifespan = app.router.lifespan_context
    assert isinstance(node_lifespan, NodeLifespan)

    def node() -> Node:
        assert node_lifespan.node is not None
        return node_lifespan.node

    async def connected() -> int:
        return len(await node().registry.members(pool_group("bench")))

    async def send(message: Any) -> int:
        with use_node(node()):
            reached: int = await publish("bench", message)
        return reached

    return app, connected, send


SLOW_LIMITS: dict[str, Any] = {"max_queue_bytes": 64 * 1024, "send_timeout": 2.0}
"""The procreg endpoint's limits in the slow-clients figure: a client more than 64 KiB
behind, or whose socket takes a write for over 2 s, is dropped (close 1013)."""
SLOW_SNDBUF = 64 * 1024
"""The server sockets' send buffer in the slow-clients figure (both designs): without
it Linux lets a client that never reads hold up to 4 MiB of kernel memory first."""


async def _comet_fanout(
    clients: int,
    messages: int,
    timeout: float,
    variant: str,
    stalled: int = 0,
    payload: int = 0,
) -> dict[str, Any]:
    raise_fd_limit(clients + 512)
    app, connected, send = _fanout_app(variant, SLOW_LIMITS if stalled else None)
    # random text per message: permessage-deflate (on by default) would shrink a
    # repeated or uniform padding to nothing
    pads = [base64.b64encode(os.urandom(payload * 3 // 4)).decode() for _ in range(messages)]
    async with _served(app, SLOW_SNDBUF if stalled else None) as port:
        gc.collect()
        rss0 = rss_bytes()
        gen = await _loadgen(
            "ws",
            "--url",
            f"ws://127.0.0.1:{port}/ws",
            "--clients",
            str(clients),
            "--messages",
            str(messages),
            "--timeout",
            str(timeout),
            "--stalled",
            str(stalled),
            "--hold",
            str(SLOW_LIMITS["send_timeout"] * 2 if stalled else 0),
        )
        try:
            assert gen.stdout is not None
            ready = await asyncio.wait_for(gen.stdout.readline(), timeout)
            if ready.strip() != b"READY":
                raise RuntimeError(f"load generator did not connect: {ready!r}")
            for _ in range(int(timeout * 100)):  # every handshake has reached the pool
                if await connected() >= clients:
                    break
                await asyncio.sleep(0.01)
            gc.collect()
            rss1 = rss_bytes()
            t0 = time.monotonic()
            cpu0 = time.process_time()
            reached = 0
            for seq in range(messages):
                reached += await send({"seq": seq, "text": "fan-out benchmark", "pad": pads[seq]})
                if stalled:
                    await asyncio.sleep(0)  # a publisher with other work: let writes go
            publish_seconds = time.monotonic() - t0
            result = await _result(gen, timeout)
            cpu = time.process_time() - cpu0
            gc.collect()
            rss2 = rss_bytes()
            dropped = await _dropped_slow(app, variant)
        finally:
            if gen.returncode is None:
                gen.kill()
                await gen.wait()
    elapsed = (result["last"] - t0) if result["last"] is not None else None
    per_conn = (rss1 - rss0) / clients if rss0 is not None and rss1 is not None else None
    return {
        "variant": variant,
        "clients": result["clients"],
        "messages": messages,
        "publish_reached": reached,
        "delivered": result["received"],
        "complete": result["complete"],
        "connect_seconds": round(result["connect_seconds"], 3),
        "publish_seconds": round(publish_seconds, 4),
        "fanout_seconds": round(elapsed, 4) if elapsed else None,
        "deliveries_per_second": round(result["received"] / elapsed) if elapsed else None,
        "server_cpu_us_per_delivery": round(cpu / max(1, result["received"]) * 1e6, 2),
        "rss_per_connection_bytes": round(per_conn) if per_conn is not None else None,
        "stalled": stalled,
        "stalled_dropped": dropped,
        "rss_growth_while_publishing_bytes": (
            rss2 - rss1 if rss1 is not None and rss2 is not None else None
        ),
    }


async def _dropped_slow(app: Any, variant: str) -> int | None:
    """Clients the procreg endpoint dropped as too slow (close 1013); None for the
    baseline, which has no such notion."""
    if variant != "procreg":
        return None
    for route in app.routes:
        stats = getattr(getattr(route, "endpoint", None), "stats", None)
        if stats is not None:
            dropped: int = stats()["closed_slow"]
            return dropped
    return None


def comet_fanout(
    clients: int = 1000,
    messages: int = 20,
    timeout: float = 60.0,
    variant: str = "procreg",
    uvloop: bool = False,
    stalled: int = 0,
    payload: int = 0,
) -> dict[str, Any]:
    """N WebSocket clients in one pool, M messages fanned out to all (see the module
    docstring). ``variant="plain"`` measures the baseline (a set of sockets, no
    processes). `stalled` of the clients never read and each message carries `payload`
    extra bytes (the slow-clients figure). Bounded by `timeout` seconds per step."""
    if variant not in ("procreg", "plain"):
        raise ValueError(f"variant must be 'procreg' or 'plain', got {variant!r}")
    return run_loop(
        lambda: _comet_fanout(clients, messages, timeout, variant, stalled, payload), uvloop
    )


async def _session_lookups(
    sessions: int,
    concurrency: int,
    requests: int,
    duration: float,
    timeout: float,
    variant: str,
) -> dict[str, Any]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from procreg.web.lifespan import NodeLifespan
    from procreg.web.mount import install
    from procreg.web.session import SESSIONS_TABLE, session

    async def hit(request: Request) -> PlainTextResponse:
        await session(request).incr("hits")
        return PlainTextResponse("ok")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    handler = hit if variant == "procreg" else plain
    app = install(Starlette(routes=[Route("/s", handler)]), secret=SECRET)
    node_lifespan = app.router.lifespan_context
    assert isinstance(node_lifespan, NodeLifespan)
    async with _served(app) as port:
        cpu0 = time.process_time()
        gen = await _loadgen(
            "http",
            "--url",
            f"http://127.0.0.1:{port}/s",
            "--sessions",
            str(sessions),
            "--concurrency",
            str(concurrency),
            "--requests",
            str(requests),
            "--duration",
            str(duration),
        )
        result = await _result(gen, timeout)
        cpu = time.process_time() - cpu0
        node = node_lifespan.node
        assert node is not None
        live = node.registry.count(SESSIONS_TABLE)
    seconds = result["seconds"]
    return {
        "variant": variant,
        "requests": result["requests"],
        "errors": result["errors"],
        "sessions": result["sessions"],
        "session_processes": live,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "requests_per_second": round(result["requests"] / seconds) if seconds else None,
        "server_cpu_us_per_request": round(cpu / max(1, result["requests"]) * 1e6),
    }


def session_lookups(
    sessions: int = 256,
    concurrency: int = 8,
    requests: int = 4000,
    duration: float = 20.0,
    timeout: float = 60.0,
    variant: str = "procreg",
    uvloop: bool = False,
) -> dict[str, Any]:
    """Requests per second whose handler looks its session process up and calls it, over
    HTTP (see the module docstring). ``variant="plain"`` is the baseline: the same app
    and middleware, a handler that does not touch the session."""
    if variant not in ("procreg", "plain"):
        raise ValueError(f"variant must be 'procreg' or 'plain', got {variant!r}")
    return run_loop(
        lambda: _session_lookups(sessions, concurrency, requests, duration, timeout, variant),
        uvloop,
    )


async def _inprocess(sessions: int, lookups: int) -> dict[str, Any]:
    from procreg.web.session import Session

    async with Node("bench") as node:
        handles = [Session(f"bench-session-{i:08d}", node, 1200.0, False) for i in range(sessions)]
        for h in handles:
            await h.set("n", 0)
        t0 = time.perf_counter()
        for i in range(lookups):
            handle = handles[i % sessions]
            # a new handle, as each request gets: a registry lookup, then a call
            await Session(handle.sid, node, 1200.0, False).get("n")
        seconds = time.perf_counter() - t0
    return {
        "sessions": sessions,
        "lookups": lookups,
        "seconds": round(seconds, 4),
        "lookups_per_second": round(lookups / seconds),
        "us_per_lookup": round(seconds / lookups * 1e6, 2),
    }


def session_lookups_inprocess(
    sessions: int = 1000, lookups: int = 200_000, uvloop: bool = False
) -> dict[str, Any]:
    """Lookup-and-call of session processes without HTTP: a new `Session` handle per
    simulated request (so each does a registry lookup), then a ``get``."""
    return run_loop(lambda: _inprocess(sessions, lookups), uvloop)


# -- figures -----------------------------------------------------------------------------

ONCE = "1 run"

FANOUT_RATE = Figure(
    "comet_fanout_rate",
    "WebSocket fan-out to the clients of one pool, deliveries",
    "/s",
    "higher",
    ONCE,
    None,
    "1,000 clients (50 with --quick) x 20 messages, load generator in another interpreter; "
    "asyncio: a plain set of Starlette WebSockets, no processes",
)
FANOUT_RSS = Figure(
    "comet_rss_per_connection",
    "server memory per WebSocket connection (RSS)",
    "B",
    "lower",
    ONCE,
    None,
    "uvicorn's and Starlette's per-connection objects included; asyncio: the same "
    "without a connection process",
)
SLOW_RATE = Figure(
    "comet_slow_clients_rate",
    "WebSocket fan-out while 1 % of the clients never read, deliveries to the others",
    "/s",
    "higher",
    ONCE,
    None,
    "1,000 clients (50 with --quick), 10 (1) of them stalled, 64 messages of 8 KiB, no "
    "compression, server send buffers 64 KiB; procreg drops the stalled clients (close "
    "1013: details stalled_dropped); asyncio: the plain set of sockets, one send task per "
    "socket and message, not awaited",
)
SESSION_HTTP = Figure(
    "session_http_rate",
    "HTTP requests that look their session process up and call it",
    "/s",
    "higher",
    ONCE,
    None,
    "uvicorn on 127.0.0.1, httpx load generator in another interpreter, 256 sessions, "
    "8 at once; asyncio: the same app whose handler does not touch the session",
)
SESSION_LOOKUP = Figure(
    "session_lookup_rate",
    "session process lookup + call, in-process (no HTTP)",
    "/s",
    "higher",
    ONCE,
    None,
    "a new Session handle per lookup (a registry lookup), then a get; no baseline design",
    baseline=False,
)


def _numbers(figures: dict[str, Any]) -> Measurement:
    """The numeric values of a result dict (the JSON's details)."""
    return {
        k: float(v)
        for k, v in figures.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _fanout(variant: str) -> Any:
    def measure(sizes: Sizes, uvloop: bool) -> Measurement:
        result = comet_fanout(sizes.web_clients, sizes.web_messages, 90.0, variant, uvloop)
        if not result["complete"] or result["deliveries_per_second"] is None:
            raise RuntimeError(f"the fan-out did not complete: {result}")
        out = _numbers(result)
        out[FANOUT_RATE.name] = result["deliveries_per_second"]
        if result["rss_per_connection_bytes"] is not None:
            out[FANOUT_RSS.name] = result["rss_per_connection_bytes"]
        return out

    return measure


SLOW_MESSAGES = 64
SLOW_PAYLOAD = 8 * 1024


def _slow_clients(variant: str) -> Any:
    def measure(sizes: Sizes, uvloop: bool) -> Measurement:
        stalled = max(1, sizes.web_clients // 100)
        result = comet_fanout(
            sizes.web_clients, SLOW_MESSAGES, 90.0, variant, uvloop, stalled, SLOW_PAYLOAD
        )
        if not result["complete"] or result["deliveries_per_second"] is None:
            raise RuntimeError(f"the clients that read did not get every message: {result}")
        out = _numbers(result)
        out[SLOW_RATE.name] = result["deliveries_per_second"]
        return out

    return measure


def _session_http(variant: str) -> Any:
    def measure(sizes: Sizes, uvloop: bool) -> Measurement:
        result = session_lookups(requests=sizes.web_requests, variant=variant, uvloop=uvloop)
        if result["errors"] or result["requests_per_second"] is None:
            raise RuntimeError(f"the requests failed: {result}")
        out = _numbers(result)
        out[SESSION_HTTP.name] = result["requests_per_second"]
        return out

    return measure


def session_lookup_procreg(sizes: Sizes, uvloop: bool) -> Measurement:
    result = session_lookups_inprocess(lookups=sizes.web_lookups, uvloop=uvloop)
    out = _numbers(result)
    out[SESSION_LOOKUP.name] = result["lookups_per_second"]
    return out


BENCHMARKS = [
    Benchmark(
        "comet_fanout",
        [FANOUT_RATE, FANOUT_RSS],
        {"procreg": _fanout("procreg"), "asyncio": _fanout("plain")},
        isolated=True,
        requires=WEB_MODULES,
    ),
    Benchmark(
        "comet_slow_clients",
        [SLOW_RATE],
        {"procreg": _slow_clients("procreg"), "asyncio": _slow_clients("plain")},
        isolated=True,
        requires=WEB_MODULES,
    ),
    Benchmark(
        "session_http",
        [SESSION_HTTP],
        {"procreg": _session_http("procreg"), "asyncio": _session_http("plain")},
        isolated=True,
        requires=WEB_MODULES,
    ),
    Benchmark(
        "session_lookup",
        [SESSION_LOOKUP],
        {"procreg": session_lookup_procreg},
        requires=WEB_MODULES,
    ),
]
