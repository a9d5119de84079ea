"""The demo in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

The demo is served by uvicorn in a background thread on a free 127.0.0.1 port.
Playwright's own browser downloads are never used (``playwright install`` needs the
internet); each launch gets a fresh temporary profile (user-data dir) from Playwright.
Screenshots go to pytest's tmp_path. Without Chromium these tests are skipped, except
under CI (env ``CI`` set), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, join_room, require_browser


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The demo app, served by uvicorn on a free loopback port; yields its base URL."""
    require_browser()
    import uvicorn

    from procreg.web.demo import create_app

    # IPPROTO_TCP: accepted sockets then get TCP_NODELAY from asyncio
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(secret="browser-test-secret-0123456789", name="browser")
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any, server: str) -> Iterator[Any]:
    """Make pages in fresh browser contexts (separate cookies: separate sessions)."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(base_url=server)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors
        return page

    yield make
    for context in contexts:
        context.close()


def test_two_browsers_chat_in_one_room(new_page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ann, bob = new_page(), new_page()
    for page, nick in ((ann, "ann"), (bob, "bob")):
        page.goto("/")
        page.fill("#nick", nick)
        page.click("#nick-form button")
        expect(page.locator("#nick-status")).to_have_text("saved")
        join_room(page, "browser room")
    ann.fill("#say", "<b>hello</b> from ann")
    ann.press("#say", "Enter")
    line = bob.locator("#messages li").last
    expect(line).to_contain_text("hello", timeout=5000)
    expect(line.locator(".nick")).to_have_text("ann:")
    # the text is shown exactly as typed, as text: never as markup
    expect(line.locator(".text")).to_have_text("<b>hello</b> from ann")
    assert bob.locator("#messages b").count() == 0
    bob.fill("#say", "hi ann")
    bob.press("#say", "Enter")
    reply = ann.locator("#messages li").last
    expect(reply.locator(".text")).to_have_text("hi ann")
    expect(reply.locator(".nick")).to_have_text("bob:")
    ann.screenshot(path=str(tmp_path / "ann.png"))
    bob.screenshot(path=str(tmp_path / "bob.png"))
    assert ann.js_errors == [] and bob.js_errors == []


def test_visit_counter_survives_a_reload(new_page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = new_page()
    page.goto("/")
    visits = page.locator("#visits")
    expect(visits).to_have_text("1")
    page.reload()
    expect(visits).to_have_text("2")
    page.reload()
    expect(visits).to_have_text("3")
    page.screenshot(path=str(tmp_path / "visits.png"))
    other = new_page()  # another browser: another session
    other.goto("/")
    expect(other.locator("#visits")).to_have_text("1")


def test_clock_ticks(new_page: Any) -> None:
    from playwright.sync_api import expect

    page = new_page()
    page.goto("/")
    clock = page.locator("#clock")
    expect(clock).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
    first = clock.text_content()
    expect(clock).not_to_have_text(first or "", timeout=2500)
    expect(clock).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))


def test_observer_lists_the_demo_processes(new_page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    demo = new_page()
    demo.goto("/")
    join_room(demo, "observed room")
    page = new_page()
    page.goto("/observer/")
    processes = page.locator("#processes tbody")
    for kind in ("SessionProcess", "AsyncPiServer", "Room", "CometProcess"):
        expect(processes).to_contain_text(kind)
    for behaviour in ("session", "pi (n2o_pi)", "WebSocket connection", "supervisor"):
        expect(processes).to_contain_text(behaviour)
    expect(page.locator("#tree")).to_contain_text("web / clock")
    expect(page.locator("#tables")).to_contain_text("sessions")
    expect(page.locator("#pools")).to_contain_text("pool / (room / observed room)")
    expect(page.locator("#nodes")).to_contain_text("browser")
    expect(page.locator("#mode")).to_have_text("read-only")
    # an embedded node has no cluster-scoped processes, and the section says why
    expect(page.locator("#scoped-info")).to_contain_text("embedded node, not in a cluster")
    expect(page.locator("#scoped tbody tr")).to_have_count(0)
    page.fill("#search", "observed")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#proc-info")).to_contain_text("matches")
    expect(processes).to_contain_text("rooms: room / observed room")
    # a row opens the process's details, with its real age
    processes.locator("tr", has_text="rooms: room / observed room").first.click()
    detail = page.locator("#process-detail")
    expect(detail).to_contain_text("registered keys")
    expect(detail.locator("dd[data-field=age]")).to_have_text(re.compile(r"^\d+\.\d s$"))
    page.screenshot(path=str(tmp_path / "observer.png"), full_page=True)
    assert page.js_errors == []
