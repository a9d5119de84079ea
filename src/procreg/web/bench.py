"""Benchmarks of the web layer; each returns a dict of figures.

- `comet_fanout`: N WebSocket clients (a load generator in another interpreter,
  loopback only) held by one node, all in one pool; M messages published to the pool.
  Figures: deliveries per second (messages times clients over the time from the first
  publish to the last receipt) and server memory per connection (RSS growth while
  the clients connected, divided by N: it includes uvicorn's protocol objects, the
  Starlette WebSocket and the connection process).
- `session_lookups`: HTTP requests per second that each look a session process up and
  call it (``session(request).incr(...)``), from a local load generator (httpx in
  another interpreter) against uvicorn on 127.0.0.1; plus the same lookup-and-call
  without HTTP, in-process, to show what the session layer itself costs.

Each figure comes with its baseline, measured in the same run: for the fan-out, a plain
set of Starlette WebSockets (no processes); for the sessions, the same app whose
handler does not touch the session. ``python -m procreg.web.bench [fanout|sessions|all]
[--quick]`` runs every measurement in a fresh interpreter and prints JSON.
Traffic goes to 127.0.0.1 only; every step is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..node import Node
from .loadgen import raise_fd_limit

__all__ = ["comet_fanout", "main", "session_lookups", "session_lookups_inprocess"]

SECRET = "procreg-web-bench-secret-0123456789"


def _rss() -> int | None:
    """Resident memory of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[int]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port for the block; yields the port."""
    import uvicorn

    # proto=IPPROTO_TCP: accepted sockets inherit it, and asyncio sets TCP_NODELAY only
    # on sockets that say they are TCP (without it, keep-alive responses stall 40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        "procreg.web.loadgen",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
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


def _fanout_app(variant: str) -> tuple[Any, Any, Any]:
    """(app, connected() -> int coroutine, publish(message) -> int coroutine)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from .comet import comet_route, pool_group, publish
    from .context import use_node
    from .lifespan import NodeLifespan
    from .mount import install

    if variant == "plain":
        hub = _Hub()

        async def plain_connected() -> int:
            return len(hub.sockets)

        app = Starlette(routes=[WebSocketRoute("/ws", hub.endpoint)])
        return app, plain_connected, hub.publish
    app = install(Starlette(routes=[comet_route("/ws", pool="bench")]), sessions=False)
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


async def _comet_fanout(
    clients: int, messages: int, timeout: float, variant: str
) -> dict[str, Any]:
    raise_fd_limit(clients + 512)
    app, connected, send = _fanout_app(variant)
    async with _served(app) as port:
        gc.collect()
        rss0 = _rss()
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
            rss1 = _rss()
            t0 = time.monotonic()
            cpu0 = time.process_time()
            reached = 0
            for seq in range(messages):
                reached += await send({"seq": seq, "text": "fan-out benchmark"})
            publish_seconds = time.monotonic() - t0
            result = await _result(gen, timeout)
            cpu = time.process_time() - cpu0
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
    }


def comet_fanout(
    clients: int = 1000, messages: int = 20, timeout: float = 60.0, variant: str = "procreg"
) -> dict[str, Any]:
    """N WebSocket clients in one pool, M messages fanned out to all (see the module
    docstring). ``variant="plain"`` measures the baseline (a set of sockets, no
    processes). Bounded by `timeout` seconds per step."""
    if variant not in ("procreg", "plain"):
        raise ValueError(f"variant must be 'procreg' or 'plain', got {variant!r}")
    return asyncio.run(_comet_fanout(clients, messages, timeout, variant))


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

    from .lifespan import NodeLifespan
    from .mount import install
    from .session import SESSIONS_TABLE, session

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
) -> dict[str, Any]:
    """Requests per second whose handler looks its session process up and calls it, over
    HTTP (see the module docstring). ``variant="plain"`` is the baseline: the same app
    and middleware, a handler that does not touch the session."""
    if variant not in ("procreg", "plain"):
        raise ValueError(f"variant must be 'procreg' or 'plain', got {variant!r}")
    return asyncio.run(
        _session_lookups(sessions, concurrency, requests, duration, timeout, variant)
    )


async def _inprocess(sessions: int, lookups: int) -> dict[str, Any]:
    from .session import Session

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


def session_lookups_inprocess(sessions: int = 1000, lookups: int = 200_000) -> dict[str, Any]:
    """Lookup-and-call of session processes without HTTP: a new `Session` handle per
    simulated request (so each does a registry lookup), then a ``get``."""
    return asyncio.run(_inprocess(sessions, lookups))


def _isolated(*args: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own heap and RSS)."""
    out = subprocess.run(
        [sys.executable, "-m", "procreg.web.bench", "--one", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the web benchmarks (each measurement in a fresh interpreter) and print their
    figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m procreg.web.bench")
    parser.add_argument("which", nargs="?", default="all", choices=["all", "fanout", "sessions"])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "VARIANT"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    clients = opts.clients or (50 if opts.quick else 1000)
    messages = opts.messages or (5 if opts.quick else 20)
    requests = 300 if opts.quick else 4000
    if opts.one:  # one measurement, in this interpreter
        what, variant = opts.one
        if what == "fanout":
            result = comet_fanout(clients, messages, 90.0, variant)
        elif what == "sessions":
            result = session_lookups(requests=requests, variant=variant)
        else:
            result = session_lookups_inprocess(lookups=5000 if opts.quick else 200_000)
        print(json.dumps(result))
        return 0
    size = ["--clients", str(clients), "--messages", str(messages)]
    size += ["--quick"] if opts.quick else []
    figures: dict[str, Any] = {}
    if opts.which in ("all", "fanout"):
        for variant in ("procreg", "plain"):
            figures[f"comet_fanout_{variant}"] = _isolated("fanout", variant, *size)
    if opts.which in ("all", "sessions"):
        for variant in ("procreg", "plain"):
            figures[f"session_http_{variant}"] = _isolated("sessions", variant, *size)
        figures["session_lookups_inprocess"] = _isolated("inprocess", "procreg", *size)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
