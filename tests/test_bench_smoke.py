"""Smoke test of the benchmark harness: ``procreg bench --quick`` runs every
benchmark and writes a JSON with a positive number for procreg and for the asyncio
baseline in every figure. No timing thresholds: benchmarks report, tests assert."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from procreg import cli


def _figures() -> dict[str, str]:
    """figure name -> benchmark name, from the bench package of this checkout (on
    sys.path from conftest)."""
    from bench.harness import all_benchmarks

    return {f.name: b.name for b in all_benchmarks() for f in b.figures}


def _no_baseline() -> set[str]:
    """Figures that say no baseline design measures them."""
    from bench.harness import all_benchmarks

    return {f.name for b in all_benchmarks() for f in b.figures if not f.baseline}


def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "procreg", "bench", "--quick", "--json", str(out)],
        cwd=tmp_path,  # the harness must find bench/ from the package, not the cwd
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["mode"] == "quick"
    assert not report["errors"]
    expected = _figures()
    no_baseline = _no_baseline()
    assert set(report["figures"]) == set(expected)
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    for name, bench in expected.items():
        row = report["figures"][name]
        if bench in report["skipped"]:
            if "uvloop" in report["skipped"][bench]:
                assert not has_uvloop, f"{bench} skipped although uvloop is installed"
            else:  # the web figures without the web extra
                from bench.web import WEB_MODULES

                assert not all(map(importlib.util.find_spec, WEB_MODULES)), bench
            continue
        for impl in ("procreg", "asyncio"):
            if impl == "asyncio" and name in no_baseline:
                continue
            value = row[impl]
            assert isinstance(value, (int, float)), (name, impl, value)
            assert value > 0, (name, impl, value)
        assert row["unit"] and row["stat"]
    # the table names every figure too
    for name in expected:
        assert name in proc.stdout


def test_only_selects_benchmarks_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "only.json"
    code = cli.main(["bench", "--quick", "--only", "spawn,whereis_rate", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text(encoding="utf-8"))["figures"]
    assert set(figures) == {"spawn_rate", "whereis_rate"}
    assert figures["spawn_rate"]["procreg"] > 0


def test_unknown_benchmark_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown benchmark nope"):
        cli.main(["bench", "--quick", "--only", "nope", "--json", str(tmp_path / "x.json")])


def test_bench_without_checkout_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "find_checkout", lambda marker: None)
    monkeypatch.setitem(sys.modules, "bench", None)
    monkeypatch.setitem(sys.modules, "bench.harness", None)
    assert cli.main(["bench", "--quick"]) == 2
    assert "source repository" in capsys.readouterr().err


def test_peers_run_measures_every_installed_peer_on_one_redis(tmp_path: Path) -> None:
    """``procreg bench --peers --quick``: every installed system gets its figures, the
    ones not installed are reported as skipped, never as errors."""
    from bench.peers import FIGURES, PEERS

    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "procreg", "bench", "--peers", "--quick", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["kind"] == "peers" and not report["errors"]
    assert set(report["figures"]) == set(FIGURES)
    measured = {
        "procreg": [f for f in FIGURES if not f.startswith("get_")],
        "procreg listen=": [f for f in FIGURES if not f.startswith("get_")],
        "channels_redis": ["fanout_rate", "hop_publish_median", "hop_send_median"],
        "xoscar": ["goc_new_median", "goc_existing_median", "call_median"],
        "redis-py": ["get_median", "get_p99"],
    }
    for side, (column, modules) in PEERS.items():
        if not all(map(importlib.util.find_spec, modules)):
            assert column in report["skipped"], side
            continue
        for name in measured[column]:
            value = report["figures"][name][column]
            assert isinstance(value, (int, float)) and value > 0, (column, name, value)
    assert "redis-py GET" in proc.stdout
