"""``procreg demo`` and ``procreg observer``: options, the cluster path, a real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from procreg.cli import main
from procreg.testing import free_port
from procreg.web.lifespan import NodeLifespan


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo", "observer"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        for option in ("--port", "--host", "--cluster"):
            assert option in out


def test_options_reach_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[Any, str, int]] = []

    def fake_serve(app: Any, *, host: str, port: int) -> None:
        served.append((app, host, port))

    monkeypatch.setattr("procreg.web.serving.serve", fake_serve)
    url = "redis://127.0.0.1:6399/0"
    assert main(["demo", "--cluster", url, "--port", "8123", "--name", "web7"]) == 0
    assert main(["observer", "--cluster", url, "--token", "t" * 20]) == 0
    (demo, host, port), (observer, _, observer_port) = served
    assert (host, port, observer_port) == ("127.0.0.1", 8123, 8001)
    demo_lifespan = demo.router.lifespan_context
    assert isinstance(demo_lifespan, NodeLifespan)
    assert demo_lifespan.node_options == {"cluster": url, "name": "web7"}
    assert observer.router.lifespan_context.node_options == {"cluster": url}


def test_short_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["observer", "--token", "short", "--port", "1"]) == 2
    assert "16" in capsys.readouterr().err


def test_observer_command_serves_the_observer() -> None:
    port = free_port()
    env = {**os.environ, "PROCREG_CLUSTER": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "procreg", "observer", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/overview"
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert body["nodes"][0]["node"] == "observer"
        assert body["writable"] is False
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
