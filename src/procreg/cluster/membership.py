"""Membership: leases, creations, the live-node list, the local lease clock.

Joining: a node takes a fresh *creation* (``INCR creation``), then its lease
(``SET lease:<name> <creation> PX <lease> NX``), and records itself in ``nodes``. The
cluster *epoch* (a random token, ``SET epoch NX``) is read at the same time.

Every third of a lease the node runs one step:

1. **Renew** (a script, followed by ``WAIT`` when the URL asks for replicas, and
   ``INFO server`` in the same round trip): if ``epoch`` no longer holds our token,
   the store lost its data → `Cluster.recover_lost_data`. If our lease key no longer
   holds our creation, we were declared dead while the store kept its data →
   `Cluster.fence`. Otherwise the lease is extended, and so is the *local deadline*
   (below). A changed run id means another server answers: `Cluster.primary_changed`.
2. **Poll**: read ``nodes`` and every node's lease; a node is live while its lease
   holds the creation it registered. Nodes that appeared are *up*, nodes whose lease
   lapsed (or changed creation) are *down*: `Cluster.node_down` delivers noconnection
   and cleans the store of what that incarnation held.

**The local lease clock.** Redis sets our lease's expiry when it runs the renewal,
which is after we sent it; so the lease surely holds, on our own monotonic clock,
until ``sent + lease * (1 - DRIFT)`` (`DRIFT` bounds how much faster Redis's clock may
run than ours). The node fences itself `FENCE_LEAD` x lease before that moment if no
renewal has succeeded since (`deadline`, a timer, and `check` on every path that
could act for a registered process): it never acts on a lease the others may already
consider lapsed, whether Redis is unreachable, the network is cut, or a socket is
half-open. A node paused past its deadline fences itself before it runs anything else
on waking (`check`).

A lease that lapses is noticed by the others within one poll interval, so a killed
node is down everywhere within ``lease + lease/3`` (under 2 x lease) of its last renewal.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from .codec import fingerprint
from .store import NotReplicated, stop_tasks

if TYPE_CHECKING:
    from . import Cluster

__all__ = ["DRIFT", "FENCE_LEAD", "Membership"]

log = logging.getLogger("procreg.cluster")

DRIFT = 0.01  # how much faster (as a fraction) the store's clock may run than ours
FENCE_LEAD = 0.1  # fence this fraction of a lease before the local deadline


def _addresses(
    found: dict[Any, Any], live: dict[str, int], me: str
) -> dict[str, tuple[int, str, int]]:
    """``addr`` entries (``"<creation> host:port"``) of the other live incarnations."""
    out: dict[str, tuple[int, str, int]] = {}
    for raw_name, raw in found.items():
        name, text = _text(raw_name) or "", _text(raw) or ""
        creation, _, hostport = text.partition(" ")
        host, _, port = hostport.rpartition(":")
        try:
            value = (int(creation), host.strip("[]"), int(port))
        except ValueError:
            continue
        if live.get(name) == value[0] and name != me:
            out[name] = value
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Membership:
    """The node's lease, its local deadline, and its view of the live nodes."""

    def __init__(self, cluster: Cluster, name: str, lease: float) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.name = name
        self.lease = lease
        self.creation = 0
        self.epoch = ""
        self.live: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()
        self._closing = False
        self._step_lock = asyncio.Lock()
        self.renewals = 0
        self.unreplicated = 0  # renewals that reached too few replicas
        self.renew_seconds = 0.0  # round trip of the last successful renewal
        # loop time until which our lease surely holds (see the module docstring)
        self.valid_until = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_warning = 0.0
        self.joined = False  # the deadline counts from the first lease we took
        self.deadline = math.inf  # see `_set_deadline`
        # the fast check's clock: CLOCK_MONOTONIC, as the loop's (asyncio's is
        # time.monotonic; uvloop's lags it by at most one loop turn, so comparing the
        # later reading with a deadline in loop time only fences that much earlier)
        self.time: Callable[[], float] = time.monotonic

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))

    @property
    def fence_at(self) -> float:
        """Loop time at which the node fences itself unless a renewal succeeds first."""
        return self.valid_until - FENCE_LEAD * self.lease

    def _set_deadline(self) -> None:
        """`deadline`, the one figure `check`'s fast path compares with: +inf before
        the first lease, -inf while fenced, else `fence_at`."""
        if not self.joined:
            self.deadline = math.inf
        elif self.cluster.fencing or self.valid_until == 0.0:
            self.deadline = -math.inf
        else:
            self.deadline = self.fence_at

    def lease_key(self, name: str) -> str:
        return self.store.key("lease", name)

    # -- the local lease clock ----------------------------------------------------------
    def _now(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def _extend(self, sent: float) -> None:
        """A lease write sent at loop time `sent` took effect (and reached the replicas
        asked for): the lease holds until `sent` + lease, less the drift margin."""
        until = sent + self.lease * (1 - DRIFT)
        if until <= self.valid_until:
            return
        self.valid_until = until
        self._set_deadline()
        if self._watchdog is not None:
            self._watchdog.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._watchdog = loop.call_at(self.fence_at, self.check)

    def disarm(self) -> None:
        """Forget the deadline (fenced, or leaving): nothing holds until a rejoin."""
        self.valid_until = 0.0
        self._set_deadline()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def check(self) -> bool:
        """True while our lease surely holds. Past the fence point (a renewal is
        overdue: the store is unreachable, the network cut, a socket half-open, or
        the node was paused), the node fences itself now, before anything else runs,
        and this returns False; False also while fenced and not yet rejoined."""
        if self.time() < self.deadline:  # the fast path: one call, one comparison
            return True
        if self.cluster.fencing:
            return False
        if not self.joined or self._now() < self.fence_at:
            return True
        if not self._closing:
            self.cluster.fence_now(
                f"no lease renewal for {self._now() - self.valid_until + self.lease:.2f} s "
                f"(lease {self.lease} s)"
            )
        return False

    async def _write_lease(self, nx: bool) -> bool:
        """SET our lease key to our creation (PX lease; NX at join), confirmed by the
        replicas the URL asks for; extends the local deadline. False if NX found the
        name taken; `NotReplicated` if too few replicas confirmed it."""
        store = self.store
        sent = self._now()
        args = ["SET", self.lease_key(self.name), self.creation, "PX", self.lease_ms]
        if nx:
            args.append("NX")

        async def run(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.execute_command(*args)
                if store.wait:
                    pipe.execute_command("WAIT", store.wait, max(1, int(store.wait_timeout * 1000)))
                answers: list[Any] = await pipe.execute()
                return answers

        answers = await store.run(run)
        if not answers[0]:
            return False
        if store.wait and int(answers[1]) < store.wait:
            raise NotReplicated(
                f"our lease reached {int(answers[1])} of {store.wait} replica(s) "
                f"within {store.wait_timeout} s (wait= in the cluster URL)"
            )
        self._extend(sent)
        return True

    # -- joining and leaving ------------------------------------------------------------
    async def join(self) -> int:
        """Take a creation and a lease; returns the creation."""
        store = self.store
        token = secrets.token_hex(8)
        await store.run(lambda r: r.set(store.key("epoch"), token, nx=True))
        self.epoch = _text(await store.run(lambda r: r.get(store.key("epoch")))) or token
        await self._check_secret()
        # a fresh store starts the counter from the clock, so that creations stay
        # unique across store lifetimes (a data loss must not hand out old ones)
        seed = int(time.time() - 1_767_225_600)  # seconds since 2026-01-01
        await store.run(lambda r: r.set(store.key("creation"), max(seed, 0), nx=True))
        self.creation = int(await store.run(lambda r: r.incr(store.key("creation"))))
        deadline = self._now() + self.lease * 1.5
        while not await self._write_lease(nx=True):
            if self._now() > deadline:
                raise ClusterUnavailable(
                    f"node name {self.name!r} is in use by a live node of this cluster"
                )
            await asyncio.sleep(self.lease / 10)
        self.joined = True
        self._set_deadline()
        await self._publish_address()
        await store.run(lambda r: r.hset(store.key("nodes"), self.name, self.creation))
        await self.poll()
        return self.creation

    async def _publish_address(self) -> None:
        """With direct connections (`direct`): ``HSET addr <name> "<creation>
        host:port"``, before our entry in ``nodes`` (a peer that sees us live finds
        it; one that finds another creation there does not connect)."""
        direct = self.cluster.direct
        if direct is None or direct.address is None:
            return
        store = self.store
        host, port = direct.address
        value = f"{self.creation} {host}:{port}"
        await store.run(lambda r: r.hset(store.key("addr"), self.name, value))

    async def _check_secret(self) -> None:
        """Refuse to join a cluster whose nodes use another secret: their frames and
        ours would be dropped both ways (bad signatures) and every call would time
        out. Compares `codec.fingerprint`s, never the secret."""
        store = self.store
        mine = fingerprint(self.cluster.key)
        await store.run(lambda r: r.set(store.key("fingerprint"), mine, nx=True))
        theirs = _text(await store.run(lambda r: r.get(store.key("fingerprint"))))
        if theirs is not None and theirs != mine:
            raise ClusterUnavailable(
                f"node {self.name!r} has another cluster secret than the nodes already in "
                f"this cluster (secret fingerprint {mine}, the cluster's is {theirs}): give "
                "every node the same secret, e.g. the same PROCREG_SECRET environment "
                "variable or Node(secret=...); by default each machine (or container) "
                "makes its own ~/.procreg.secret"
            )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop renewing and give the lease back, so others see us down at once."""
        self._closing = True
        await stop_tasks(self._task, self._poll_task)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.store.up and not self.cluster.fencing:
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
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._closing:
            due = max(due + interval, loop.time())  # a slow step does not delay the next
            await asyncio.sleep(due - loop.time())
            if not self.store.up:
                continue  # the store reconnects, then re-syncs (which runs a step)
            try:
                await self.step()
            except ClusterUnavailable as exc:
                self._warn(f"lease renewal failed: {exc}")
            except Exception:
                log.exception("membership step failed")

    def _warn(self, text: str) -> None:
        now = self._now()
        if now - self._last_warning >= 1.0:
            self._last_warning = now
            log.warning("%s: %s", self.name, text)

    async def step(self) -> None:
        """Renew our lease (or rejoin, if fenced), then poll the others (one step at
        a time)."""
        async with self._step_lock:
            await self._step()

    async def _step(self) -> None:
        cluster = self.cluster
        if cluster.fencing:
            await cluster.rejoin()
            return
        store = self.store
        sent = self._now()
        result, acked, run_id = await store.durable_script(
            "renew",
            [self.lease_key(self.name), store.key("epoch")],
            [self.creation, self.lease_ms, self.epoch],
            info=True,
        )
        status = _text(result)
        self.renewals += 1
        if status == "epoch":
            await cluster.recover_lost_data()
        elif status == "lost":
            await cluster.fence("our lease was gone from the store: the cluster declared us dead")
            return
        elif acked < store.wait:
            self.unreplicated += 1
            self._warn(
                f"a lease renewal reached {acked} of {store.wait} replica(s): the local "
                "lease deadline is not extended"
            )
        else:
            self._extend(sent)
            self.renew_seconds = self._now() - sent
            cluster.counters.renewed(self.renew_seconds)  # (metrics)
        if run_id and store.note_run_id(run_id):
            await cluster.primary_changed()  # (quick: the re-registering is a task)
        self._start_poll()

    def _start_poll(self) -> None:
        """Poll in a task of its own: the next renewal must not wait for the poll's
        three round trips (with 100 ms of latency, renewals spaced by a whole step
        drifted past the fence point)."""
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_quietly())

    async def _poll_quietly(self) -> None:
        try:
            await self.poll()
        except ClusterUnavailable as exc:
            self._warn(f"membership poll failed: {exc}")
        except Exception:
            log.exception("membership poll failed")

    async def poll(self) -> None:
        """Refresh the live-node list and report changes (one poll at a time)."""
        async with self._poll_lock:
            await self._poll()

    async def _poll(self) -> None:
        store = self.store
        nodes = await store.run(lambda r: r.hgetall(store.key("nodes")))
        names = [_text(n) or "" for n in nodes]
        keys = [self.lease_key(n) for n in names]
        leases = await store.run(lambda r: r.mget(keys)) if names else []
        live: dict[str, int] = {}
        for name, registered, lease in zip(names, nodes.values(), leases, strict=True):
            if lease is not None and _text(lease) == _text(registered):
                live[name] = int(_text(lease) or 0)
        direct = self.cluster.direct
        if direct is not None:
            found = await store.run(lambda r: r.hgetall(store.key("addr")))
            direct.addresses = _addresses(found, live, self.name)
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
        # per-name state of nodes that are down and gone from ``nodes`` (their lease
        # lapsed, their entries purged) must not pile up over the node names seen
        self.cluster.prune(set(names) | set(live))

    async def _forget(self, name: str, creation: Any) -> None:
        """Remove a dead incarnation from ``nodes`` (only if still that one)."""
        store = self.store

        async def run(r: Any) -> Any:
            return await r.eval(
                "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
                "redis.call('HDEL', KEYS[1], ARGV[1]) end "
                "local a = redis.call('HGET', KEYS[2], ARGV[1]) "
                "if a and string.sub(a, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then "
                "redis.call('HDEL', KEYS[2], ARGV[1]) end return 1",
                2,
                store.key("nodes"),
                store.key("addr"),
                name,
                creation,
            )

        await store.run(run)

    async def rejoin(self) -> None:
        """Take a new creation and lease (after being fenced). If the store lost its
        data meanwhile, the epoch is restored first (with a grace period) and the
        creation counter raised to at least ours, so the new creation is unique."""
        store = self.store
        epoch = _text(await store.run(lambda r: r.get(store.key("epoch"))))
        if epoch != self.epoch:
            if epoch is None:
                await self._restore_epoch(self.cluster.grace)
            else:
                self.epoch = epoch
        self.creation = int(await store.run(lambda r: r.incr(store.key("creation"))))
        self.cluster.adopt_creation(self.creation)  # new pids carry it from now on
        await self._write_lease(nx=False)
        await self._publish_address()
        await store.run(lambda r: r.hset(store.key("nodes"), self.name, self.creation))

    async def _restore_epoch(self, grace: float) -> None:
        """After a data loss: a new epoch (with a grace period for new claims, if we
        are the first to notice) and the creation counter no lower than ours."""
        store = self.store
        token = secrets.token_hex(8)
        await store.run(lambda r: r.set(store.key("epoch"), token, nx=True))
        if await store.run(lambda r: r.get(store.key("epoch"))) == token.encode():
            await store.run(
                lambda r: r.set(store.key("grace"), 1, px=max(1, int(grace * 1000)), nx=True)
            )
        self.epoch = _text(await store.run(lambda r: r.get(store.key("epoch")))) or token
        mine = fingerprint(self.cluster.key)
        await store.run(lambda r: r.set(store.key("fingerprint"), mine, nx=True))
        await store.run(
            lambda r: r.eval(
                "local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
                "if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 1",
                1,
                store.key("creation"),
                self.creation,
            )
        )

    async def reestablish(self, grace: float) -> None:
        """After a data loss: the epoch restored (`_restore_epoch`), our lease and our
        entry in ``nodes`` written again."""
        store = self.store
        await self._restore_epoch(grace)
        try:
            await self._write_lease(nx=False)
            await self._publish_address()
            await store.run(lambda r: r.hset(store.key("nodes"), self.name, self.creation))
        except BaseException:
            # not re-established: forget the epoch we adopted, so that the next renewal
            # answers "epoch" and recovers again (with it, a renewal that found our
            # lease still missing answered "lost", and the node fenced itself)
            self.epoch = ""
            raise
