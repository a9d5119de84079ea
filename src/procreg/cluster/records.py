"""The records of cluster-scoped processes in the store (`Records`): three hashes,
one field per key (see `procreg.cluster.scoped`), written and read in one pipeline
per loop turn, their specs and states pickled (a module by name) and signed with the
cluster secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import io
import logging
import pickle
import types
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .store import Store

__all__ = ["DROP", "Records", "portable"]

log = logging.getLogger("procreg.cluster")

_MAC = 32  # bytes of HMAC-SHA256 before a signed blob


class _Pickler(pickle.Pickler):
    """Pickles modules by name (an n2o ``Pi``'s module is often a module)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def portable(what: str, obj: Any) -> bytes:
    """`obj` pickled, or a `TypeError` saying why a cluster-scoped process needs it
    picklable (its factory importable by name on every node)."""
    try:
        return _dumps(obj)
    except Exception as exc:
        raise TypeError(
            f"a cluster-scoped process needs {what} that every node can rebuild (a factory "
            "defined at module level in an importable module, picklable arguments and "
            f"state): {type(exc).__name__}: {exc}"
        ) from None


# Drop a record if it still names the pid that ended. KEYS: pid, spec, state hashes.
# ARGV: field, pid string.
DROP: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 1
end
return 0
"""


_Write = tuple[str, str, bytes | None, "asyncio.Future[None]"]  # field, pid, spec, done


class Records:
    """The store side of cluster-scoped processes for one node."""

    def __init__(self, store: Store, secret: bytes) -> None:
        self.store = store
        self.secret = secret
        self._reads: list[tuple[str, bool, asyncio.Future[Any]]] = []
        self._read_pending = False
        self._writes: list[_Write] = []
        self._write_task: asyncio.Task[None] | None = None

    def k(self, what: str) -> str:
        return self.store.key("scoped", what)

    def sign(self, blob: bytes) -> bytes:
        return hmac.new(self.secret, blob, hashlib.sha256).digest() + blob

    def open(self, signed: bytes | None) -> Any:
        if signed is None:
            return None
        mac, blob = signed[:_MAC], signed[_MAC:]
        want = hmac.new(self.secret, blob, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            raise ValueError("a cluster-scoped record is not signed with the cluster secret")
        return pickle.loads(blob)

    def write(self, field: str, pid: str, blob: bytes | None) -> asyncio.Future[None]:
        """Queue one record write; the future is done once it has reached the store
        (or failed: logged)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((field, pid, blob, fut))
        if self._write_task is None or self._write_task.done():
            self._write_task = asyncio.get_running_loop().create_task(self._flush_writes())
        return fut

    async def _flush_writes(self) -> None:
        """The records queued in this loop turn (and while this flush ran), one
        pipeline a round: a start writes its pid and spec and clears handed-off state;
        an end for good (no blob) drops the record if it still names the pid."""
        await asyncio.sleep(0)
        kp, ks, kst = self.k("pid"), self.k("spec"), self.k("state")
        while self._writes:
            batch, self._writes = self._writes, []

            async def run(r: Any, batch: list[_Write] = batch) -> None:
                async with r.pipeline(transaction=False) as pipe:
                    for field, pid, blob, _ in batch:
                        if blob is None:
                            pipe.eval(DROP, 3, kp, ks, kst, field, pid)
                        else:
                            pipe.hset(kp, field, pid)
                            pipe.hset(ks, field, blob)
                            pipe.hdel(kst, field)
                    await pipe.execute()

            try:
                await self.store.run(run)
            except Exception as exc:
                log.warning("could not record %d cluster-scoped process(es): %r", len(batch), exc)
            for *_, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def read(self, field: str, spec: bool) -> tuple[bytes | None, bytes | None]:
        """``(spec, state)`` blobs of record `field` (spec None unless asked for).
        The reads of one loop turn go in one pipeline (two ``HMGET``s), so that a
        thousand starts at once do not take a thousand connections."""
        fut: asyncio.Future[tuple[bytes | None, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._reads.append((field, spec, fut))
        if not self._read_pending:
            self._read_pending = True
            asyncio.get_running_loop().call_soon(self._send_reads)
        return await fut

    def _send_reads(self) -> None:
        self._read_pending = False
        batch, self._reads = self._reads, []
        if batch:
            self.store.tasks.spawn(self._run_reads(batch))

    async def _run_reads(self, batch: list[tuple[str, bool, asyncio.Future[Any]]]) -> None:
        fields = [field for field, _, _ in batch]
        with_spec = [field for field, spec, _ in batch if spec]

        async def run(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hmget(self.k("state"), fields)
                if with_spec:
                    pipe.hmget(self.k("spec"), with_spec)
                return await pipe.execute()  # type: ignore[no-any-return]

        try:
            answers = await self.store.run(run)
        except BaseException as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        specs = dict(zip(with_spec, answers[1], strict=True)) if with_spec else {}
        for (field, _, fut), state in zip(batch, answers[0], strict=True):
            if not fut.done():
                fut.set_result((specs.get(field), state))

    async def drain(self, timeout: float = 1.0) -> None:
        """Wait (up to `timeout` s) for the writes under way."""
        if self._write_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._write_task), timeout)
            except BaseException:
                pass
