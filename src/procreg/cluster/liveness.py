"""The transport's keeper: heartbeats on its two Redis connections, silence
detection, and re-opening lost connections with backoff (`transport.Transport`;
docs/INTERNALS.md, "Liveness of connections")."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["HEARTBEAT", "heartbeat", "keep"]

log = logging.getLogger("procreg.cluster")

HEARTBEAT = b"PRGH"  # published on our own channel to check the round trip


async def keep(t: Transport) -> None:
    """Heartbeats every `interval`; re-open lost connections, with backoff."""
    while not t._closing:
        try:
            await asyncio.wait_for(t._lost.wait(), t.interval)
        except TimeoutError:
            heartbeat(t)
            continue
        t._lost.clear()
        delay = 0.05
        while not t._closing and (t._pub is None or t._sub is None):
            try:
                await t._open()
            except Exception as exc:
                log.debug("re-opening the transport failed: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            try:
                t._send_waiting()
            except Exception:
                log.exception("sending the frames kept while re-opening failed")


def heartbeat(t: Transport) -> None:
    """Check both connections for silence, then PING the subscribed one and
    publish a heartbeat to ourselves on the publishing one."""
    now = time.monotonic()
    limit = 2 * t.interval
    probe = t._probed
    for wire in (t._sub, t._pub):
        # a heartbeat's reply was due, and nothing at all came since, for too long
        if wire is not None and not wire.closed and probe and wire.heard < probe < now - limit:
            t.silent += 1
            log.warning(
                "%s: the cluster store connection was silent for %.1f s: re-opening it",
                t.name,
                now - wire.heard,
            )
            wire.fail(TimeoutError(f"no data from the store for {now - wire.heard:.1f} s"))
    sub, pub = t._sub, t._pub
    if sub is None or pub is None or t._waiting or not t.store.up:
        return
    try:
        sub.send(("PING",))
        pub.send(("PUBLISH", t._mine, HEARTBEAT))
    except ConnectionError:
        return
    t._dests.append(t.name)
    t._beats.append(now)
    t.heartbeats += 1
    if not t._probed or (sub.heard >= t._probed and pub.heard >= t._probed):
        t._probed = now  # the oldest heartbeat still unanswered
