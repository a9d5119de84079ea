"""A TCP proxy that injects network faults between a node and its store.

`FaultProxy` listens on a free loopback port and forwards every connection to one
server (say, a throwaway Redis). While it runs, a test switches faults on and off:

- `blackhole`: every connection, open or new, stays open but carries nothing either
  way (a network partition: no reset, no error, just silence);
- `reset`: open connections are reset (TCP RST) and new ones refused (a partition
  that the kernel reports: a firewall rejecting, a host gone);
- `freeze`: the connections open now go silent while new ones pass (half-open
  sockets: a NAT or load balancer that dropped its state);
- `delay`: every chunk is forwarded `seconds` late, in order (both ways, or one:
  ``direction="to_server"`` or ``"to_client"``, say replies late but requests on
  time);
- `heal`: back to plain forwarding (frozen connections stay frozen: a half-open
  socket never heals).

The proxy runs its own event loop in a daemon thread, so it can be driven from
synchronous test code and from another event loop alike; every method returns once
the change is in effect. It only ever listens on and connects to loopback.

>>> from procreg.testing import FaultProxy
>>> proxy = FaultProxy(target_port=6379)  # doctest: +SKIP
>>> proxy.start(); url = f"redis://127.0.0.1:{proxy.port}/0"  # doctest: +SKIP
>>> proxy.blackhole(); ...; proxy.heal(); proxy.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

T = TypeVar("T")
HOST = "127.0.0.1"
CHUNK = 1 << 16


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class _Link:
    """One proxied connection: the client side, the server side, its own fault."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.frozen = False
        self.tasks: list[asyncio.Task[None]] = []
        self.pending: dict[int, asyncio.Task[None]] = {}  # last delayed write per writer

    def reset(self) -> None:
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: close sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``, with faults on
    demand (see the module docstring). `port` defaults to a free one."""

    def __init__(self, target_port: int, target_host: str = HOST, port: int | None = None) -> None:
        if target_host not in (HOST, "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.target = (target_host, target_port)
        self.port = port or _free_port()
        self.mode = "pass"  # pass | blackhole | reset
        self.latency = 0.0
        self.direction = "both"  # the way(s) `latency` applies: both | to_server | to_client
        self.connections = 0  # accepted so far
        self.forwarded = 0  # bytes forwarded
        self.dropped = 0  # bytes swallowed by a fault
        self.delayed = {"to_server": 0, "to_client": 0}  # chunks delayed, by direction
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -- running ----------------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Start listening (in a thread of its own); returns self."""
        ready: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
                ready.set_result(None)
            except BaseException as exc:
                ready.set_exception(exc)
                return
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._loop is None:
            return

        async def close() -> None:
            await self._unlisten()
            for link in list(self._links):
                link.reset()
            self._links.clear()

        self._call(close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, scheme: str = "redis", db: int = 0) -> str:
        """A URL for the proxied server through this proxy."""
        return f"{scheme}://{HOST}:{self.port}/{db}"

    # -- faults -------------------------------------------------------------------------
    def heal(self) -> None:
        """Forward again (new connections accepted; frozen ones stay frozen)."""

        async def run() -> None:
            self.mode = "pass"
            self.latency = 0.0
            if self._server is None:
                await self._listen()

        self._call(run)

    def blackhole(self) -> None:
        """Every connection, open or new, goes silent; nothing is closed."""

        async def run() -> None:
            self.mode = "blackhole"

        self._call(run)

    def reset(self) -> None:
        """Reset every open connection and refuse new ones."""

        async def run() -> None:
            self.mode = "reset"
            await self._unlisten()
            for link in list(self._links):
                link.reset()
            self._links.clear()

        self._call(run)

    def freeze(self) -> int:
        """Silence the connections open now (half-open); new ones pass. Returns how
        many were frozen."""

        async def run() -> int:
            for link in self._links:
                link.frozen = True
            return len(self._links)

        return int(self._call(run))

    def delay(self, seconds: float, direction: str = "both") -> None:
        """Forward every chunk `seconds` late (in order): both ways, or only
        ``"to_server"`` (what the clients send) or ``"to_client"`` (what the server
        answers and pushes). `ValueError` for a negative delay or another direction."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds!r}")
        if direction not in ("both", "to_server", "to_client"):
            raise ValueError(f"direction must be both, to_server or to_client, not {direction!r}")

        async def run() -> None:
            self.latency = seconds
            self.direction = direction

        self._call(run)

    def open_connections(self) -> int:
        """How many connections are open through the proxy now."""

        async def run() -> int:
            return len(self._links)

        return int(self._call(run))

    # -- inside the proxy's loop ----------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(fn(), loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True)

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":  # (raced with `reset`): refuse
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        loop = asyncio.get_running_loop()
        link.tasks = [
            loop.create_task(self._pump(link, reader, up_writer, "to_server")),
            loop.create_task(self._pump(link, up_reader, writer, "to_client")),
        ]

    def _delayed(self, link: _Link, writer: asyncio.StreamWriter, due: float, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        # chunks of one direction share one writer: keep their order with a chain
        previous = link.pending.get(id(writer))

        async def later() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            await asyncio.sleep(max(0.0, due - loop.time()))
            if link.frozen or self.mode != "pass" or writer.is_closing():
                self.dropped += len(data)
                return
            writer.write(data)
            self.forwarded += len(data)

        link.pending[id(writer)] = loop.create_task(later())

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        way: str,
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    # the end of the stream: what is delayed still goes first
                    pending = link.pending.get(id(writer))
                    if pending is not None:
                        await asyncio.shield(pending)
                    break
                if link.frozen or self.mode != "pass":
                    self.dropped += len(data)
                    continue
                if self.latency and self.direction in ("both", way):
                    # latency, not a throughput limit: each chunk leaves `latency`
                    # after it arrived, in order (a chunk behind a slow one waits only
                    # for what is left of its own delay)
                    loop = asyncio.get_running_loop()
                    due = loop.time() + self.latency
                    self._delayed(link, writer, due, data)
                    self.delayed[way] += 1
                    continue
                pending = link.pending.get(id(writer))
                if pending is not None and not pending.done():
                    # the delay was lifted: this chunk still goes after the delayed ones
                    self._delayed(link, writer, 0.0, data)
                    continue
                writer.write(data)
                self.forwarded += len(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.frozen and self.mode == "pass":
                # one side closed: close the other (a half-open socket never does)
                writer.close()
                if link in self._links:
                    self._links.discard(link)
                    for task in link.tasks:
                        if task is not asyncio.current_task():
                            task.cancel()
