"""A TTL cache table and N2O's cache timer.

`Cache` is a key → value table whose entries may expire. Reads treat an expired entry
as missing; `Cache.sweep` drops the expired ones in O(expired · log n) using a heap of
deadlines (an entry re-put with a new TTL leaves a stale heap item, skipped later).

N2O keeps session variables in an ETS table ``caching`` and runs an n2o_pi process
``"/timer"`` that wakes every minute and drops expired entries. `start_cache_timer`
does the same: a supervised `procreg.pi` process named ``"/timer"`` in table
``"caching"``, sweeping the node's cache `name` every `interval` seconds and
re-arming itself with `send_after`. If it crashes, its supervisor restarts it.

>>> import procreg
>>> from procreg.cache import Cache
>>> c = Cache(clock=lambda: 100.0)
>>> c.put("a", 1, ttl=5)
>>> c.get("a")
1
>>> c.sweep(now=106.0)
['a']
>>> c.get("a", "gone")
'gone'
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final

from . import pi as n2o
from .kernel import current_node
from .options import check_timeout
from .pid import Pid
from .primitives import self as self_pid
from .timers import send_after

__all__ = ["Cache", "CacheTimer", "cache", "start_cache_timer"]

_NEVER: Final = float("inf")


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<default ttl>"


_DEFAULT: Final = _Default()


class Cache:
    """A key → value table with optional per-entry time to live (seconds)."""

    def __init__(
        self,
        name: str = "caching",
        *,
        default_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_timeout(default_ttl, "default_ttl")
        self.name = name
        self.default_ttl = default_ttl
        self._clock = clock
        self._data: dict[Hashable, tuple[Any, float]] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self.swept = 0

    def put(self, key: Hashable, value: Any, ttl: float | _Default | None = _DEFAULT) -> None:
        """Store `value` under `key`, expiring after `ttl` seconds; without `ttl`, after
        the cache's `default_ttl`; with ``ttl=None``, never."""
        if isinstance(ttl, _Default):
            ttl = self.default_ttl
        check_timeout(ttl, "ttl")
        expires = _NEVER if ttl is None else self._clock() + ttl
        self._data[key] = (value, expires)
        if expires != _NEVER:
            heapq.heappush(self._heap, (expires, next(self._seq), key))

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value under `key`, or `default` if it is missing or expired."""
        entry = self._data.get(key)
        if entry is None or entry[1] <= self._clock():
            return default
        return entry[0]

    def __contains__(self, key: object) -> bool:
        entry = self._data.get(key)  # type: ignore[arg-type, unused-ignore]
        return entry is not None and entry[1] > self._clock()

    def delete(self, key: Hashable) -> bool:
        """Remove `key`; True if it was present (expired or not)."""
        return self._data.pop(key, None) is not None

    def sweep(self, now: float | None = None) -> list[Hashable]:
        """Drop every entry expired at `now` (default: the clock); returns their keys."""
        now = self._clock() if now is None else now
        heap, data = self._heap, self._data
        gone: list[Hashable] = []
        while heap and heap[0][0] <= now:
            expires, _, key = heapq.heappop(heap)
            entry = data.get(key)
            if entry is not None and entry[1] == expires:
                del data[key]
                gone.append(key)
        self.swept += len(gone)
        return gone

    def __len__(self) -> int:
        """Entries stored, expired ones not yet swept included."""
        return len(self._data)

    def keys(self) -> Iterator[Hashable]:
        """The keys of entries that have not expired."""
        now = self._clock()
        return (k for k, (_, expires) in list(self._data.items()) if expires > now)

    def __repr__(self) -> str:
        return f"<Cache {self.name!r} entries={len(self._data)}>"


def cache(name: str = "caching") -> Cache:
    """The current node's cache called `name`, created on first use."""
    node = current_node()
    caches: dict[str, Cache] = node.__dict__.setdefault("_caches", {})
    found = caches.get(name)
    if found is None:
        found = caches[name] = Cache(name)
    return found


_TICK: Final = ("timer", "ping")


class CacheTimer:
    """The ``proc`` of the cache timer. Its `Pi.state` is a dict: ``cache`` (the cache
    name), ``interval`` (seconds), ``on_sweep`` (optional callable given the swept
    keys) and ``sweeps`` (how many sweeps this incarnation has done). The state is
    replaced, never mutated, so a restart begins from the spec's state."""

    @staticmethod
    def proc(msg: Any, p: n2o.Pi) -> n2o.Ok | n2o.Reply | n2o.Error:
        state = p.state
        if msg is n2o.INIT:
            send_after(state["interval"], self_pid(), _TICK)
            return n2o.Ok(p)
        if msg == _TICK:
            gone = cache(state["cache"]).sweep()
            p.state = {**state, "sweeps": state.get("sweeps", 0) + 1}
            if state.get("on_sweep") is not None:
                state["on_sweep"](gone)
            send_after(state["interval"], self_pid(), _TICK)
            return n2o.Ok(p)
        if msg == "sweeps":
            return n2o.Reply(state.get("sweeps", 0), p)
        return n2o.Error(("unknown_message", msg))


async def start_cache_timer(
    interval: float = 60.0,
    *,
    name: str = "caching",
    sup: Any = "root",
    on_sweep: Callable[[list[Hashable]], Any] | None = None,
    restart: str = "permanent",
) -> tuple[Pid, Hashable] | n2o.Error:
    """Start the ``"/timer"`` process of table ``"caching"`` under `sup`, sweeping
    cache `name` every `interval` seconds."""
    check_timeout(interval, "interval")
    if interval == 0:
        raise ValueError("interval must be > 0")
    state = {"cache": name, "interval": interval, "on_sweep": on_sweep, "sweeps": 0}
    return await n2o.start(n2o.Pi("/timer", "caching", sup, CacheTimer, state, restart=restart))
