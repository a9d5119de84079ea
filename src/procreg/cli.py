"""The ``procreg`` command: ``procreg bench``, ``procreg demo``, ``procreg observer``.

``procreg bench [--quick] [--only NAME[,NAME]] [--json PATH] [--uvloop]`` runs the
benchmark suite. The suite lives in ``bench/`` at the root of a procreg source
checkout, not inside the installed package; the command finds it next to this
package's ``src/`` directory (an editable install) or in the current directory.

``procreg demo`` runs ``examples/console_demo.py`` of the checkout.
``procreg observer`` is not available yet.

    $ procreg bench --quick --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["main"]

COMMANDS = {
    "bench": "run the benchmarks, print a table and write JSON (procreg bench --help)",
    "demo": "run the console demo (examples/console_demo.py of a source checkout)",
    "observer": "inspect a running node (not available yet)",
}


class CheckoutMissing(Exception):
    """The command needs a procreg source checkout that cannot be found."""


def _checkout_roots() -> list[Path]:
    """Candidate repository roots: the one holding this package's ``src/`` (an
    editable or in-tree install), then the current directory and its parents."""
    here = Path(__file__).resolve()
    roots = [here.parents[2]] if len(here.parents) > 2 else []
    cwd = Path.cwd().resolve()
    roots += [cwd, *cwd.parents]
    return roots


def find_checkout(marker: str) -> Path | None:
    """The first candidate root that contains `marker` (a relative path)."""
    for root in _checkout_roots():
        if (root / marker).is_file() and (root / "pyproject.toml").is_file():
            return root
    return None


def load_bench() -> ModuleType:
    """Import ``bench.harness`` from the source checkout (lazily: only
    ``procreg bench`` needs it), falling back to an importable ``bench`` package."""
    root = find_checkout("bench/harness.py")
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("bench.harness")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.harness"):
            raise
    raise CheckoutMissing(
        "procreg bench: the benchmark suite (bench/) is not installed with the package; "
        "it lives in the procreg source repository. Run it from a checkout:\n"
        "    git clone <procreg repository> && cd procreg && pip install -e '.[bench]'\n"
        "    procreg bench"
    )


def _bench(args: Sequence[str]) -> int:
    try:
        harness = load_bench()
    except CheckoutMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    return int(harness.main(list(args)))


def _demo(args: Sequence[str]) -> int:
    root = find_checkout("examples/console_demo.py")
    if root is None:
        print(
            "procreg demo: the console demo is not available "
            "(examples/console_demo.py of a procreg checkout not found)",
            file=sys.stderr,
        )
        return 2
    script = root / "examples" / "console_demo.py"
    return subprocess.call([sys.executable, str(script), *args], cwd=root)


def _observer(args: Sequence[str]) -> int:
    print("procreg observer: not available yet", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procreg",
        description="procreg: supervised asyncio processes found by key.",
        epilog="\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), help="what to do")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``procreg`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args.args)
    if args.command == "demo":
        return _demo(args.args)
    return _observer(args.args)
