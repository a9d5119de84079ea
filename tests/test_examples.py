"""The examples run, and the README's quick start is `examples/quickstart.py` (which
`make typecheck` checks under mypy and pyright)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

from procreg import cli

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quick_start_is_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.S)
    assert block is not None
    assert block.group(1) == (ROOT / "examples" / "quickstart.py").read_text()


def test_quick_start_runs() -> None:
    env = {**os.environ, "PROCREG_CLUSTER": ""}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == "['hello']"


def test_console_demo_runs_from_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--console"]) == 0
    out = capsys.readouterr().out
    assert "100 concurrent get_or_spawn calls -> 1 process" in out
    assert "reminder arrived" in out


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_typed_app_serves_carts_and_typed_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    monkeypatch.delenv("PROCREG_CLUSTER", raising=False)
    monkeypatch.setenv("PROCREG_WEB_SECRET", "a test secret of 16+ bytes")
    app = _load("typed_app", monkeypatch).app
    with TestClient(app) as client:  # one node; two browsers, by their cookies
        assert client.post("/cart/apple").json() == {"size": 1}
        assert client.post("/cart/apple").json() == {"size": 2}
        alice = dict(client.cookies)
        client.cookies.clear()
        assert client.post("/cart/pear").json() == {"size": 1}
        assert client.get("/cart").json() == {"items": {"pear": 1}, "total": 1}
        client.cookies.clear()
        client.cookies.update(alice)
        assert client.get("/cart").json() == {"items": {"apple": 2}, "total": 2}
        assert client.get("/stats").json()["added"] == 3
