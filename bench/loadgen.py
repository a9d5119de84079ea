"""Load generators for the web benchmarks (`bench.web`), run in a separate interpreter
so that they do not share the server's CPU or heap (from the repository root)::

    python -m bench.loadgen ws --url ws://127.0.0.1:PORT/ws --clients 1000 --messages 20
    python -m bench.loadgen http --url http://127.0.0.1:PORT/s --sessions 200 ...

Both talk only to the loopback address they are given (anything else is refused), are
bounded in count and in time, print one JSON line of results, and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import resource
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from procreg.web.responses import is_loopback

__all__ = ["http_clients", "main", "raise_fd_limit", "ws_clients"]


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's open-files limit towards `wanted` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _check_loopback(url: str) -> None:
    if not is_loopback(urlsplit(url).hostname):
        raise SystemExit(f"loadgen: refusing a non-loopback target: {url}")


STALLED_RCVBUF = 4096
"""Receive buffer (bytes) of a stalled client's socket: small, so that the server's
writes to it block after a few frames instead of filling megabytes of kernel buffers."""


async def _stalled_socket(url: str) -> socket.socket:
    """A connected TCP socket to `url`'s host and port with a small receive buffer (set
    before connecting, so the window it advertises stays small)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return sock


def _open(ws: Any) -> bool:
    """Whether the server has not yet closed (or reset) this client's TCP connection."""
    transport = ws.transport
    return not (transport.is_closing() or ws.protocol.close_rcvd is not None)


async def ws_clients(
    url: str,
    clients: int,
    messages: int,
    timeout: float,
    stalled: int = 0,
    hold: float = 0.0,
) -> dict[str, Any]:
    """Open `clients` WebSocket connections to `url`, print ``READY`` once all are open,
    then wait until each has received `messages` messages (or `timeout` passes).

    The first `stalled` of them never read after the handshake (a small receive
    buffer, so the server notices soon); they are left out of ``received`` and of
    ``complete``, which count the clients that read. Once those are done, the stalled
    ones stay open up to `hold` seconds more, or until the server has closed them all.
    With stalled clients, no client asks for permessage-deflate."""
    from websockets.asyncio.client import ClientConnection, connect

    _check_loopback(url)
    if not 0 <= stalled <= clients:
        raise SystemExit(f"loadgen: --stalled must be within 0..{clients}, got {stalled}")
    raise_fd_limit(clients + 256)
    deadline = time.monotonic() + timeout
    gate = asyncio.Semaphore(64)  # handshakes in flight
    sockets: list[ClientConnection] = []
    idle: list[ClientConnection] = []
    t_connect = time.monotonic()

    async def open_one(stall: bool) -> None:
        async with gate:
            # max_queue=1: a stalled client's library stops reading after one frame
            sock = await _stalled_socket(url) if stall else None
            ws = await connect(
                url,
                sock=sock,
                ping_interval=None,
                max_size=1 << 20,
                open_timeout=timeout,
                max_queue=1 if stall else 16,
                # the slow-clients figure measures procreg, not zlib: no permessage-deflate
                compression=None if stalled else "deflate",
            )
            (idle if stall else sockets).append(ws)

    await asyncio.wait_for(
        asyncio.gather(*(open_one(i < stalled) for i in range(clients))),
        deadline - time.monotonic(),
    )
    connect_seconds = time.monotonic() - t_connect
    print("READY", flush=True)
    first: list[float] = []
    last: list[float] = []
    received = 0

    async def listen(ws: ClientConnection) -> None:
        nonlocal received
        for i in range(messages):
            await ws.recv()
            now = time.monotonic()
            if i == 0:
                first.append(now)
            received += 1
        last.append(time.monotonic())

    try:
        await asyncio.wait_for(
            asyncio.gather(*(listen(ws) for ws in sockets)), max(0.1, deadline - time.monotonic())
        )
        complete = True
    except TimeoutError:
        complete = False
    if idle:  # hold the stalled sockets until the server drops them (or a deadline)
        hold_until = min(deadline, time.monotonic() + hold)
        while time.monotonic() < hold_until and any(_open(ws) for ws in idle):
            await asyncio.sleep(0.05)
    for ws in idle:  # a stalled client may never let a close handshake through
        ws.transport.abort()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "clients": len(sockets) + len(idle),
        "stalled": len(idle),
        "received": received,
        "complete": complete,
        "connect_seconds": connect_seconds,
        "first": min(first) if first else None,
        "last": max(last) if last else None,
    }


async def http_clients(
    url: str, sessions: int, concurrency: int, requests: int, duration: float
) -> dict[str, Any]:
    """Send up to `requests` GETs to `url` (for at most `duration` seconds) from
    `concurrency` workers, spread over `sessions` browser sessions (each keeps the
    cookie the server gave it; each session belongs to one worker, so none is used by
    two requests at once)."""
    import httpx

    _check_loopback(url)
    cookies: list[str | None] = [None] * sessions
    done = errors = 0
    start = time.monotonic()
    stop_at = start + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    no_jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(limits=limits, timeout=30.0, cookies=no_jar) as client:

        async def worker(first: int) -> None:
            nonlocal done, errors
            mine = range(first, sessions, concurrency) or range(first % sessions, sessions)
            turn = 0
            while done + errors < requests and time.monotonic() < stop_at:
                slot = mine[turn % len(mine)]
                turn += 1
                cookie = cookies[slot]
                headers = {"cookie": cookie} if cookie else {}
                try:
                    response = await client.get(url, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code != 200:
                    errors += 1
                    continue
                done += 1
                if cookie is None and "set-cookie" in response.headers:
                    cookies[slot] = response.headers["set-cookie"].split(";", 1)[0]

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {
        "requests": done,
        "errors": errors,
        "seconds": time.monotonic() - start,
        "sessions": sum(1 for c in cookies if c),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run one load generator and print its results as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="kind", required=True)
    ws = sub.add_parser("ws")
    ws.add_argument("--url", required=True)
    ws.add_argument("--clients", type=int, default=1000)
    ws.add_argument("--messages", type=int, default=20)
    ws.add_argument("--timeout", type=float, default=60.0)
    ws.add_argument("--stalled", type=int, default=0, help="clients that never read")
    ws.add_argument("--hold", type=float, default=0.0, help="seconds to keep them open")
    web = sub.add_parser("http")
    web.add_argument("--url", required=True)
    web.add_argument("--sessions", type=int, default=200)
    web.add_argument("--concurrency", type=int, default=32)
    web.add_argument("--requests", type=int, default=5000)
    web.add_argument("--duration", type=float, default=20.0)
    opts = parser.parse_args(argv)
    if opts.kind == "ws":
        result = asyncio.run(
            ws_clients(opts.url, opts.clients, opts.messages, opts.timeout, opts.stalled, opts.hold)
        )
    else:
        result = asyncio.run(
            http_clients(opts.url, opts.sessions, opts.concurrency, opts.requests, opts.duration)
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
