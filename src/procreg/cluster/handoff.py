"""The handoff of cluster-scoped processes on a graceful node stop (`hand_off`).

Step by step (docs/INTERNALS.md, *Cluster-scoped processes*, says why each is there):

1. **Freeze.** Each local cluster-scoped server that is not in the middle of an async
   handler (and has an empty mailbox, if that comes within 50 ms) is frozen, and its
   timers cancelled: it stays alive and registered, and what is sent to it queues
   in its mailbox, unhandled. (One still busy after half the stop's timeout is left
   to the ordinary stop: it ends with ``"shutdown"`` and is restarted by failover,
   without state, once this node has left.)
2. **State.** Its ``handoff()`` hook runs (sync, in the process's name); the state is
   pickled, signed and written to ``scoped:state`` in one pipeline — only for a record
   that still names this process.
3. **End.** Its unhandled mail is taken out (what timers delivered is dropped: the
   timers end with this incarnation, and the new one arms its own), and it ends
   with reason ``"handoff"`` (``terminate`` runs; monitors get
   ``Down(..., "handoff")``; its supervisor, the node being stopping, does not
   restart it). Step 4 waits until its exit has
   completed (after an async ``terminate`` or an async ``pi`` has unwound: only then
   is its registration dropped, though it stopped being alive before) and its
   release has reached the store. One whose exit has not completed by then is not
   handed off (its state stays in the store: failover starts it once this node has
   left).
4. **Takeover.** Per new home (the key's rendezvous home among the *other* live
   nodes; with none, the last node stops: the states stay in the store for the
   first node to join again, whose orphan scan starts them), one request with all
   its keys and their old pids: that node no longer hands those pids out (nor a
   cached holder of the key on this node), claims each key for a fresh pid (a claim
   that finds an old pid still in the store waits for its release) and, if the claim
   wins, starts it from the record with `procreg.takeover()` giving the state, and
   records the new pid (clearing the state). It answers only pids it started itself;
   a key still held by anything else is `NotTakenOver` (None in the answer). This
   node accepts only an answer on that node, never its own old pid; keys not taken
   over are asked again once (after another release flush), then given up: their
   states stay in the store and the failover after this node has left starts them.
5. **Relay.** The mail taken in step 3 goes to the new instance in its order: casts
   and messages as they were sent, calls relayed (their callers get the new
   instance's reply or error). If no new instance could be started, those callers get
   `ProcessExited(("handoff", reason))` at once, and casts are counted as lost and
   logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..errors import ClusterUnavailable, ProcregError
from ..pid import Pid
from ..scope import NO_STATE, ending, freeze, idle, is_server, quiet, take_mail
from .backend import home_node
from .codec import canon, pid_str
from .records import portable
from .relay import relay_calls
from .scoped import HandoffEvent

if TYPE_CHECKING:
    from ..process import _Proc
    from .scoped import Scoped

__all__ = ["hand_off"]

log = logging.getLogger("procreg.cluster")

# Hand the state off only if the record still names the process. KEYS: pid and state
# hashes. ARGV: field, pid string, signed state.
SET_STATE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


class _Moving:
    __slots__ = ("field", "key", "mail", "pid", "proc", "state", "table")

    def __init__(self, table: str, key: Any, pid: Pid, proc: _Proc) -> None:
        self.table = table
        self.key = key
        self.pid = pid
        self.proc = proc
        self.field = canon((table, key))
        self.state: bytes | None = None
        self.mail: list[tuple[str, Any, Any]] = []


async def hand_off(scoped: Scoped, timeout: float) -> int:
    """Hand every local cluster-scoped process off (see the module docstring);
    returns how many were started on their new homes."""
    cluster = scoped.cluster
    node = scoped.node
    me = node.name
    if not scoped.local or cluster.fencing:
        return 0
    try:
        await cluster.membership.poll()  # a node that left a moment ago is no target
    except Exception as exc:
        log.debug("membership poll before the handoff failed: %r", exc)
    # none: the last node stops; the states stay in the store, and the first node to
    # join again starts them with their states (its orphan scan)
    targets = [n for n in cluster.live_nodes() if n != me]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout / 2
    waiting: list[_Moving] = []
    for (table, key), pid in list(scoped.local.items()):
        proc = node.local_process(pid)
        if proc is not None and not ending(proc):
            waiting.append(_Moving(table, key, pid, proc))
    # 1. freeze each when it is not in a handler, with no mail if it can be had
    # soon (less to relay; a process under a steady stream is taken as is, and
    # what its timers delivered is left out of its mail: see `take_mail`)
    moving: list[_Moving] = []
    drained_by = loop.time() + min(0.05, timeout / 8)
    while waiting:
        busy = []
        for m in waiting:
            if ending(m.proc):
                continue
            ready = idle(m.proc) or (loop.time() >= drained_by and quiet(m.proc))
            if not is_server(m.proc) or ready:
                if is_server(m.proc):
                    freeze(m.proc)
                moving.append(m)
            else:
                busy.append(m)
        waiting = busy
        if not waiting or loop.time() >= deadline:
            break
        await asyncio.sleep(0.001)
    if waiting:
        log.warning(
            "%d cluster-scoped process(es) stayed busy: not handed off (failover restarts them)",
            len(waiting),
        )
    if not moving:
        return 0
    # 2. their states, then into the store
    for m in moving:
        m.state = _state_of(scoped, m)
    with_state = [m for m in moving if m.state is not None]
    if with_state:
        kp, kst = scoped.records.k("pid"), scoped.records.k("state")

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for m in with_state:
                    pipe.eval(SET_STATE, 2, kp, kst, m.field, pid_str(m.pid), m.state)
                await pipe.execute()

        try:
            await cluster.store.run(write)
        except ClusterUnavailable as exc:
            log.error("could not hand off the state of cluster-scoped processes: %r", exc)
    # 3. their mail out, their end, their releases in the store
    for m in moving:
        if is_server(m.proc):
            m.mail = take_mail(m.proc)
        scoped.forwarding.moved[m.pid] = []  # frames for it from now on wait for its new instance
        node.runtime.end(m.pid, "handoff")
    # gone, not just not alive: an exit completes (and the registration is dropped,
    # its release queued) only after an async terminate or handler has unwound
    runtime = node.runtime
    while any(runtime.exists(m.pid) for m in moving) and loop.time() < deadline + timeout / 4:
        await asyncio.sleep(0.001)
    stuck = [m for m in moving if runtime.exists(m.pid)]
    if stuck:
        log.error(
            "%d cluster-scoped process(es) did not finish their exit: not handed off "
            "(their states stay in the store; failover starts them)",
            len(stuck),
        )
        for m in stuck:
            _give_up(scoped, m, "its exit did not complete")
        moving = [m for m in moving if not runtime.exists(m.pid)]
        if not moving:
            return 0
    await cluster.backend.releases.flush()
    # 4. one takeover request per new home
    by_home: dict[str, list[_Moving]] = {}
    if not targets:
        for m in moving:
            lost = sum(1 for kind, _, _ in m.mail if kind != "call")
            if lost:
                log.error("%d message(s) to %r lost: no other node to take it", lost, m.key)
            relay_calls(node, None, m.mail, "no other live node", scoped.cluster.store.tasks)
        cluster.counters.event(
            "handoff", me, f"{len(moving)} cluster-scoped state(s) kept for the next node"
        )
        return 0
    for m in moving:
        by_home.setdefault(home_node(m.key, targets), []).append(m)
    answers = await _take_over_all(scoped, by_home, deadline + timeout / 4)
    moved = 0
    relays: list[Any] = []
    for group in by_home.values():
        for m in group:
            new_pid = answers.get(m.field)
            if new_pid is not None:
                moved += 1
                scoped.history.append(HandoffEvent("takeover", m.table, m.key, me, new_pid[0]))
            lost = sum(1 for kind, _, _ in m.mail if kind != "call") if new_pid is None else 0
            if lost:
                log.error("%d message(s) to %r lost: its handoff failed", lost, m.key)
            # 5. the mail it had not handled, then what came for it since, to the new
            # instance (and what comes while this node is still up)
            relays += relay_calls(
                node, new_pid, m.mail, "no new instance", scoped.cluster.store.tasks
            )
            relays += scoped.forwarding.moved_to(m.pid, new_pid)
    scoped.handed_off += moved
    cluster.counters.event(
        "handoff", me, f"{moved} of {len(moving)} cluster-scoped process(es) to {sorted(by_home)}"
    )
    if relays:
        await asyncio.wait(relays, timeout=max(0.1, deadline + timeout / 2 - loop.time()))
    return moved


def _give_up(scoped: Scoped, m: _Moving, why: str) -> None:
    """`m` is not handed off: what waited for it fails (calls) or is logged lost."""
    lost = sum(1 for kind, _, _ in m.mail if kind != "call")
    if lost:
        log.error("%d message(s) to %r lost: %s", lost, m.key, why)
    relay_calls(scoped.node, None, m.mail, why, scoped.cluster.store.tasks)
    m.mail = []
    scoped.forwarding.moved_to(m.pid, None)  # (calls kept for it fail at once: no relays)


async def _take_over_all(
    scoped: Scoped, by_home: dict[str, list[_Moving]], retry_by: float
) -> dict[str, Pid]:
    """Step 4: the new instance of each key taken over (by field). An answer that is
    not a pid on the node asked (the old pid above all) is a refusal; the refused
    keys are asked once more after another release flush, if time is left."""
    loop = asyncio.get_running_loop()
    answers: dict[str, Pid] = {}
    pending = by_home
    for attempt in range(2):
        results = await asyncio.gather(
            *(_take_over(scoped, home, group) for home, group in pending.items()),
            return_exceptions=True,
        )
        refused: dict[str, list[_Moving]] = {}
        for (home, group), result in zip(pending.items(), results, strict=True):
            if isinstance(result, BaseException):
                log.error("handing %d process(es) off to %s failed: %r", len(group), home, result)
                continue  # the node did not answer: not asked again
            for m, new in zip(group, result, strict=True):
                if isinstance(new, Pid) and new[0] == home and new != m.pid:
                    answers[m.field] = new
                else:
                    if new is not None:
                        log.error("takeover of %r by %s answered %r: refused", m.key, home, new)
                    refused.setdefault(home, []).append(m)
        if not refused or attempt or loop.time() >= retry_by:
            break
        await scoped.cluster.backend.releases.flush()
        await asyncio.sleep(0.05)
        pending = refused
    return answers


def _state_of(scoped: Scoped, m: _Moving) -> bytes | None:
    """The signed, pickled state `m`'s ``handoff()`` gives (None: no hook, or it
    failed: logged)."""
    proc: Any = m.proc
    hook = getattr(proc, "handoff", None) if is_server(proc) else None
    if hook is None:
        return None
    try:
        state = scoped.node.runtime.run_as(m.pid, hook)
        if state is NO_STATE:
            return None
        return scoped.records.sign(portable("a handed-off state", state))
    except Exception as exc:
        log.error("handoff() of %r (%r) failed, it moves without state: %r", m.pid, m.key, exc)
        return None


async def _take_over(scoped: Scoped, home: str, group: list[_Moving]) -> list[Pid | None]:
    try:
        request = (
            "takeover",
            scoped.node.name,
            [m.field for m in group],
            [pid_str(m.pid) for m in group],
        )
        result: list[Pid | None] = await scoped._request(home, request)
    except (ProcregError, TimeoutError) as exc:
        raise ClusterUnavailable(f"node {home} did not take over: {exc}") from exc
    return result
