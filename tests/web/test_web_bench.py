"""A smoke run of the web benchmarks (`bench.web`, tiny sizes): they run and report
their figures. No timing thresholds: benchmarks report, tests assert behaviour."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
pytest.importorskip("httpx")

from bench import web as bench  # the checkout's bench/, on sys.path from conftest


@pytest.mark.parametrize("variant", ["procreg", "plain"])
def test_comet_fanout_smoke(variant: str) -> None:
    figures = bench.comet_fanout(clients=20, messages=3, timeout=30.0, variant=variant)
    assert figures["clients"] == 20 and figures["publish_reached"] == 60
    assert figures["delivered"] == 60 and figures["complete"] is True
    assert figures["deliveries_per_second"] > 0


def test_session_lookups_smoke() -> None:
    figures = bench.session_lookups(
        sessions=8, concurrency=4, requests=80, duration=10.0, timeout=30.0
    )
    assert figures["errors"] == 0
    assert figures["requests"] >= 80
    assert figures["sessions"] == figures["session_processes"] == 8
    plain = bench.session_lookups(
        sessions=4, concurrency=2, requests=20, duration=10.0, variant="plain"
    )
    assert plain["requests"] >= 20 and plain["session_processes"] == 0
    inprocess = bench.session_lookups_inprocess(sessions=10, lookups=500)
    assert inprocess["lookups"] == 500 and inprocess["lookups_per_second"] > 0


def test_comet_slow_clients_are_dropped_and_the_others_served() -> None:
    # 2 of 20 clients never read: procreg drops both (close 1013) and the 18 others get
    # every message; the figure's baseline still serves the readers
    figures = bench.comet_fanout(
        clients=20, messages=80, timeout=30.0, variant="procreg", stalled=2, payload=8192
    )
    assert figures["complete"] is True and figures["delivered"] == 18 * 80
    assert figures["stalled"] == 2 and figures["stalled_dropped"] == 2
    plain = bench.comet_fanout(
        clients=20, messages=40, timeout=30.0, variant="plain", stalled=2, payload=8192
    )
    assert plain["complete"] is True and plain["delivered"] == 18 * 40
    assert plain["stalled_dropped"] is None
