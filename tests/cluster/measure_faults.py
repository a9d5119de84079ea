"""Adversarial measurements (break-10): partitions of 6 s and 20 s with a 1 s lease,
blackhole and reset, through `test_cluster_partitions.partition` (which asserts the
invariant and prints a MEASURED line). Slow: run on demand."""

from __future__ import annotations

import pytest

from .test_cluster_partitions import partition

pytestmark = pytest.mark.timeout(200)


@pytest.mark.parametrize("seconds", [6.0, 20.0])
@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_long_partition(cluster, redis, proxy, tmp_path, fault, seconds):
    partition(cluster, proxy, redis, tmp_path, fault, seconds=seconds)


# -- latency around the fence margin (lease 1 s: socket timeout 1/3 s, fence margin
#    0.11 s, renewals every 1/3 s) ---------------------------------------------------

import json  # noqa: E402
import time  # noqa: E402

from .harness import wait_for  # noqa: E402
from .test_cluster_partitions import LEASE, TABLE, overlaps, traces  # noqa: E402


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.15, 0.2, 0.3])
def test_latency_sweep(cluster, redis, proxy, tmp_path, delay):
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
            ans = node.req(
                "gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True, wait=20
            )
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


# -- SIGSTOP near the fence point, Redis SIGSTOPped --------------------------------------


@pytest.mark.parametrize("frac", [0.7, 0.8, 0.9, 0.95, 1.1])
def test_pause_near_the_fence_point(cluster, tmp_path, frac):
    """a holds 10 Tracked keys, is SIGSTOPped for `frac` x lease while b tries to take
    them over every 20 ms; after SIGCONT: did a fence, did b start any key while a's
    process for it still lived, and how long after SIGCONT did a's processes end."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    a, b = cluster(["a", "b"], lease=LEASE, trace_dir=trace_dir)
    runs = []
    for run in range(4):
        keys = [f"p{run}-{i}" for i in range(10)]
        held = a.ok("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True)
        assert held["errors"] == {}
        fenced0 = a.ok("stats")["fenced"]
        time.sleep(0.1 * run)  # a different phase against the renewals each run
        stopped = a.pause()
        took = 0
        while time.time() - stopped < frac * LEASE:
            r = b.ok("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True)
            took = max(took, sum(1 for p in r["pids"] if p and p[0] == "b"))
            time.sleep(0.02)
        resumed = a.resume()
        time.sleep(1.5 * LEASE)
        fenced = a.ok("stats")["fenced"] - fenced0
        procs = traces(trace_dir)
        ends = [e["end"] for p, e in procs.items() if p[0] == "a" and e["key"] in keys and e["end"]]
        runs.append(
            {
                "fenced": fenced,
                "b took": took,
                "a's processes ended after SIGCONT (ms)": round((max(ends) - resumed) * 1000, 1)
                if ends
                else None,
            }
        )
        for node in (a, b):
            node.ok(
                "cast_many",
                pids=[
                    p
                    for p in node.ok("entries", table=TABLE)
                    and [e[1] for e in node.ok("entries", table=TABLE)]
                ],
                msg=["stop"],
            )
        time.sleep(0.3)
    print(f"MEASURED pause {frac} x lease:", json.dumps(runs))
    for r in runs:
        if r["b took"]:
            assert r["fenced"], r


def test_redis_sigstopped(cluster, redis, tmp_path):
    """Redis SIGSTOPped for 0.5, 0.95 and 2 leases while a and b hold keys: no key has
    two live processes; how long until both can claim again."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    a, b = cluster(["a", "b"], lease=LEASE, trace_dir=trace_dir)
    out = []
    for run, length in enumerate([0.5, 0.95, 2.0]):
        keys = [f"r{run}-{i}" for i in range(10)]
        a.ok("gos_many", keys=keys[:5], factory="Tracked", table=TABLE, key_arg=True)
        b.ok("gos_many", keys=keys[5:], factory="Tracked", table=TABLE, key_arg=True)
        redis.pause()
        # both keep claiming all the keys while Redis is stopped (in flight at resume)
        pend = [
            n.send("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True)
            for n in (a, b)
        ]
        time.sleep(length)
        resumed = time.time()
        redis.resume()
        for p in pend:
            p.wait(20)

        def both_claim(k=f"after-{run}"):
            return all(n.req("gos", key=k + n.name).get("ok") for n in (a, b))

        wait_for(both_claim, 10, interval=0.05, what="claims again")
        out.append(
            {
                "stopped (s)": length,
                "claims again after (s)": round(time.time() - resumed, 3),
                "fenced": [n.ok("stats")["fenced"] for n in (a, b)],
            }
        )
    found = overlaps(traces(trace_dir), time.time())
    print(
        "MEASURED redis-sigstop:",
        json.dumps(out),
        "largest overlap",
        round(max(found, default=-1), 3),
    )
    assert max(found, default=-1) < 0


@pytest.mark.parametrize("pattern", ["short-resets", "flap-during-rejoin"])
def test_flapping_partitions(cluster, redis, proxy, tmp_path, pattern):
    """a holds 20 Tracked keys; b keeps get_or_spawning them. short-resets: 6 resets
    of 0.3 s, 0.7 s apart; flap-during-rejoin: blackhole 2 s, heal 0.05-0.3 s (a is
    rejoining), blackhole 2 s, x3. No overlap; a comes back and hands out b's pids."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    (b,) = cluster(["b"], lease=LEASE, trace_dir=trace_dir)
    (a,) = cluster(["a"], lease=LEASE, trace_dir=trace_dir, url=proxy.url())
    keys = [f"f{i}" for i in range(20)]
    assert a.ok("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True)["errors"] == {}
    import threading

    stop = threading.Event()

    def churn():
        while not stop.is_set():
            b.req("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True, wait=20)
            a.req("gos_many", keys=keys, factory="Tracked", table=TABLE, key_arg=True, wait=20)
            time.sleep(0.02)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    if pattern == "short-resets":
        for _ in range(6):
            proxy.reset()
            time.sleep(0.3)
            proxy.heal()
            time.sleep(0.7)
    else:
        for gap in (0.05, 0.15, 0.3):
            proxy.blackhole()
            time.sleep(2.0)
            proxy.heal()
            time.sleep(gap)
        proxy.blackhole()
        time.sleep(2.0)
        proxy.heal()
    stop.set()
    t.join(30)
    healed = time.time()
    wait_for(
        lambda: (
            (not (s := a.ok("stats"))["fencing"])
            and "b" in s["live"]
            and "a" in b.ok("stats")["live"]
        ),
        10,
        what="a back",
    )
    back = time.time() - healed
    views = [n.ok("whereis_many", keys=keys, table=TABLE) for n in (a, b)]
    found = overlaps(traces(trace_dir), time.time())
    stats = a.ok("stats")
    print(
        f"MEASURED flapping {pattern}:",
        json.dumps(
            {
                "a fenced": stats["fenced"],
                "a back after (s)": round(back, 3),
                "views agree": views[0] == views[1],
                "largest overlap": round(max(found, default=-1), 3),
                "processes": len(traces(trace_dir)),
            }
        ),
    )
    assert max(found, default=-1) < 0
    assert views[0] == views[1]
