"""`procreg.testing.FaultProxy` on its own: a delay in one direction only.

A tiny echo server stands in for the store; the checks are lower bounds (a delayed
chunk cannot arrive before its delay) and the proxy's own count of what it delayed,
never upper bounds on time.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from procreg.testing import FaultProxy

pytestmark = pytest.mark.timeout(30)

DELAY = 1.0


async def _exchange(direction: str) -> tuple[float, float, float, dict[str, int]]:
    """(sent, reached the server, reply back) in `time.monotonic` seconds, and the
    chunks the proxy delayed by direction, for one request through a proxy delaying
    `direction`."""
    arrived: list[float] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        arrived.append(time.monotonic())
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = FaultProxy(port).start()
    try:
        proxy.delay(DELAY, direction=direction)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        sent = time.monotonic()
        writer.write(b"ping")
        await writer.drain()
        # (the server closes right after its answer: the delayed answer still comes)
        assert await asyncio.wait_for(reader.read(100), 10) == b"ping"
        back = time.monotonic()
        writer.close()
    finally:
        proxy.stop()
        server.close()
        await server.wait_closed()
    return sent, arrived[0], back, dict(proxy.delayed)


def test_delay_to_client_holds_the_answers_only() -> None:
    _sent, arrived, back, delayed = asyncio.run(_exchange("to_client"))
    assert back - arrived >= DELAY
    assert delayed == {"to_server": 0, "to_client": 1}


def test_delay_to_server_holds_the_requests_only() -> None:
    sent, arrived, _back, delayed = asyncio.run(_exchange("to_server"))
    assert arrived - sent >= DELAY
    assert delayed == {"to_server": 1, "to_client": 0}


def test_delay_both_ways_and_bad_arguments() -> None:
    sent, arrived, back, delayed = asyncio.run(_exchange("both"))
    assert arrived - sent >= DELAY and back - arrived >= DELAY
    assert delayed == {"to_server": 1, "to_client": 1}
    proxy = FaultProxy(1).start()
    try:
        with pytest.raises(ValueError, match="direction"):
            proxy.delay(0.1, direction="sideways")
        with pytest.raises(ValueError, match=">= 0"):
            proxy.delay(-1)
    finally:
        proxy.stop()
