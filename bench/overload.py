"""The two overload scenarios of issue 13, with and without bounds (not part of the
`procreg bench` table: they measure memory under abuse, not speed).

``python -m bench.overload casts [--bound N]``
    5,000,000 casts to a `Server` whose handler is slower than the sender (the sender
    yields every 5,000 casts). Prints what was queued, refused, and the RSS.

``python -m bench.overload websocket [--seconds S] [--rate R] [--pad B] [--unbounded]``
    uvicorn on a free 127.0.0.1 port serving one comet pool; a client in another
    interpreter completes the handshake and never reads; the server publishes small
    JSON messages as fast as it can (or `--rate` per second, `--pad` random bytes
    each) for `--seconds`. Prints the RSS and the connection's mailbox every 5 s.
    ``--unbounded`` lifts the web layer's limits (as before issue 13).

Both are bounded in count and time, and talk only to the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import sys
import time
from typing import Any

import procreg

CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect

async def main(url, seconds):
    ws = await connect(url, ping_interval=None)  # the library's defaults otherwise
    print("CONNECTED", flush=True)
    await asyncio.sleep(seconds)
    ws.transport.abort()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Slow(procreg.Server):
    """A handler slower than the sender."""

    def handle_cast(self, msg: Any) -> None:
        s = 0
        for i in range(40):
            s += i


async def casts(n: int, bound: int) -> None:
    node = procreg.current_node()
    r0 = rss()
    pid = Slow.start(max_mailbox=bound or None)
    cast = procreg.cast
    accepted = 0
    for i in range(n):
        accepted += cast(pid, i)
        if not i % 5000:
            await asyncio.sleep(0)
    info = node.info(pid)
    assert info is not None
    print(
        f"bound={bound or None} sent={n} accepted={accepted} waiting={info.mailbox} "
        f"peak={info.mailbox_peak} dropped={node.stats().dropped} "
        f"rss_before={r0 / 1e6:.1f}MB rss_after={rss() / 1e6:.1f}MB"
    )
    procreg.exit(pid, "kill")


async def websocket(seconds: float, rate: float, pad: int, unbounded: bool) -> None:
    import uvicorn
    from starlette.applications import Starlette

    import procreg.web
    from procreg.web.context import use_node

    limits: dict[str, Any] = {}
    if unbounded:
        limits = {"max_queue": 1 << 60, "max_queue_bytes": 1 << 60, "send_timeout": 1e9}
    route = procreg.web.comet_route("/ws", pool="p", **limits)
    app = procreg.web.install(Starlette(routes=[route]), sessions=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        f"ws://127.0.0.1:{port}/ws",
        str(seconds + 5),
        stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdout is not None
    await client.stdout.readline()
    text = base64.b64encode(os.urandom(pad)).decode() if pad else "hello, slow client"
    node = app.router.lifespan_context.node
    try:
        with use_node(node):
            group = procreg.web.pool_group("p")
            while not await procreg.members(group):
                await asyncio.sleep(0.01)
            (pid,) = await procreg.members(group)
            r0 = rss()
            t0 = time.monotonic()
            published = reached = missed = 0
            report = t0
            while time.monotonic() - t0 < seconds:
                if rate:
                    ahead = published / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                for _ in range(10 if rate else 200):
                    result = await procreg.web.publish("p", {"i": published, "text": text})
                    published += 1
                    reached += result
                    missed += result.missed
                await asyncio.sleep(0)
                if time.monotonic() >= report:
                    info = node.info(pid)
                    box = info.mailbox if info is not None else "gone"
                    print(
                        f"t={time.monotonic() - t0:5.1f}s rss={rss() / 1e6:7.1f}MB "
                        f"mailbox={box} published={published} reached={reached} "
                        f"missed={missed}",
                        flush=True,
                    )
                    report += 5
            print(
                f"rss_before={r0 / 1e6:.1f}MB rss_end={rss() / 1e6:.1f}MB "
                f"stats={node.stats()} endpoint={route.endpoint.stats()}"
            )
    finally:
        client.kill()
        await client.wait()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload")
    sub = parser.add_subparsers(dest="scenario", required=True)
    c = sub.add_parser("casts")
    c.add_argument("--casts", type=int, default=5_000_000)
    c.add_argument("--bound", type=int, default=10_000, help="0: unbounded")
    w = sub.add_parser("websocket")
    w.add_argument("--seconds", type=float, default=30.0)
    w.add_argument("--rate", type=float, default=0.0, help="messages/s; 0: flat out")
    w.add_argument("--pad", type=int, default=0, help="random bytes per message")
    w.add_argument("--unbounded", action="store_true")
    opts = parser.parse_args(argv)
    if opts.scenario == "casts":
        procreg.run(casts, opts.casts, opts.bound)
    else:
        asyncio.run(websocket(opts.seconds, opts.rate, opts.pad, opts.unbounded))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
