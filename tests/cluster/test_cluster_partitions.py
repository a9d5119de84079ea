"""Network faults between a node and the store, through the suite's own TCP proxy
(`procreg.testing.FaultProxy`): partitions (blackhole: sockets open and silent;
reset: RST and refused), half-open connections (frozen while new ones pass), latency.

**The bound** (docs/INTERNALS.md, "The local lease clock"): a node cut off from the
store fences itself at ``last renewal sent + lease * (1 - DRIFT) - FENCE_LEAD * lease``
on its own clock, while the other nodes can claim its keys only once its lease key
has expired in the store, no earlier than ``last renewal sent + lease`` — so a key
is never served by two live processes at once: the cut-off node's process ends
*before* any other node's process for the key starts, in wall-clock time. The tests
check exactly that from the trace files (every `servers.Tracked` process records its
start and end with `time.time()`), and print the gap they measured.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from .harness import NodeProc, cluster_state, wait_back, wait_for

pytestmark = pytest.mark.timeout(120)

LEASE = 1.0
TABLE = "part"
N_KEYS = 20


def traces(trace_dir: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    """pid -> {key, start, end, reason} from the trace files."""
    procs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in trace_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                t, key, pid, event, detail = json.loads(line)
                entry = procs.setdefault(tuple(pid), {"key": key, "start": None, "end": None})
                if event == "start":
                    entry["start"] = t
                else:
                    entry["end"], entry["reason"] = t, detail
    return procs


def overlaps(procs: dict[tuple[Any, ...], dict[str, Any]], end_of_test: float) -> list[float]:
    """For each pair of processes of one key that followed each other, how long both
    were alive (negative: the gap between the first's end and the second's start)."""
    by_key: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for entry in procs.values():
        by_key[entry["key"]].append((entry["start"], entry["end"] or end_of_test))
    found = []
    for spans in by_key.values():
        spans.sort()
        for (_, e1), (s2, _) in pairwise(spans):
            found.append(e1 - s2)
    return found


def rejoined(nodes: list[NodeProc], timeout: float = 15.0) -> None:
    def done() -> bool:
        stats = [n.ok("stats") for n in nodes]
        creations = {s["name"]: s["creation"] for s in stats}
        return all(not s["fencing"] and s["live"] == creations for s in stats)

    wait_back(done, nodes, None, timeout, "every node rejoined")


def partition(cluster, proxy, redis, tmp_path, fault: str, seconds: float) -> dict[str, Any]:
    """Node a reaches the store through the proxy, node b directly. a holds keys; a
    is cut off for `seconds`; b takes the keys over; a rejoins after the heal."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    (b,) = cluster(["b"], lease=LEASE, trace_dir=trace_dir)
    (a,) = cluster(["a"], lease=LEASE, trace_dir=trace_dir, url=proxy.url())
    keys = [f"k{i}" for i in range(N_KEYS)]
    held = a.ok("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True)
    assert held["errors"] == {}, held
    assert b.ok("whereis_many", keys=keys, table=TABLE) == held["pids"]  # cached on b
    creation = a.ok("ping")["creation"]

    cut = time.time()
    getattr(proxy, fault)()
    # a fences itself: it hands nothing out, and claims nothing
    wait_for(lambda: a.ok("stats")["fencing"], 2 * LEASE, what="a to fence itself")
    fenced_after = time.time() - cut
    assert a.ok("whereis_many", keys=keys, table=TABLE) == [None] * N_KEYS
    answer = a.req("gos", key="k0", factory="Tracked", args=["k0"], table=TABLE)
    assert answer["error"] == "ClusterUnavailable", answer
    assert not any(a.ok("alive_many", pids=held["pids"]))
    # b takes every key over once a's lease has expired in the store
    took = wait_for(
        lambda: (
            (r := b.ok("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True))["pids"]
            and all(p is not None and p[0] == "b" for p in r["pids"])
            and r
        ),
        4 * LEASE,
        interval=0.05,
        what="b to take the keys over",
        explain=lambda: cluster_state([a, b]),
    )
    taken_after = time.time() - cut
    remaining = seconds - (time.time() - cut)
    if remaining > 0:
        time.sleep(remaining)
    proxy.heal()
    healed = time.time()
    rejoined([a, b])
    rejoin_after = time.time() - healed
    assert a.ok("ping")["creation"] != creation
    # after the heal every node agrees, and hands out b's live processes
    wait_for(
        lambda: a.ok("whereis_many", keys=keys, table=TABLE) == took["pids"],
        5,
        what="a to see b's processes",
    )
    events = [e for e in b.ok("node_events") if e["node"] == "a" and e["kind"] == "down"]
    assert events, "b never saw a down"
    end_of_test = time.time()
    procs = traces(trace_dir)
    olds = [e for p, e in procs.items() if p[0] == "a"]
    news = [e for p, e in procs.items() if p[0] == "b"]
    assert len(olds) == N_KEYS and len(news) == N_KEYS
    assert {e["reason"] for e in olds} == {"fenced"}
    found = overlaps(procs, end_of_test)
    report = {
        "fault": fault,
        "seconds": seconds,
        "a fenced itself after (s)": round(fenced_after, 3),
        "b saw a down after (s)": round(events[0]["t"] - cut, 3),
        "b took the keys over after (s)": round(taken_after, 3),
        "last of a's processes ended after (s)": round(max(e["end"] for e in olds) - cut, 3),
        "first of b's processes started after (s)": round(min(e["start"] for e in news) - cut, 3),
        "largest overlap (s, negative = gap)": round(max(found), 3),
        "a rejoined after the heal (s)": round(rejoin_after, 3),
    }
    print("MEASURED partition:", json.dumps(report))
    # the invariant: a's process for a key ended before b's started, in wall-clock time
    assert max(found) < 0, report
    # and a's processes ended before b even saw a's lease expire
    assert max(e["end"] for e in olds) < events[0]["t"], report
    return report


@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_a_partitioned_node_fences_itself_before_its_keys_move(
    cluster, redis, proxy, tmp_path, fault
):
    """A node cut off from the store for several leases, by silence or by resets:
    no key is ever served by two live processes; it rejoins after the heal."""
    partition(cluster, proxy, redis, tmp_path, fault, seconds=4 * LEASE)


def test_half_open_connections_are_detected_and_reopened(cluster, redis, proxy):
    """Every connection node a has is frozen (silent, never closed) while new ones
    pass: a notices within a bound tied to the lease, re-opens and re-subscribes,
    calls both ways work again, and a missed invalidation leaves no dead pid in a's
    cache."""
    (b,) = cluster(["b"], lease=LEASE)
    (a,) = cluster(["a"], lease=LEASE, url=proxy.url())
    on_a = a.ok("gos", key="on-a")["pid"]
    on_b = b.ok("gos", key="on-b")["pid"]
    gone = b.ok("gos", key="goes-away")["pid"]
    assert a.ok("whereis", key="goes-away") == gone  # cached on a
    assert a.ok("call", pid=on_b, request=["echo", 1]) == 1
    frozen = proxy.freeze()
    assert frozen >= 3  # the command pool, the publishing and the subscribed connections
    t0 = time.time()
    # while a's subscription is frozen, b ends the process: its invalidation is lost
    b.req("call", pid=gone, request=["stop"])
    assert not b.ok("alive", pid=gone)

    def both_ways() -> bool:
        one = a.send("call", pid=on_b, request=["echo", 2], timeout=0.5).wait(5)
        two = b.send("call", pid=on_a, request=["echo", 3], timeout=0.5).wait(5)
        return bool(one.get("ok") and two.get("ok"))

    wait_for(
        both_ways,
        6 * LEASE,
        interval=0.05,
        what="calls both ways after the freeze",
        explain=lambda: cluster_state([a, b], redis),
    )
    recovered = time.time() - t0
    # (with direct connections the calls may work before a notices its frozen store
    # connections at all: the dead pid leaves its cache once it has re-subscribed)
    wait_for(
        lambda: a.ok("whereis", key="goes-away") != gone,
        6 * LEASE,
        interval=0.05,
        what="the dead pid out of a's cache",
    )
    stats = a.ok("stats")
    print(
        "MEASURED half-open:",
        json.dumps(
            {
                "calls both ways again after (s)": round(recovered, 3),
                "silent connections re-opened": stats["silent"],
                "a fenced": stats["fenced"],
            }
        ),
    )
    assert stats["silent"] >= 1 or stats["store_up"]  # (noticed by the heartbeat or a timeout)


def test_a_caller_of_a_node_that_lost_frames_gets_node_down_not_a_timeout(cluster, redis, proxy):
    """b calls a process on a that holds the call; a keeps no record of b (an
    incoming call makes none). a's store connections freeze and the process answers
    now: the reply is published on the frozen connection and lost. a notices,
    re-opens and re-syncs without fencing. b must learn of the loss (a ``RESET``: its
    call fails with `NodeDown`, as an OTP call does on ``noconnection``), not wait
    out its timeout: the re-sync tells every live peer, not only those it has
    links, monitors or calls with. (On pub/sub even with ``PROCREG_TEST_DIRECT=1``: a
    reply on a direct connection is not lost when the store connections freeze.)"""
    (b,) = cluster(["b"], lease=6.0, pubsub_only=True)
    (a,) = cluster(["a"], lease=6.0, url=proxy.url(), pubsub_only=True)
    holder = a.ok("spawn", factory="Echo")
    assert b.ok("call", pid=holder, request=["echo", 1]) == 1
    held = b.send("call", pid=holder, request=["hold"], timeout=30)
    wait_for(lambda: a.ok("call", pid=holder, request=["held"]) == 1, 5, what="the call to reach a")
    proxy.freeze()
    assert a.ok("call", pid=holder, request=["release", "lost"]) == 1  # (a local call)
    wait_for(lambda: a.ok("stats")["store_failures"] >= 1, 10, what="a to notice the silence")
    answer = held.wait(40)
    assert not answer["ok"] and answer["error"] == "NodeDown", answer
    assert a.ok("stats")["fenced"] == 0  # (a fence would end it anyway: not that path)
    assert b.ok("call", pid=holder, request=["echo", 2]) == 2  # and calls work again


def test_latency_below_the_fence_margin_fences_nobody(cluster, redis, proxy):
    """50 ms added each way between a and the store (lease 2 s: renewals every
    0.67 s, fence margin 0.22 s): slower, but no fence, and the cluster works."""
    (b,) = cluster(["b"], lease=2 * LEASE)
    (a,) = cluster(["a"], lease=2 * LEASE, url=proxy.url())
    proxy.delay(0.05)
    server = b.ok("spawn", factory="Echo")
    for i in range(10):
        assert a.ok("call", pid=server, request=["echo", i]) == i
    pid = a.ok("gos", key="slow")["pid"]
    assert b.ok("whereis", key="slow") == pid
    time.sleep(6 * LEASE)
    assert a.ok("stats")["fenced"] == 0
    proxy.heal()
