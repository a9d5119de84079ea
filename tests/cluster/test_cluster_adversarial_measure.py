"""Adversarial measurements (break-10): partitions of 6 s and 20 s with a 1 s lease,
blackhole and reset, through `test_cluster_partitions.partition` (which asserts the
invariant and prints a MEASURED line). Slow: run on demand."""

from __future__ import annotations

import pytest

from .test_cluster_partitions import partition, proxy  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(200)


@pytest.mark.parametrize("seconds", [6.0, 20.0])
@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_long_partition(cluster, redis, proxy, tmp_path, fault, seconds):  # noqa: F811
    partition(cluster, proxy, redis, tmp_path, fault, seconds=seconds)


# -- latency around the fence margin (lease 1 s: socket timeout 1/3 s, fence margin
#    0.11 s, renewals every 1/3 s) ---------------------------------------------------

import json  # noqa: E402
import time  # noqa: E402

from .harness import wait_for  # noqa: E402
from .test_cluster_partitions import LEASE, TABLE, overlaps, traces  # noqa: E402


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.15, 0.2, 0.3])
def test_latency_sweep(cluster, redis, proxy, tmp_path, delay):  # noqa: F811
    """`delay` s added to every chunk a's connections carry (each way): for 4 s, a
    and b keep get_or_spawning 20 keys each (a's with Tracked, traced); what fails,
    whether a fences, and whether any key ever had two live processes."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    (b,) = cluster(["b"], lease=LEASE, trace_dir=trace_dir)
    (a,) = cluster(["a"], lease=LEASE, trace_dir=trace_dir, url=proxy.url())
    server = b.ok("spawn", factory="Echo")
    keys = [f"lat{i}" for i in range(20)]
    proxy.delay(delay)
    t0 = time.time()
    outcomes: dict[str, int] = {}
    calls: dict[str, int] = {}
    rounds = 0
    while time.time() - t0 < 4.0:
        rounds += 1
        for node in (a, b):
            ans = node.req("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True,
                           wait=20)
            if not ans.get("ok"):
                outcomes[ans.get("error", "?")] = outcomes.get(ans.get("error", "?"), 0) + 1
                continue
            for err, n in ans["result"]["errors"].items():
                outcomes[err] = outcomes.get(err, 0) + n
            outcomes["ok"] = outcomes.get("ok", 0) + sum(
                1 for p in ans["result"]["pids"] if p is not None
            )
        ans = a.req("call", pid=server, request=["echo", 1], timeout=2.0, wait=20)
        key = "ok" if ans.get("ok") else ans.get("error", "?")
        calls[key] = calls.get(key, 0) + 1
    stats = a.ok("stats")
    proxy.heal()
    wait_for(lambda: not a.ok("stats")["fencing"], 10, what="a to rejoin")
    found = overlaps(traces(trace_dir), time.time())
    report = {
        "delay": delay,
        "rounds": rounds,
        "gos outcomes": outcomes,
        "a->b calls": calls,
        "a fenced": stats["fenced"],
        "a silent reopen": stats["silent"],
        "a renewals": stats["renewals"],
        "largest overlap (s)": round(max(found, default=-1.0), 3),
    }
    print("MEASURED latency:", json.dumps(report))
    assert max(found, default=-1.0) < 0, report
