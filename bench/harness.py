"""Run the benchmarks, print the table, write the JSON.

By default (full mode) every measurement, that is one benchmark for one
implementation, runs in a fresh interpreter, so that no figure inherits another's
heap, threads, GC state or event loop; ``--quick`` runs in-process unless
``--isolate`` is given, except the benchmarks that report RSS (memory, a million
processes, the WebSocket fan-out) or serve HTTP, which always get a fresh
interpreter. Inside a measurement each implementation starts its own event loop (and
procreg node).

Usage: ``procreg bench [--quick] [--only NAME[,NAME]] [--json PATH] [--uvloop]``;
``procreg bench --peers [--quick] [--json PATH]`` compares the cluster with its peers
instead (`bench.peers`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .measure import IMPLS, Benchmark, Figure, Sizes

__all__ = ["all_benchmarks", "format_table", "main", "run"]

RESULT_MARK = "@@procreg-bench-result@@ "
REPO_ROOT = Path(__file__).resolve().parent.parent


def all_benchmarks() -> list[Benchmark]:
    """Every benchmark, in table order."""
    from . import cluster, registry, runtime, scoped, supervision, web

    return [
        *runtime.BENCHMARKS,
        *registry.BENCHMARKS,
        *supervision.BENCHMARKS,
        *cluster.BENCHMARKS,
        *scoped.BENCHMARKS,
        *web.BENCHMARKS,
    ]


def all_figures() -> list[Figure]:
    """Every figure, in table order."""
    return [f for b in all_benchmarks() for f in b.figures]


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def select(benchmarks: list[Benchmark], only: str | None) -> list[Benchmark]:
    """The benchmarks named in `only` (benchmark or figure names, comma-separated)."""
    if not only:
        return benchmarks
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    chosen = [b for b in benchmarks if b.name in wanted or any(f.name in wanted for f in b.figures)]
    known = {b.name for b in benchmarks} | {f.name for b in benchmarks for f in b.figures}
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(
            f"procreg bench: unknown benchmark {', '.join(unknown)}; "
            f"choose among: {', '.join(b.name for b in benchmarks)} (or a figure name; --list)"
        )
    return chosen


# -- one measurement --------------------------------------------------------------------


def measure_here(bench: Benchmark, impl: str, sizes: Sizes, uvloop: bool) -> dict[str, float]:
    """Run `bench` for `impl` in this interpreter."""
    gc.collect()
    try:
        return bench.impls[impl](sizes, uvloop)
    finally:
        gc.collect()


def child_env() -> dict[str, str]:
    """The environment of a child interpreter: this checkout's ``bench`` and the
    ``procreg`` this one runs are importable there."""
    import procreg

    paths = [str(REPO_ROOT), str(Path(procreg.__file__).resolve().parent.parent)]
    old = os.environ.get("PYTHONPATH")
    if old:
        paths.append(old)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def measure_in_child(
    bench: Benchmark, impl: str, quick: bool, uvloop: bool, timeout: float
) -> dict[str, float]:
    """Run `bench` for `impl` in a fresh interpreter and return its values."""
    cmd = [sys.executable, "-m", "bench", "--child", bench.name, impl]
    if quick:
        cmd.append("--quick")
    if uvloop:
        cmd.append("--uvloop")
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            payload = json.loads(line[len(RESULT_MARK) :])
            if "error" in payload:
                raise RuntimeError(payload["error"])
            return {k: float(v) for k, v in payload["values"].items()}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"exit status {proc.returncode}: " + "\n".join(tail))


def child_main(name: str, impl: str, quick: bool, uvloop: bool) -> int:
    """The ``--child`` entry point: measure, print one result line."""
    sizes = Sizes.quick_sizes() if quick else Sizes.full()
    bench = {b.name: b for b in all_benchmarks()}[name]
    try:
        values = measure_here(bench, impl, sizes, uvloop)
    except BaseException:
        print(RESULT_MARK + json.dumps({"error": traceback.format_exc()}), flush=True)
        return 1
    print(RESULT_MARK + json.dumps({"values": values}), flush=True)
    return 0


# -- a whole run ------------------------------------------------------------------------


def _environment() -> dict[str, Any]:
    import procreg

    env: dict[str, Any] = {
        "procreg": procreg.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    for mod in ("uvloop", "pykka"):
        try:
            from importlib.metadata import version

            env[mod] = version(mod)
        except Exception:
            env[mod] = None
    return env


def _target_json(fig: Figure) -> dict[str, Any] | None:
    t = fig.target
    if t is None:
        return None
    return {"op": t.op, "value": t.value, "implied": t.implied, "text": target_text(fig)}


def run(
    *,
    quick: bool = False,
    only: str | None = None,
    uvloop: bool = False,
    isolate: bool | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the selected benchmarks and return the report (what the JSON holds)."""
    sizes = Sizes.quick_sizes() if quick else Sizes.full()
    isolate = (not quick) if isolate is None else isolate
    has_uvloop = available("uvloop")
    has_pykka = available("pykka")
    if uvloop and not has_uvloop:
        raise SystemExit("procreg bench: --uvloop needs uvloop (pip install 'procreg[bench]')")
    benchmarks = select(all_benchmarks(), only)
    figures: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, dict[str, float]]] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    jobs = [(b, impl) for b in benchmarks for impl in IMPLS if impl in b.impls]
    for b in benchmarks:
        for fig in b.figures:
            figures[fig.name] = {
                "title": fig.title,
                "benchmark": b.name,
                "unit": fig.unit,
                "better": fig.better,
                "stat": fig.stat,
                "note": fig.note,
                "target": _target_json(fig),
                **{impl: None for impl in IMPLS},
                "meets_target": None,
            }
    for i, (b, impl) in enumerate(jobs, 1):
        if b.needs_uvloop and not has_uvloop:
            skipped[b.name] = "uvloop is not installed"
            continue
        missing = [m for m in b.requires if not available(m)]
        if missing:
            skipped[b.name] = f"{', '.join(missing)} not installed"
            continue
        if impl == "pykka" and not has_pykka:
            skipped[f"{b.name}/pykka"] = "pykka is not installed"
            continue
        on_uvloop = uvloop or b.needs_uvloop
        if progress is not None:
            progress(f"[{i}/{len(jobs)}] {b.name} / {impl} ...")
        t0 = time.perf_counter()
        try:
            if isolate or b.isolated:
                timeout = 3600.0 if b.name == "million" else 900.0
                values = measure_in_child(b, impl, quick, on_uvloop, timeout)
            else:
                values = measure_here(b, impl, sizes, on_uvloop)
        except Exception as exc:
            errors[f"{b.name}/{impl}"] = str(exc) or repr(exc)
            if progress is not None:
                progress(f"    failed: {str(exc).strip().splitlines()[-1:]}")
            continue
        if progress is not None:
            progress(f"    done in {time.perf_counter() - t0:.1f} s")
        names = {f.name for f in b.figures}
        for key, value in values.items():
            if key in names:
                figures[key][impl] = value
            else:
                details.setdefault(b.name, {}).setdefault(impl, {})[key] = value
    for b in benchmarks:
        for fig in b.figures:
            value = figures[fig.name]["procreg"]
            if fig.target is not None and value is not None:
                figures[fig.name]["meets_target"] = fig.target.met(value)
    return {
        "schema": 1,
        "mode": "quick" if quick else "full",
        "loop": "uvloop" if uvloop else "asyncio",
        "isolation": "subprocess per measurement" if isolate else "in-process",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "environment": _environment(),
        "sizes": dataclasses.asdict(sizes),
        "figures": figures,
        "details": details,
        "errors": errors,
        "skipped": skipped,
    }


# -- the table --------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    if unit in ("µs", "ms", "s", "cores"):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def target_text(fig: Figure) -> str:
    t = fig.target
    if t is None:
        return "-"
    sign = "≥" if t.op == ">=" else "≤"
    return f"{sign} {format_value(t.value, fig.unit)}{'*' if t.implied else ''}"


def _ratio(row: dict[str, Any]) -> str:
    p, a = row.get("procreg"), row.get("asyncio")
    if not p or not a:
        return "-"
    factor = p / a if row["better"] == "higher" else a / p
    return f"{factor:.1f}x"


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    header = [
        "figure",
        "procreg",
        "asyncio",
        "pykka",
        "target",
        "met",
        "vs asyncio",
        "unit",
        "stat",
    ]
    rows = [header]
    for name, row in report["figures"].items():
        unit = row["unit"]
        met = row["meets_target"]
        fig_target = row["target"]
        rows.append(
            [
                name,
                format_value(row["procreg"], unit),
                format_value(row["asyncio"], unit),
                format_value(row["pykka"], unit),
                fig_target["text"] if fig_target else "-",
                "" if met is None else ("yes" if met else "NO"),
                _ratio(row),
                unit,
                row["stat"],
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {1, 2, 3, 4, 6}

    def fmt(r: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[1:]]
    lines.append("")
    lines.append(
        f"mode: {report['mode']}, loop: {report['loop']} (call_*_uvloop always on uvloop), "
        f"{report['isolation']}, {report['seconds']} s; "
        f"Python {report['environment']['python']}, {report['environment']['cpus']} CPUs"
    )
    lines.append(
        "target: the project's performance target (* implied by a stricter target); "
        "vs asyncio: how many times better procreg is than the asyncio baseline"
    )
    for key, why in report["skipped"].items():
        lines.append(f"skipped {key}: {why}")
    for key, err in report["errors"].items():
        lines.append(f"ERROR {key}: {err.strip().splitlines()[-1] if err.strip() else err}")
    return "\n".join(lines)


def format_list() -> str:
    lines = []
    for b in all_benchmarks():
        impls = ", ".join(i for i in IMPLS if i in b.impls)
        lines.append(f"{b.name}  ({impls})")
        for f in b.figures:
            lines.append(f"    {f.name:<28} {f.title} [{f.unit}]")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="procreg bench",
        description=(
            "Measure procreg against a plain asyncio design and Pykka, print a table "
            "and write JSON. Each figure is shown with its target, where it has one "
            "(README, 'Performance')."
        ),
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, seconds)")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these benchmarks or figures")
    p.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="where to write the results (default: bench-results.json, bench-peers.json)",
    )
    p.add_argument(
        "--uvloop",
        action="store_true",
        help="run every benchmark on uvloop (the call_*_uvloop figures always are)",
    )
    iso = p.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate",
        dest="isolate",
        action="store_true",
        default=None,
        help="each measurement in a fresh interpreter (the default without --quick)",
    )
    iso.add_argument(
        "--in-process",
        dest="isolate",
        action="store_false",
        help="every measurement in this interpreter (the default with --quick)",
    )
    p.add_argument("--list", action="store_true", help="list benchmarks and figures, then exit")
    p.add_argument(
        "--peers",
        action="store_true",
        help=(
            "instead of the suite: the cluster against channels_redis and xoscar on one "
            "Redis, with a redis-py GET baseline (bench/peers.py; the bench extra)"
        ),
    )
    p.add_argument("--child", nargs=2, metavar=("BENCH", "IMPL"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``procreg bench``: returns the exit status (1 if a measurement failed)."""
    args = _parser().parse_args(argv)
    if args.child:
        return child_main(args.child[0], args.child[1], args.quick, args.uvloop)
    if args.list:
        print(format_list())
        return 0
    if args.peers:
        from . import peers

        out = args.json or "bench-peers.json"
        return peers.main([*(["--quick"] if args.quick else []), "--json", out])

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = run(
        quick=args.quick,
        only=args.only,
        uvloop=args.uvloop,
        isolate=args.isolate,
        progress=progress,
    )
    print(format_table(report))
    path = Path(args.json or "bench-results.json")
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results written to {path}")
    return 1 if report["errors"] else 0
