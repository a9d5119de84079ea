"""Cluster log lines (logger ``procreg.cluster``): joining, another node coming up,
fencing, rejoining and leaving are logged with the node as a structured field, and
recorded as cluster events (what the observer shows live)."""

from __future__ import annotations

import asyncio
import logging

import pytest

import procreg

from .conftest import SECRET

pytestmark = pytest.mark.timeout(60)


def _fields(records: list[logging.LogRecord], text: str) -> list[str]:
    return [getattr(r, "procreg_node", None) or "" for r in records if text in r.getMessage()]


def test_join_up_fence_rejoin_and_leave_are_logged(redis, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[tuple[str, str]]:
        async with (
            procreg.Node("la", cluster=redis.url, secret=SECRET, lease=1.0) as a,
            procreg.Node("lb", cluster=redis.url, secret=SECRET, lease=1.0),
        ):
            for _ in range(200):
                if "lb" in a.nodes():
                    break
                await asyncio.sleep(0.02)
            cluster = a._cluster
            cluster.fence_now("a test asked for it")
            for _ in range(200):
                if not cluster.fencing:
                    break
                await asyncio.sleep(0.02)
            assert not cluster.fencing
            return [(e["kind"], e["node"]) for e in cluster.counters.events]

    with caplog.at_level(logging.INFO, logger="procreg.cluster"):
        events = asyncio.run(main())
    records = [r for r in caplog.records if r.name == "procreg.cluster"]
    joined = [r for r in records if "joined the cluster at" in r.getMessage()]
    assert {r.procreg_node for r in joined} == {"la", "lb"}  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in joined)
    assert "lb" in _fields(records, "node up")
    assert _fields(records, "fences itself") == ["la"]
    assert _fields(records, "rejoined the cluster") == ["la"]
    left = [r for r in records if "leaves the cluster" in r.getMessage()]
    assert {r.procreg_node for r in left} == {"la", "lb"}  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in left)
    assert events[0] == ("join", "la")
    assert ("up", "lb") in events and ("fence", "la") in events and ("rejoin", "la") in events
