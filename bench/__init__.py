"""procreg's benchmark suite: ``procreg bench`` (or ``python -m bench``).

Every figure of the README's "Performance" table is measured in the same run as its
baselines:

- ``procreg``: the library itself (`bench.runtime`, `bench.registry`,
  `bench.supervision`, `bench.cluster`, `bench.web`);
- ``asyncio``: the plain asyncio design, a task reading an `asyncio.Queue` per
  process and a dict registry (`bench.baselines`); for the cluster, raw redis-py;
  for the web figures, plain Starlette (`bench.web`, with its load generators in
  `bench.loadgen`);
- ``pykka``: Pykka's ``ThreadingActor``, where the comparison means something
  (spawn, call, tell, memory, stop).

`bench.harness` selects, runs (by default each measurement in a fresh interpreter),
prints the table and writes the JSON. `bench.measure` holds the shared pieces:
sizes, figure descriptions and the timing and memory helpers.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; see ``procreg bench --help``."""
    from .harness import main as harness_main

    return harness_main(argv)
