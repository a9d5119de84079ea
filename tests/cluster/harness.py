"""Test-side handles: a private Redis server and cluster nodes as OS processes.

`RedisServer` runs ``redis-server`` (or ``valkey-server``) on a free loopback port
with no persistence and can stop, start (same port, empty), restart, kill, pause
(``SIGSTOP``) and resume it. `NodeProc` runs `node_runner` with the test venv's
Python and talks JSON lines to it; every request has a timeout, and `NodeProc.close`
kills the process (by its own pid) whatever state it is in.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procreg import testing

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "node_runner.py"
HOST = "127.0.0.1"
RedisServer = testing.RedisServer  # the package's own throwaway server
find_server_binary = testing.find_server_binary
free_port = testing.free_port


def redis_py() -> Any:
    """The redis-py module (imported on first use, so that collecting these modules
    works without it)."""
    import redis

    return redis


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float = 0.02,
    what: str = "",
    explain: Callable[[], Any] | None = None,
) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError after
    `timeout` seconds (with ``explain()`` in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = ""
            if explain is not None:
                try:
                    detail = f"\n{explain()}"
                except Exception as exc:
                    detail = f"\n(explain failed: {exc!r})"
            raise AssertionError(
                f"timed out after {timeout:.1f} s waiting for {what or predicate}{detail}"
            )
        time.sleep(interval)


def cluster_state(nodes: list[NodeProc], server: RedisServer | None = None) -> str:
    """Each node's stats and live list, and who listens on which channel: for
    failure messages."""
    lines = []
    for node in nodes:
        answer = node.req("stats", wait=5) if node.alive() else {"error": "not running"}
        lines.append(f"{node.name}: {answer.get('result', answer)}")
    if server is not None:
        try:
            with contextlib.closing(server.client(timeout=1.0)) as c:
                channels = [f"procreg:ch:{n.name}" for n in nodes] + ["procreg:inval"]
                lines.append(f"subscribers: {c.pubsub_numsub(*channels)}")
        except redis_py().RedisError as exc:
            lines.append(f"redis: {exc!r}")
    return "\n".join(lines)


class Pending:
    """One request's answer, filled in by the reader thread."""

    def __init__(self, node: NodeProc, cmd: dict[str, Any]) -> None:
        self.node = node
        self.cmd = cmd
        self.event = threading.Event()
        self.answer: dict[str, Any] | None = None

    def set(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.event.set()

    def wait(self, timeout: float = 10.0) -> dict[str, Any]:
        if not self.event.wait(timeout):
            raise AssertionError(
                f"{self.node.name}: no answer to {self.cmd.get('cmd')!r} within {timeout} s"
                f"\n--- node log ---\n{self.node.log_tail()}"
            )
        assert self.answer is not None
        return self.answer

    def result(self, timeout: float = 10.0) -> Any:
        answer = self.wait(timeout)
        if not answer.get("ok"):
            raise AssertionError(
                f"{self.node.name}: {self.cmd.get('cmd')!r} failed: {answer.get('error')}: "
                f"{answer.get('message')}\n--- node log ---\n{self.node.log_tail()}"
            )
        return answer.get("result")


class _Launch:
    """One start of a node process: the event set once it is ready, failed or gone."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ready: dict[str, Any] | None = None


class NodeProc:
    """A cluster node in its own OS process."""

    def __init__(
        self,
        name: str,
        url: str,
        logdir: Path,
        *,
        secret: str,
        lease: float,
        trace_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.secret = secret
        self.lease = lease
        self.trace_dir = trace_dir
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._launch = _Launch()
        self.events: list[dict[str, Any]] = []
        self.paused = False
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._incarnation = 0
        self.logfile = logdir / f"{name}.log"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> NodeProc:
        """Launch the process (does not wait: see `wait_ready`)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._incarnation += 1
        self.paused = False
        launch = self._launch = _Launch()
        cmd = [
            sys.executable,
            "-u",
            str(RUNNER),
            "--name",
            self.name,
            "--cluster",
            self.url,
            "--secret",
            self.secret,
            "--lease",
            str(self.lease),
        ]
        if self.trace_dir is not None:
            cmd += ["--trace", str(self.trace_dir)]
        env = dict(os.environ)
        env.pop("PROCREG_CLUSTER", None)
        env.pop("PROCREG_SECRET", None)
        with open(self.logfile, "ab") as log:
            log.write(f"--- start #{self._incarnation} at {time.time():.3f} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=str(self.logdir),
            )
        self._pending = {}  # this incarnation's requests only
        threading.Thread(
            target=self._read, args=(self.proc, self._pending, launch), daemon=True
        ).start()
        return self

    @property
    def ready(self) -> dict[str, Any] | None:
        """This incarnation's ``ready``/``error`` event, or ``exited``; None until then."""
        return self._launch.ready

    @property
    def _ready_event(self) -> threading.Event:
        return self._launch.event

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """The ``ready`` (or start ``error``) event."""
        if not self._ready_event.wait(timeout):
            raise AssertionError(f"{self.name} not ready in {timeout} s\n{self.log_tail()}")
        assert self.ready is not None
        if self.ready.get("event") != "ready":
            raise AssertionError(f"{self.name} failed to start: {self.ready}\n{self.log_tail()}")
        return self.ready

    def _read(
        self, proc: subprocess.Popen[bytes], waiting: dict[int, Pending], launch: _Launch
    ) -> None:
        # `launch` is this process's own: an earlier incarnation's reader, still
        # finishing after a kill, can never mark a later start as exited
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if "id" in obj and obj["id"] is not None:
                with self._lock:
                    pending = waiting.pop(obj["id"], None)
                if pending is not None:
                    pending.set(obj)
                continue
            self.events.append(obj)
            if obj.get("event") in ("ready", "error") and not launch.event.is_set():
                launch.ready = obj
                launch.event.set()
        # the process is gone: fail what is still waiting
        with self._lock:
            pendings = list(waiting.values())
            waiting.clear()
        for pending in pendings:
            pending.set({"ok": False, "error": "NodeGone", "message": "the node process ended"})
        if not launch.event.is_set():
            launch.ready = {"event": "exited", "returncode": proc.wait()}
            launch.event.set()

    @property
    def os_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL; returns the time just before the signal."""
        assert self.proc is not None
        t = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.paused = False
        return t

    def pause(self) -> float:
        """SIGSTOP; returns the time just before the signal."""
        assert self.proc is not None
        t = time.time()
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        return t

    def resume(self) -> float:
        """SIGCONT; returns the time just before the signal."""
        assert self.proc is not None
        t = time.time()
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False
        return t

    def quit(self, timeout: float = 10.0) -> None:
        """Ask the node to stop (its processes end with "shutdown"); kill it if it
        does not go in time."""
        if not self.alive():
            return
        if self.paused:
            self.resume()
        with contextlib.suppress(AssertionError):
            self.send("quit").wait(timeout)
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        """Make sure the process is gone (teardown)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # -- requests ------------------------------------------------------------------------
    def send(self, cmd: str, **args: Any) -> Pending:
        ident = next(self._ids)
        message = {"id": ident, "cmd": cmd, **args}
        pending = Pending(self, message)
        if not self.alive():
            pending.set({"ok": False, "error": "NodeGone", "message": "not running"})
            return pending
        waiting = self._pending
        with self._lock:
            waiting[ident] = pending
        try:
            assert self.proc is not None and self.proc.stdin is not None
            with self._write_lock:
                self.proc.stdin.write((json.dumps(message) + "\n").encode())
                self.proc.stdin.flush()
        except (OSError, ValueError):
            with self._lock:
                waiting.pop(ident, None)
            pending.set({"ok": False, "error": "NodeGone", "message": "stdin closed"})
        return pending

    def req(self, cmd: str, wait: float | None = None, **args: Any) -> dict[str, Any]:
        """The whole answer (``ok``, ``result`` or ``error``, ``elapsed``), waiting
        `wait` seconds (default: 10, or the command's own ``timeout`` + 5)."""
        return self.send(cmd, **args).wait(self._wait(wait, args))

    def ok(self, cmd: str, wait: float | None = None, **args: Any) -> Any:
        """The result; AssertionError (with the node's log) if the command failed."""
        return self.send(cmd, **args).result(self._wait(wait, args))

    @staticmethod
    def _wait(wait: float | None, args: dict[str, Any]) -> float:
        if wait is not None:
            return wait
        return max(10.0, float(args.get("timeout") or 0) + 5.0)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"<NodeProc {self.name} os_pid={self.proc.pid if self.proc else None}>"


def wait_back(
    predicate: Callable[[], Any],
    nodes: list[NodeProc],
    server: RedisServer | None,
    timeout: float,
    what: str,
) -> Any:
    """`wait_for` after an outage, with every node's stats and the channel
    subscriptions in the failure message."""
    return wait_for(
        predicate,
        timeout,
        interval=0.1,
        what=what,
        explain=lambda: cluster_state(nodes, server),
    )
