"""The ``procreg`` command: ``procreg bench``, ``procreg demo``, ``procreg observer``.

``procreg bench [--quick] [--only NAME[,NAME]] [--json PATH] [--uvloop]`` runs the
benchmark suite. The suite lives in ``bench/`` at the root of a procreg source
checkout, not inside the installed package; the command finds it next to this
package's ``src/`` directory (an editable install) or in the current directory and
its parents. Installed from a wheel, outside a checkout, it says so and exits with
status 2.

``procreg demo [--port 8000] [--host 127.0.0.1] [--cluster URL]`` serves the web demo
(chat rooms, a session visit counter, a server clock, the observer at ``/observer/``);
``procreg demo --console`` runs the console tour (`procreg.console_demo`, part of the
package) instead.
``procreg observer [--port 8001] [--host 127.0.0.1] [--cluster URL]`` serves only the
observer. Both need the ``web`` extra (``pip install 'procreg[web]'``).

    $ procreg bench --quick --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["main"]

COMMANDS = {
    "bench": "run the benchmarks, print a table and write JSON (procreg bench --help)",
    "demo": "serve the web demo on http://127.0.0.1:8000 (procreg demo --help)",
    "observer": "serve the observer on http://127.0.0.1:8001 (procreg observer --help)",
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
        "procreg bench: the benchmark suite is not part of the installed package; it "
        "lives in bench/ of the procreg source repository (or its sdist). Run it from "
        "there:\n"
        "    cd <procreg checkout> && pip install -e '.[bench]' && procreg bench\n"
        "(`make bench` does the same). `procreg bench` looks for bench/harness.py next to "
        "the installed package and in the current directory and its parents."
    )


def _bench(args: Sequence[str]) -> int:
    try:
        harness = load_bench()
    except CheckoutMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    return int(harness.main(list(args)))


def _web_parser(command: str, port: int, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"procreg {command}", description=description)
    parser.add_argument("--port", type=int, default=port, help=f"TCP port (default {port})")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    parser.add_argument(
        "--cluster", default=None, metavar="URL", help="join a cluster (redis://...)"
    )
    parser.add_argument("--name", default=None, help="the node's name")
    parser.add_argument(
        "--token",
        default=None,
        help="make the observer writable (its kill buttons) for requests bearing this token",
    )
    return parser


def _web_ready(cluster: str | None) -> str | None:
    """Why the web commands cannot run here, or None."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        return f"{exc.name} is missing: install the web extra (pip install 'procreg[web]')"
    from .node import Node

    try:
        Node(cluster=cluster)  # checks the cluster option before the server starts
    except ValueError as exc:
        return str(exc)
    return None


def _demo(args: Sequence[str]) -> int:
    if "--console" in args:
        return _console_demo([a for a in args if a != "--console"])
    parser = _web_parser(
        "demo", 8000, "Serve the procreg web demo (--console: the console demo instead)."
    )
    parser.add_argument("--console", action="store_true", help="run the console demo instead")
    opts = parser.parse_args(list(args))
    problem = _web_ready(opts.cluster)
    if problem is not None:
        print(f"procreg demo: {problem}", file=sys.stderr)
        return 2
    from .web.demo import create_app
    from .web.serving import serve

    node_options = {"cluster": opts.cluster} if opts.cluster else {}
    if opts.name:
        node_options["name"] = opts.name
    try:
        app = create_app(observer_token=opts.token, **node_options)
    except ValueError as exc:
        print(f"procreg demo: {exc}", file=sys.stderr)
        return 2
    print(
        f"procreg demo: http://{opts.host}:{opts.port}/ "
        "(observer at /observer/, Prometheus metrics at /metrics)"
    )
    serve(app, host=opts.host, port=opts.port)
    return 0


def _console_demo(args: Sequence[str]) -> int:
    if args:
        print(f"procreg demo --console: unexpected arguments {list(args)}", file=sys.stderr)
        return 2
    from .console_demo import run

    run()
    return 0


def _observer(args: Sequence[str]) -> int:
    opts = _web_parser("observer", 8001, "Serve the procreg observer.").parse_args(list(args))
    problem = _web_ready(opts.cluster)
    if problem is not None:
        print(f"procreg observer: {problem}", file=sys.stderr)
        return 2
    from .web.observer import create_observer_app
    from .web.serving import serve

    node_options = {"cluster": opts.cluster} if opts.cluster else {}
    if opts.name or not opts.cluster:  # in a cluster the node picks a unique name
        node_options["name"] = opts.name or "observer"
    try:
        app = create_observer_app(writable=opts.token is not None, token=opts.token, **node_options)
    except ValueError as exc:
        print(f"procreg observer: {exc}", file=sys.stderr)
        return 2
    what = (
        "every node of the cluster"
        if opts.cluster
        else "this process's own node (--cluster URL to watch a cluster)"
    )
    print(f"procreg observer: http://{opts.host}:{opts.port}/ watching {what}")
    serve(app, host=opts.host, port=opts.port)
    return 0


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
