"""The observer's "Cluster-scoped processes" section, in Chromium, on two demo nodes
on one Redis: the demo's clock (a cluster-scoped n2o_pi, ``web: clock``) is listed
with its node and home node; after the node running it stops gracefully (SIGTERM),
the other node's observer shows it there with a handoff from the stopped node in its
moves, and the handoff in the cluster events.

Each node is a real ``procreg demo --cluster URL --port N`` OS process (its own, not
the module fixture of `test_browser_cluster`, since one of them is stopped here).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, demo_cluster

CLOCK = "web: clock"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def two_nodes() -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Two demo nodes in one cluster: [(base URL, its OS process)] * 2."""
    with demo_cluster("browser-scoped-secret") as nodes:
        yield nodes


def _clock_row(base: str) -> dict[str, Any] | None:
    """The clock's row in a node's ``/api/scoped`` once both nodes are live."""
    body = _get(base + "/observer/api/scoped")
    overview = _get(base + "/observer/api/overview")
    if len(overview["nodes"]) != 2:
        return None
    return next((p for p in body["processes"] if p["key"] == CLOCK), None)


def test_the_observer_shows_the_cluster_scoped_clock_and_its_handoff(
    two_nodes: list[tuple[str, subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    names = [_get(base + "/observer/api/overview")["self"] for base, _ in two_nodes]
    deadline = time.monotonic() + 20
    row = None
    while row is None and time.monotonic() < deadline:
        row = _clock_row(two_nodes[0][0])
        if row is None:
            time.sleep(0.2)
    assert row is not None, "the clock never showed in /api/scoped"
    holder = names.index(row["node"])
    survivor = 1 - holder
    survivor_base = two_nodes[survivor][0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.set_default_timeout(15_000)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(survivor_base + "/observer/")
            clock = page.locator("#scoped tbody tr", has_text=CLOCK)
            expect(clock).to_have_count(1)
            cells = clock.locator("td")
            expect(cells.nth(0)).to_have_text(CLOCK)
            expect(cells.nth(1)).to_contain_text("<" + names[holder] + ".")
            expect(cells.nth(2)).to_contain_text(names[holder])
            expect(cells.nth(3)).to_contain_text(row["home"])
            expect(cells.nth(4)).to_have_text("pi (n2o_pi)")
            expect(cells.nth(5)).to_have_text("none seen by this node")
            expect(page.locator("#scoped-info")).to_contain_text("of 1")
            page.screenshot(path=str(tmp_path / "observer-scoped.png"), full_page=True)

            # the node running the clock stops gracefully: the clock is handed off
            two_nodes[holder][1].terminate()
            two_nodes[holder][1].wait(30)
            expect(cells.nth(2)).to_have_text(names[survivor] + " (this node)")
            expect(cells.nth(3)).to_have_text(names[survivor])
            move = cells.nth(5).locator("li.move-takeover")
            expect(move).to_have_count(1)
            expect(move).to_contain_text("handoff at ")
            expect(move).to_contain_text(names[holder] + " \u2192 " + names[survivor])
            expect(cells.nth(4)).to_have_text("pi (n2o_pi)")
            expect(page.locator("#events tbody tr.event-takeover")).not_to_have_count(0)
            expect(page.locator("#scope")).to_have_text("cluster of 1 node")
            page.screenshot(path=str(tmp_path / "observer-scoped-handoff.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
