"""Recovery of one node's registry entries in the store: after the store lost its
data, after a reconnect, and on rejoining the cluster after a fence.

- `reregister` claims again every local registration and group membership; a key
  now held by another live process is a conflict, which `Cluster.conflict` decides,
  and whose invalidation is then published (`publish_invalidations`): while the store
  had no entry for our process, other nodes may have been handed it and cached it,
  and its release, finding the entry naming the winner, publishes nothing.
- `reconcile` (after a reconnect) first releases the store entries of ours that the
  local view no longer has (their processes ended while the store was unreachable),
  then re-registers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..pid import Pid
from ..process import _Proc
from .claims import CLAIM_BATCH, CLAIM_CALLS
from .codec import as_text, canon, pid_from_str, pid_str, uncanon
from .groups import SEP

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["publish_invalidations", "reconcile", "reregister"]

INVAL_BATCH = 500  # keys per invalidation message (as `scripts.RELEASE` publishes)


async def reregister(backend: RedisBackend, mode: str) -> int:
    """Claim again (`mode`: "resync" or "new") every registration of `backend`'s
    local view whose process is alive, and every group membership. Returns how many
    conflicts there were."""
    runtime = backend.runtime
    local = backend.local
    entries = [(t, k, p) for t, k, p in backend.local_entries() if runtime.alive(p.pid)]

    async def one(table: str, key: Hashable, proc: _Proc) -> Pid | None:
        meta = local.meta(key, table)
        return await backend.claim(key, table, proc.pid, meta, mode=mode)

    # concurrently, so that the claims go in batches (one script call per loop
    # turn), a bounded number at a time: a million at once would stall the event
    # loop for seconds (creating the tasks) and the node would miss its renewals
    holders: list[Pid | None] = []
    step = CLAIM_BATCH * CLAIM_CALLS
    for start in range(0, len(entries), step):
        holders += await asyncio.gather(
            *(one(t, k, p) for t, k, p in entries[start : start + step])
        )
    conflicts = 0
    lost: list[str] = []
    try:
        for (table, key, proc), holder in zip(entries, holders, strict=True):
            if holder is not None and holder != proc.pid:
                conflicts += 1
                backend.conflicts += 1
                lost.append(f"{backend.tkey(table)[1]}\n{canon(key)}")
                await backend.cluster.conflict(table, key, proc, holder)
            elif not runtime.alive(proc.pid):  # ended while we claimed: give it back
                backend.releases.queue(table, key, proc.pid, False)
    finally:
        backend.unpublished += lost
    await publish_invalidations(backend)
    # members recorded again: the group's watchers are told, as of a join, since a
    # watcher may have loaded its view (after the store lost them) before this
    # (`groupview`); the watchers read after a group's last add know every one of them
    groups = backend.groups_
    again: dict[str, list[Pid]] = {}
    watchers: dict[str, list[str]] = {}
    for group, pid, _ in local.memberships():
        cgroup = canon(group)
        watchers[cgroup] = (await groups.record(group, pid))[0]
        again.setdefault(cgroup, []).append(pid)
    for cgroup, pids in again.items():
        groups.notify(cgroup, watchers[cgroup], pids, [])
    return conflicts


async def reconcile(backend: RedisBackend) -> int:
    """After a reconnect: release the store entries of `backend`'s node that its
    local view no longer has, and claim again the ones the store lost (`reregister`).
    Returns how many conflicts there were."""
    store = backend.store
    owned = await store.run(lambda r: r.smembers(backend.owned()))
    mine = {(canon(t), canon(k)) for t, k, _ in backend.local_entries()}
    joined = {(canon(g), pid_str(pid)) for g, pid, _ in backend.local.memberships()}
    me = backend.node.name
    for i, raw in enumerate(owned):
        if i % 2048 == 2047:
            await asyncio.sleep(0)  # a large owned set: let renewals run
        kind, ckey, field = as_text(raw).split(SEP, 2)
        try:
            name, item = uncanon(ckey), uncanon(field) if kind == "t" else field
        except ValueError:
            continue
        if kind == "g" and (ckey, field) not in joined:
            # left (or ended) while the store was unreachable
            backend.releases.queue("", name, pid_from_str(field), True)
        elif kind == "t" and (ckey, field) not in mine and isinstance(name, str):
            cur = await backend.fetch(item, name)
            ours = cur is not None and cur[0][0] == me
            if cur is not None and ours and not backend.runtime.exists(cur[0]):
                backend.releases.queue(name, item, cur[0], False)
    await backend.releases.flush()
    return await reregister(backend, "resync")


async def publish_invalidations(backend: RedisBackend) -> None:
    """Publish the invalidations `backend.unpublished` holds (``table\\nkey``,
    canonical), `INVAL_BATCH` keys to a message, in one pipeline. If the store
    fails, they stay for the next recovery and `ClusterUnavailable` is raised."""
    pending, backend.unpublished = backend.unpublished, []
    if not pending:
        return
    store = backend.store
    channel = store.key("inval")

    async def run(r: Any) -> None:
        async with r.pipeline(transaction=False) as pipe:
            for start in range(0, len(pending), INVAL_BATCH):
                pipe.publish(channel, "\n".join(pending[start : start + INVAL_BATCH]))
            await pipe.execute()

    try:
        await store.run(run)
    except BaseException:
        backend.unpublished = pending + backend.unpublished
        raise
