"""Membership: leases, creations, the live-node list, fencing and data loss.

Joining: a node takes a fresh *creation* (``INCR creation``), then its lease
(``SET lease:<name> <creation> PX <lease> NX``), and records itself in ``nodes``. The
cluster *epoch* (a random token, ``SET epoch NX``) is read at the same time.

Every third of a lease the node runs one step:

1. **Renew** (a script): if ``epoch`` no longer holds our token, the store lost its
   data → `Cluster.recover_lost_data`. If our lease key no longer holds our creation,
   we were declared dead while the store kept its data → `Cluster.fence`. Otherwise the
   lease is extended.
2. **Poll**: read ``nodes`` and every node's lease; a node is live while its lease
   holds the creation it registered. Nodes that appeared are *up*, nodes whose lease
   lapsed (or changed creation) are *down*: `Cluster.node_down` delivers noconnection
   and cleans the store of what that incarnation held.

A lease that lapses is noticed by the others within one poll interval, so a killed
node is down everywhere within ``lease + lease/3`` (under 2 x lease) of its last renewal.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from .store import stop_tasks

if TYPE_CHECKING:
    from . import Cluster

__all__ = ["Membership"]

log = logging.getLogger("procreg.cluster")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Membership:
    """The node's lease and its view of the live nodes."""

    def __init__(self, cluster: Cluster, name: str, lease: float) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.name = name
        self.lease = lease
        self.creation = 0
        self.epoch = ""
        self.live: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._step_lock = asyncio.Lock()
        self.renewals = 0

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))

    def lease_key(self, name: str) -> str:
        return self.store.key("lease", name)

    async def join(self) -> int:
        """Take a creation and a lease; returns the creation."""
        store = self.store
        token = secrets.token_hex(8)
        r = store.redis
        await store.run(lambda r: r.set(store.key("epoch"), token, nx=True))
        self.epoch = _text(await store.run(lambda r: r.get(store.key("epoch")))) or token
        # a fresh store starts the counter from the clock, so that creations stay
        # unique across store lifetimes (a data loss must not hand out old ones)
        seed = int(time.time() - 1_767_225_600)  # seconds since 2026-01-01
        await store.run(lambda r: r.set(store.key("creation"), max(seed, 0), nx=True))
        self.creation = int(await store.run(lambda r: r.incr(store.key("creation"))))
        deadline = asyncio.get_running_loop().time() + self.lease * 1.5
        while True:
            ok = await store.run(
                lambda r: r.set(self.lease_key(self.name), self.creation, px=self.lease_ms, nx=True)
            )
            if ok:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise ClusterUnavailable(
                    f"node name {self.name!r} is in use by a live node of this cluster"
                )
            await asyncio.sleep(self.lease / 10)
        del r
        await store.run(lambda r: r.hset(store.key("nodes"), self.name, self.creation))
        await self.poll()
        return self.creation

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop renewing and give the lease back, so others see us down at once."""
        self._closing = True
        await stop_tasks(self._task)
        if self.store.up:
            try:
                store = self.store
                await store.run(
                    lambda r: r.eval(
                        "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                        "redis.call('DEL', KEYS[1]) end return 1",
                        1,
                        self.lease_key(self.name),
                        self.creation,
                    )
                )
            except Exception:
                pass

    async def _run(self) -> None:
        interval = self.lease / 3
        while not self._closing:
            await asyncio.sleep(interval)
            if not self.store.up:
                continue
            try:
                await self.step()
            except ClusterUnavailable:
                continue
            except Exception:
                log.exception("membership step failed")

    async def step(self) -> None:
        """Renew our lease, then poll the others (one step at a time)."""
        async with self._step_lock:
            await self._step()

    async def _step(self) -> None:
        store = self.store
        result = _text(
            await store.script(
                "renew",
                [self.lease_key(self.name), store.key("epoch")],
                [self.creation, self.lease_ms, self.epoch],
            )
        )
        self.renewals += 1
        if result == "epoch":
            await self.cluster.recover_lost_data()
        elif result == "lost":
            await self.cluster.fence()
        await self.poll()

    async def poll(self) -> None:
        """Refresh the live-node list and report changes."""
        store = self.store
        nodes = await store.run(lambda r: r.hgetall(store.key("nodes")))
        names = [_text(n) or "" for n in nodes]
        keys = [self.lease_key(n) for n in names]
        leases = await store.run(lambda r: r.mget(keys)) if names else []
        live: dict[str, int] = {}
        for name, registered, lease in zip(names, nodes.values(), leases, strict=True):
            if lease is not None and _text(lease) == _text(registered):
                live[name] = int(_text(lease) or 0)
        old = self.live
        if await store.run(lambda r: r.exists(store.key("grace"))):
            # after a data loss the others re-register at their next renewal: until the
            # grace period ends, a node that was live is not declared down (nor purged)
            for name, creation in old.items():
                if name not in live:
                    live[name] = creation
        self.live = live
        for name, creation in old.items():
            if live.get(name) != creation and name != self.name:
                await self.cluster.node_down(name, creation)
        for name, creation in live.items():
            if old.get(name) != creation and name != self.name:
                self.cluster.node_up(name, creation)
        for name, registered in zip(names, nodes.values(), strict=True):
            if name not in live and name != self.name:
                # a dead incarnation nobody has cleaned yet (e.g. down before we joined)
                self.cluster.start_purge(
                    name, int(_text(registered) or 0), partial(self._forget, name, registered)
                )

    async def _forget(self, name: str, creation: Any) -> None:
        """Remove a dead incarnation from ``nodes`` (only if still that one)."""
        store = self.store

        async def run(r: Any) -> Any:
            return await r.eval(
                "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
                "redis.call('HDEL', KEYS[1], ARGV[1]) end return 1",
                1,
                store.key("nodes"),
                name,
                creation,
            )

        await store.run(run)

    async def rejoin(self) -> None:
        """Take a new creation and lease (after being fenced)."""
        store = self.store
        self.creation = int(await store.run(lambda r: r.incr(store.key("creation"))))
        self.cluster.adopt_creation(self.creation)  # new pids carry it from now on
        await store.run(lambda r: r.set(self.lease_key(self.name), self.creation, px=self.lease_ms))
        await store.run(lambda r: r.hset(store.key("nodes"), self.name, self.creation))

    async def reestablish(self, grace: float) -> None:
        """After a data loss: a new epoch (with a grace period for new claims), the
        creation counter no lower than ours, our lease and our entry in ``nodes``."""
        store = self.store
        token = secrets.token_hex(8)
        await store.run(lambda r: r.set(store.key("epoch"), token, nx=True))
        if await store.run(lambda r: r.get(store.key("epoch"))) == token.encode():
            await store.run(
                lambda r: r.set(store.key("grace"), 1, px=max(1, int(grace * 1000)), nx=True)
            )
        self.epoch = _text(await store.run(lambda r: r.get(store.key("epoch")))) or token
        await store.run(
            lambda r: r.eval(
                "local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
                "if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 1",
                1,
                store.key("creation"),
                self.creation,
            )
        )
        await store.run(lambda r: r.set(self.lease_key(self.name), self.creation, px=self.lease_ms))
        await store.run(lambda r: r.hset(store.key("nodes"), self.name, self.creation))
