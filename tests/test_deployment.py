"""The warning for an embedded node in one of several server workers
(`procreg.deployment`), and the web layer's startup line about its registry.

The detection reads the worker count that the server's own code carries on the call
stack; these tests build such stacks with functions whose module is named like the
server's (``uvicorn.server``, ``gunicorn.arbiter``, ...) and objects of classes whose
module is, and run a real ``uvicorn --workers 2`` once."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import procreg
from procreg import deployment
from procreg.deployment import several_workers


def _in_module(module: str, source: str, **names: Any) -> Callable[..., Any]:
    """The function ``run`` defined by `source` in a namespace named `module`."""
    namespace: dict[str, Any] = {"__name__": module, **names}
    exec(textwrap.dedent(source), namespace)
    fn: Callable[..., Any] = namespace["run"]
    return fn


def _obj(module: str, **attrs: Any) -> Any:
    """An object whose class belongs to `module`, with `attrs`."""
    cls = type("Obj", (), {"__module__": module})
    obj = cls()
    for name, value in attrs.items():
        setattr(obj, name, value)
    return obj


CHECK = """
def run(self, check):
    return check()
"""


def _uvicorn_server(workers: int, reload: bool = False) -> Any:
    return _obj("uvicorn.server", config=_obj("uvicorn.config", workers=workers, reload=reload))


def _check(environ: dict[str, str] | None = None, modules: Any = None) -> Callable[[], Any]:
    return lambda: several_workers(
        sys._getframe(1), environ=environ or {}, modules=modules if modules is not None else {}
    )


def test_uvicorn_with_several_workers_is_detected() -> None:
    run = _in_module("uvicorn.server", CHECK)
    assert run(_uvicorn_server(2), _check()) == "uvicorn with 2 workers"


def test_uvicorn_with_one_worker_or_reload_is_not() -> None:
    run = _in_module("uvicorn.server", CHECK)
    assert run(_uvicorn_server(1), _check()) is None
    assert run(_uvicorn_server(4, reload=True), _check()) is None
    # the server's own count wins over WEB_CONCURRENCY (`uvicorn --workers 1`)
    busy = {"WEB_CONCURRENCY": "4"}
    assert run(_uvicorn_server(1), _check(busy, {"uvicorn": object()})) is None


def test_gunicorn_arbiter_count_wins_over_its_uvicorn_worker() -> None:
    # gunicorn -w 4 -k uvicorn.workers.UvicornWorker: the forked worker runs under
    # the arbiter's spawn_worker frame; the uvicorn worker's own config says 1
    worker = _in_module("uvicorn.workers", CHECK.replace("check()", "check()  # UvicornWorker.run"))
    arbiter = _in_module(
        "gunicorn.arbiter",
        """
        def run(self, inner, worker, check):
            return inner(worker, check)
        """,
    )
    uv_worker = _obj("uvicorn.workers", config=_obj("uvicorn.config", workers=1, reload=False))
    one = _obj("gunicorn.arbiter", num_workers=1)
    four = _obj("gunicorn.arbiter", num_workers=4)
    assert arbiter(four, worker, uv_worker, _check()) == "gunicorn with 4 workers"
    assert arbiter(one, worker, uv_worker, _check()) is None
    # gunicorn -w 1 with WEB_CONCURRENCY=3: the uvicorn worker's config echoes the 3,
    # the arbiter (the outermost server frame) decides
    echoing = _obj("uvicorn.workers", config=_obj("uvicorn.config", workers=3, reload=False))
    assert arbiter(one, worker, echoing, _check()) is None
    assert arbiter(four, worker, echoing, _check()) == "gunicorn with 4 workers"


def test_gunicorn_worker_config_and_hypercorn() -> None:
    run = _in_module("gunicorn.workers.base", CHECK)
    gworker = _obj("gunicorn.workers.base", cfg=_obj("gunicorn.config", workers=3))
    assert run(gworker, _check()) == "gunicorn with 3 workers"
    hyper = _in_module(
        "hypercorn.asyncio.run",
        """
        def run(config, check):
            return check()
        """,
    )
    assert hyper(_obj("hypercorn.config", workers=2), _check()) == "hypercorn with 2 workers"
    assert hyper(_obj("hypercorn.config", workers=1), _check()) is None


def test_web_concurrency_counts_only_inside_a_server() -> None:
    loaded = {"gunicorn": object()}
    assert several_workers(environ={"WEB_CONCURRENCY": "3"}, modules=loaded) == (
        "WEB_CONCURRENCY=3 (gunicorn)"
    )
    # a script on a platform that sets WEB_CONCURRENCY, no server imported: no warning
    assert several_workers(environ={"WEB_CONCURRENCY": "3"}, modules={}) is None
    for value in ("1", "0", "", "many", "-2"):
        assert several_workers(environ={"WEB_CONCURRENCY": value}, modules=loaded) is None


def test_objects_that_are_not_the_servers_are_ignored() -> None:
    # a frame of uvicorn's code whose `self` is the application's own object
    run = _in_module("uvicorn.middleware.proxy_headers", CHECK)
    mine = SimpleNamespace(workers=8, num_workers=8, config=SimpleNamespace(workers=8))
    assert run(mine, _check()) is None
    # a config property that raises is skipped, not propagated
    broken = type("Cfg", (), {"__module__": "uvicorn.config", "workers": property(_raise)})()
    assert run(_obj("uvicorn.server", config=broken), _check()) is None


def _raise(self: object) -> int:
    raise RuntimeError("not here")


def test_embedded_node_warns_once_and_cluster_free_checks_cost_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deployment, "_warned", False)

    async def start_nodes() -> None:
        for name in ("web1", "web2"):
            async with procreg.Node(name):
                pass

    serve = _in_module(
        "uvicorn.server",
        """
        def run(self, main):
            return asyncio.run(main())
        """,
        asyncio=asyncio,
    )
    with caplog.at_level(logging.WARNING, logger="procreg.deployment"):
        serve(_uvicorn_server(2), start_nodes)
    warnings = [r for r in caplog.records if r.name == "procreg.deployment"]
    assert len(warnings) == 1, warnings
    text = warnings[0].getMessage()
    assert "'web1'" in text and "uvicorn with 2 workers" in text
    for advice in ("PROCREG_CLUSTER", "PROCREG_WEB_SECRET", "DEPLOYING.md"):
        assert advice in text
    # a single worker: nothing
    caplog.clear()
    monkeypatch.setattr(deployment, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="procreg.deployment"):
        serve(_uvicorn_server(1), start_nodes)
    assert not [r for r in caplog.records if r.name == "procreg.deployment"]


def test_web_layer_says_which_registry(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.applications import Starlette

    with warnings.catch_warnings():  # Starlette would rather have httpx2; httpx still works
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    import procreg.web

    app = Starlette(lifespan=procreg.web.lifespan(name="web9"))
    with caplog.at_level(logging.INFO, logger="procreg.web"), TestClient(app):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "procreg.web"]
    assert "procreg.web: node 'web9' uses the embedded registry" in lines[0]


def test_cluster_registry_is_described_without_its_password() -> None:
    pytest.importorskip("starlette")
    from procreg.web.lifespan import describe_registry

    node = procreg.Node("web1", cluster="redis://:hunter2@127.0.0.1:6379/0?wait=1")
    described = describe_registry(node)
    assert described.startswith("the cluster registry at redis://")
    assert "hunter2" not in described


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APP = """
from starlette.applications import Starlette
import procreg.web

app = Starlette(lifespan=procreg.web.lifespan())
"""


def _serve_and_read(tmp_path: Path, workers: int) -> str:
    """Run ``uvicorn --workers N`` until every worker has started; its stderr."""
    (tmp_path / "deploy_app.py").write_text(APP)
    env = {**os.environ, "PROCREG_CLUSTER": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WEB_CONCURRENCY", None)
    log = tmp_path / f"uvicorn-{workers}.log"
    command = [sys.executable, "-m", "uvicorn", "deploy_app:app", "--app-dir", str(tmp_path)]
    command += ["--host", "127.0.0.1", "--port", str(_free_port()), "--workers", str(workers)]
    with log.open("w") as err:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if log.read_text().count("Application startup complete") >= workers:
                time.sleep(0.3)  # let the last worker's lines through
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return log.read_text()


def test_real_uvicorn_with_two_workers_warns_and_one_does_not(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    two = _serve_and_read(tmp_path, 2)
    assert two.count("Application startup complete") == 2, two
    assert two.count("one of several server workers (uvicorn with 2 workers)") == 2, two
    one = _serve_and_read(tmp_path, 1)
    assert "Application startup complete" in one, one
    assert "several server workers" not in one, one
