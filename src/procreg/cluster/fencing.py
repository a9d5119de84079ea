"""The cluster's failure handling: fencing (our lease may have lapsed), rejoining
with a new creation, a failover of the store's primary, a store that lost its data,
registry conflicts, and the resync after a reconnect. docs/INTERNALS.md has the
protocol step by step.

These are `Cluster`'s methods, written here as functions taking the cluster first and
bound in its class body (``fence = fencing.fence``), as the kernel's are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable
from ..pid import Pid
from ..process import _Proc

if TYPE_CHECKING:
    from . import Cluster

__all__ = [
    "conflict",
    "fence",
    "fence_now",
    "primary_changed",
    "recover",
    "recover_lost_data",
    "rejoin",
    "resync",
    "start_recovery",
    "step_quietly",
]

log = logging.getLogger("procreg.cluster")


def fence_now(cluster: Cluster, why: str) -> None:
    """Fence this node now (synchronously): its lease may have lapsed, or has
    (`why`). Its registered processes and group members end with reason
    ``"fenced"`` (the others may start their keys elsewhere once the lease has
    expired in the store), every peer is treated as down (our links and monitors
    get ``noconnection``), the lookup cache is dropped, and until `rejoin` is done
    nothing is claimed or handed out: `whereis` answers None, claims raise
    `ClusterUnavailable`. The rejoin runs at the next membership step that
    reaches the store."""
    if cluster.fencing:
        return
    cluster.fencing = True  # no claims, no lookups until we have rejoined
    cluster.fenced += 1
    cluster.membership.disarm()  # (its fast check now fails)
    node = cluster.node
    log.error(
        "node %s fences itself: %s",
        node.name,
        why,
        extra={"procreg_node": node.name, "procreg_creation": cluster.creation},
    )
    cluster.counters.event("fence", node.name, why)
    # its registered processes and group members: others may serve them soon
    procs: list[_Proc] = [p for _, _, p in cluster.backend.local_entries()]
    procs += cluster.backend.local_members()
    try:
        for proc in {id(p): p for p in procs}.values():
            try:
                node.runtime.end(proc.pid, "fenced")
            except Exception:
                log.exception("ending %r while fencing failed", proc.pid)
    finally:
        if cluster.direct is not None:  # refused until we have rejoined
            cluster.direct.close_all()
        cluster.remote.all_down()
        cluster.backend.clear_cache()
    rejoining = cluster._rejoining is not None and not cluster._rejoining.done()
    if cluster.store.up and not cluster.membership._closing and not rejoining:
        # rejoin promptly (the membership step takes its lock; it rejoins)
        cluster._rejoining = asyncio.get_running_loop().create_task(cluster._step_quietly())


async def step_quietly(cluster: Cluster) -> None:
    try:
        await cluster.membership.step()
    except ClusterUnavailable as exc:
        log.debug("rejoining failed for now: %r", exc)
    except Exception:
        log.exception("rejoining failed")


async def fence(cluster: Cluster, why: str) -> None:
    """We were declared dead (or must act as if): `fence_now`, then rejoin."""
    cluster.fence_now(why)
    await cluster.rejoin()


async def rejoin(cluster: Cluster) -> None:
    """After a fence: a new creation and lease; the old incarnation's entries are
    purged (the others do it too); fencing ends."""
    if not cluster.fencing:
        return
    old = cluster.membership.creation
    # frames sent to us once the others see our new creation must reach us
    await cluster.transport.wait_subscribed(timeout=cluster.lease / 3)
    await cluster.membership.rejoin()
    cluster.fencing = False
    cluster.membership._set_deadline()
    log.warning(
        "node %s rejoined the cluster: creation %d -> %d",
        cluster.node.name,
        old,
        cluster.creation,
        extra={"procreg_node": cluster.node.name, "procreg_creation": cluster.creation},
    )
    cluster.counters.event("rejoin", cluster.node.name, f"creation {old} -> {cluster.creation}")
    cluster.start_purge(cluster.node.name, old)
    await cluster.membership.poll()
    cluster._set_live(cluster.membership.live)
    cluster.backend.keywatch.recheck()  # our watches were the old incarnation's
    cluster.scoped.kick()  # our old incarnation's cluster-scoped processes are orphans


async def primary_changed(cluster: Cluster) -> None:
    """Another server answers as the primary (a failover or a restart): writes the
    old one acknowledged may be missing (asynchronous replication). Logged as a
    possible partial data loss; new claims wait out a grace period while every
    node re-registers what it holds and releases what it no longer holds."""
    changed = cluster.store.changed_primary
    cluster.store.changed_primary = None
    if changed is None:
        return
    cluster.failovers += 1
    log.error(
        "the cluster store's primary changed (run id %s -> %s): recent writes may be "
        "lost; re-registering under a grace period of %.1f s",
        changed[0][:8],
        changed[1][:8],
        cluster.grace,
        extra={"procreg_node": cluster.node.name},
    )
    cluster.counters.event(
        "failover", cluster.node.name, f"primary run id {changed[0][:8]} -> {changed[1][:8]}"
    )
    store = cluster.store
    await store.run(
        lambda r: r.set(store.key("grace"), 1, px=max(1, int(cluster.grace * 1000)), nx=True)
    )
    cluster.backend.clear_cache()
    cluster.backend.keywatch.recheck()  # (it waits out the grace period)
    # our transport connections may still reach the old primary (a replica now)
    cluster.transport.reopen("the store's primary changed")
    cluster._start_recovery()


def start_recovery(cluster: Cluster) -> None:
    """Re-register what we hold, in a task of its own (a million keys take
    seconds, and the membership step that asked must go on renewing our lease).
    A request made while one runs is not dropped: the task goes round again."""
    cluster._recover_again = True
    if cluster._recovery is None or cluster._recovery.done():
        cluster._recovery = asyncio.get_running_loop().create_task(cluster._recover())


async def recover(cluster: Cluster) -> None:
    while cluster._recover_again and not cluster.membership._closing:
        cluster._recover_again = False
        try:
            conflicts = await cluster.backend.reconcile()
        except ClusterUnavailable as exc:
            log.warning("re-registering failed (%s): trying again", exc)
            cluster._recover_again = True
            await asyncio.sleep(cluster.lease / 3)
            continue
        except Exception:
            log.exception("re-registering failed")
            return
        if conflicts:
            log.warning("%d registry conflicts while re-registering", conflicts)
        log.info(
            "node %s re-registered its keys and groups (%d conflict(s))",
            cluster.node.name,
            conflicts,
            extra={"procreg_node": cluster.node.name},
        )


async def recover_lost_data(cluster: Cluster) -> None:
    """The store lost its data: new epoch with a grace period, our lease back, then
    (in a task of its own, so that lease renewals go on meanwhile) every live local
    key and membership registered again. Links and monitors across nodes get
    ``noconnection`` on every node alike: frames may have been lost."""
    cluster.recoveries += 1
    log.error(
        "the cluster store lost its data: re-registering (grace %.1f s)",
        cluster.grace,
        extra={"procreg_node": cluster.node.name},
    )
    cluster.counters.event("recovery", cluster.node.name, "the store lost its data")
    await cluster.membership.reestablish(cluster.grace)
    # creations handed out from now on may be below those `prune` forgot
    cluster.transport.pruned_floor = 0
    cluster.remote.pruned_floor = -1
    cluster.remote.all_down()
    cluster.backend.clear_cache()
    cluster.backend.keywatch.recheck()  # (it waits out the grace period)
    cluster._start_recovery()


async def conflict(cluster: Cluster, table: str, key: Any, ours: _Proc, theirs: Pid) -> None:
    """Two live processes claim `key`: by default the registered one (`theirs`)
    stays and ours ends with reason ``"conflict"``; `on_conflict(table, key,
    ours_pid, theirs_pid)` may decide otherwise by ending one itself, before it
    returns: `recovery.reregister` then publishes the key's invalidation (ours may
    have been handed out, and cached, while the store had no entry for it)."""
    if cluster.on_conflict is not None:
        result = cluster.on_conflict(table, key, ours.pid, theirs)
        if asyncio.iscoroutine(result):
            await result
        return
    log.warning("conflict on %r in %r: keeping %r, ending %r", key, table, theirs, ours.pid)
    cluster.node.runtime.end(ours.pid, "conflict")


async def resync(cluster: Cluster) -> None:
    """Back in touch with the store: check the epoch and our lease (or rejoin, if
    we fenced ourselves meanwhile), reconcile. Frames were dropped meanwhile (ours
    and maybe others'), so links and monitors across nodes end with
    ``noconnection``, as after a network partition."""
    peers = cluster.remote.all_down()
    # every live peer, not only those we had links, monitors or calls with: one may
    # wait for a reply we lost (an incoming call leaves no record here) or watch a
    # group whose update we lost; plus those owed one (`Cluster._direct_lost`)
    me = cluster.node.name
    peers += [p for p in (*cluster.live_nodes(), *cluster.owed_resets) if p not in peers]
    peers = [p for p in peers if p != me]
    cluster.owed_resets.clear()
    cluster.backend.clear_cache()  # invalidations may have been missed
    # the peers may never have seen the frames we lost: tell them we ended our side,
    # now, in the same callback that marked the store up: a frame made during the
    # step's round trips (it would go on a direct connection still up, or on pub/sub)
    # must not reach them before the RESET that accounts for the gap before it
    cluster.remote.reset(peers)
    await cluster.membership.step()
    if cluster.fencing:  # the rejoin failed: the next step tries again
        raise ClusterUnavailable("rejoining the cluster failed")
    if cluster.store.changed_primary is not None:
        await cluster.primary_changed()  # (it reconciles)
    else:
        await cluster.backend.reconcile()
    cluster.backend.keywatch.recheck()  # key events may have been missed
