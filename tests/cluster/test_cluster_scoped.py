"""Cluster-scoped processes with real node processes: the loser of a race never runs
INIT, a SIGKILLed node's cluster-scoped ``pi`` runs again on a survivor, and a
rolling restart of every node hands state off with no key ever served twice."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from .conftest import wait_mesh
from .harness import wait_for


def read_traces(trace_dir: Path) -> list[list[Any]]:
    """Every trace line of every node, in time order."""
    lines = []
    for path in trace_dir.glob("*.jsonl"):
        for raw in path.read_text().splitlines():
            if raw.strip():
                lines.append(json.loads(raw))
    return sorted(lines, key=lambda line: line[0])


def assert_never_two_live(trace_dir: Path) -> int:
    """The tracer's check: from every start and end line, no key had two live
    instances at any moment (an instance still running at the end lives on).
    Returns how many instances it saw."""
    lives: dict[Any, list[list[float]]] = {}
    open_: dict[Any, float] = {}
    seen = 0
    for t, key, pid, event, _ in read_traces(trace_dir):
        k = (key, tuple(pid))
        if event == "start":
            open_[k] = t
            seen += 1
        elif event == "end" and k in open_:
            lives.setdefault(key, []).append([open_.pop(k), t])
    for (key, _), t in open_.items():
        lives.setdefault(key, []).append([t, float("inf")])
    for key, spans in lives.items():
        spans.sort()
        for a, b in itertools.pairwise(spans):
            assert a[1] <= b[0], f"{key!r} had two live instances: {a} and {b}"
    return seen


def test_two_nodes_racing_pi_start_of_one_job_run_init_once(cluster, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    n1, n2 = cluster(["n1", "n2"], trace_dir=trace_dir)
    for round_ in range(5):
        name = f"job-{round_}"
        at = time.time() + 0.3
        a = n1.send("pi_start", name=name, at=at, scope="node")
        b = n2.send("pi_start", name=name, at=at, scope="node")
        results = [a.result(), b.result()]
        winners = [r for r in results if "pid" in r]
        losers = [r for r in results if "error" in r]
        assert len(winners) == 1 and len(losers) == 1, results
        assert losers[0]["error"][0] == "already_started"
        assert losers[0]["error"][1] == winners[0]["pid"]
    inits = [line for line in read_traces(trace_dir) if line[3] == "init"]
    by_job: dict[str, int] = {}
    for line in inits:
        by_job[line[1]] = by_job.get(line[1], 0) + 1
    assert by_job == {f"job-{i}": 1 for i in range(5)}


def test_racing_cluster_scoped_starts_run_init_once(cluster, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    n1, n2, n3 = cluster(["n1", "n2", "n3"], trace_dir=trace_dir)
    at = time.time() + 0.3
    keys = [f"k{i}" for i in range(50)]
    answers = [n.send("scoped_gos", keys=keys, placement="local", at=at) for n in (n1, n2, n3)]
    pids = [a.result() for a in answers]
    assert pids[0] == pids[1] == pids[2]
    starts = [line for line in read_traces(trace_dir) if line[3] == "start"]
    assert sorted(line[1] for line in starts) == sorted(keys)


def test_a_sigkilled_nodes_cluster_scoped_timer_runs_again_elsewhere(cluster, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    lease = 1.0
    n1, n2, n3 = cluster(["n1", "n2", "n3"], trace_dir=trace_dir, lease=lease)
    started = n1.ok(
        "pi_start", name="/timer", module="Timer", table="caching", state={"ticks": 0, "last": 0}
    )
    assert started["pid"][0] == "n1"
    wait_for(
        lambda: n2.ok("pi_send", name="/timer", table="caching", msg="get")["ticks"] >= 5,
        5.0,
        what="ticks",
    )
    killed_at = n1.kill()
    state = wait_for(
        lambda: _timer(n2),
        4 * lease + 5,
        interval=0.01,
        what="/timer to run again on a survivor",
    )
    back_at = time.time()
    assert state["node"] in ("n2", "n3")
    # a fresh instance after a failover (no state could be handed off): it ticks again
    ticks = state["ticks"]
    wait_for(lambda: (_timer(n3) or {}).get("ticks", 0) > ticks + 3, 5.0, what="ticks again")
    starts = [line for line in read_traces(trace_dir) if line[3] == "start"]
    assert [line[4] for line in starts] == [None, "failover"]
    print(f"failover of /timer (lease {lease} s): {back_at - killed_at:.3f} s after SIGKILL")
    stats = [n.ok("scoped_stats") for n in (n2, n3)]
    assert sum(s["failovers"] for s in stats) == 1
    # the observer shows it where it runs now, with its home and the failover
    view = next(n for n in (n2, n3) if n.name == state["node"]).ok("observer_scoped")
    assert [(p["key"], p["home"]) for p in view["local"]] == [("'/timer'", state["node"])]
    assert [(e["kind"], e["from"], e["to"]) for e in view["history"]] == [
        ("failover", "n1", state["node"])
    ]


def _timer(node: Any) -> Any:
    answer = node.req("pi_send", name="/timer", table="caching", msg="get", wait=5)
    return answer.get("result") if answer.get("ok") else None


def test_a_rolling_restart_keeps_every_cluster_scoped_state(cluster, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    nodes = cluster(["n1", "n2", "n3"], trace_dir=trace_dir)
    keys = [f"s{i}" for i in range(200)]
    nodes[0].ok("scoped_gos", keys=keys, placement="hash", wait=30)
    added = nodes[1].ok("key_call_many", keys=keys, request=["add", "a"], wait=30)
    assert added == [1] * len(keys)
    started = nodes[0].ok(
        "pi_start", name="/timer", module="Timer", table="caching", state={"ticks": 0, "last": 0}
    )
    assert "pid" in started
    # a timer ticking every millisecond: it almost always has a tick in its mailbox
    busy = {"ticks": 0, "last": 0, "every": 0.001}
    assert "pid" in nodes[0].ok(
        "pi_start", name="/busy", module="Timer", table="caching", state=busy
    )
    sent: dict[str, list[int]] = {k: [] for k in keys}
    missing = 0
    for round_, node in enumerate(nodes):
        other = nodes[(round_ + 1) % 3]
        before = _timer(other)["ticks"]
        casting = other.send("cast_keys_for", keys=keys[:50], seconds=1.5, tag=round_)
        time.sleep(0.3)
        node.quit()
        result = casting.result(30)
        for key, ns in result["sent"].items():
            sent[key] += [[round_, n] for n in ns]
        missing += result["missing"]
        after_stop = other.ok("key_call_many", keys=keys, request=["add", round_], wait=30)
        assert all(isinstance(x, int) for x in after_stop), after_stop[:5]
        timer = _timer(other)
        assert timer["node"] != node.name and timer["ticks"] >= before
        node.start()
        node.wait_ready()
        wait_mesh(nodes)
    final = nodes[2].ok("key_call_many", keys=keys, request=["get"], wait=30)
    reordered = 0
    for key, item in zip(keys, final, strict=True):
        plain_items = [x for x in item["items"] if not isinstance(x, list)]
        assert plain_items == ["a", 0, 1, 2], item
        cast_items = [x for x in item["items"] if isinstance(x, list)]
        # each cast delivered once; those forwarded from the old instance's node may
        # come after later ones sent to the new instance directly (another pid)
        assert sorted(cast_items) == sorted(sent[key]), (key, cast_items, sent[key])
        reordered += cast_items != sent[key]
    stats = [n.ok("scoped_stats") for n in nodes]
    print(
        f"rolling restart: {len(keys)} servers and /timer, every state intact; "
        f"{sum(len(v) for v in sent.values())} casts during the stops all delivered, "
        f"{missing} lookups found no process (the gap of a move), {reordered} keys got "
        "forwarded casts after direct ones; "
        f"takeovers {[s['takeovers'] for s in stats]}"
    )
    kinds = {line[4] for line in read_traces(trace_dir) if line[3] == "start"}
    assert "failover" not in kinds and "takeover" in kinds, kinds
    for name in ("/timer", "/busy"):  # no earlier incarnation's tick was forwarded
        state = nodes[0].ok("pi_send", name=name, table="caching", msg="get")
        assert state.get("foreign", 0) == 0 and state["ticks"] > 0, (name, state)
    # the moves are cluster events (the observer lists them)
    assert "takeover" in nodes[1].ok("cluster_events")
    assert_never_two_live(trace_dir)


def test_a_handoff_drops_the_ticks_of_the_old_instances_timer(cluster, tmp_path):
    """Timers every 1 ms on a node kept busy by casts from another: when a timer's
    process is frozen for its handoff, its mailbox often holds a tick of its own
    timer. The tick ends with its incarnation (as its timer does): no new instance
    gets it, while every cast sent during the stop is relayed."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    n1, n2 = cluster(["n1", "n2"], trace_dir=trace_dir)
    keys = [f"k{i}" for i in range(50)]
    n1.ok("scoped_gos", keys=keys, placement="local", wait=30)
    names = [f"/busy{i}" for i in range(8)]
    busy = {"ticks": 0, "last": 0, "every": 0.001}
    for name in names:
        assert (
            n1.ok("pi_start", name=name, module="Timer", table="caching", state=busy)["pid"][0]
            == "n1"
        )
    casting = n2.send("cast_keys_for", keys=keys, seconds=1.5)
    time.sleep(0.3)
    n1.quit()
    result = casting.result(30)
    final = n2.ok("key_call_many", keys=keys, request=["get"], wait=30)
    for key, item in zip(keys, final, strict=True):
        assert sorted(x[1] for x in item["items"]) == result["sent"][key], key
    for name in names:
        state = n2.ok("pi_send", name=name, table="caching", msg="get")
        assert state["node"] == "n2", state
        assert state.get("foreign", 0) == 0 and state["ticks"] > 0, (name, state)
    kinds = [line[4] for line in read_traces(trace_dir) if line[3] == "start"]
    assert kinds.count("takeover") == len(names) + len(keys), kinds


def test_a_rolling_restart_keeps_every_web_session_and_the_demo_clock(cluster):
    nodes = cluster(["n1", "n2", "n3"])
    sids = [f"sid-{i:04d}" for i in range(300)]
    assert nodes[0].ok("session_incr", sids=sids, wait=30) == [1] * len(sids)
    opted_out = ["out-1", "out-2"]
    nodes[0].ok("session_incr", sids=opted_out, scope="node")
    clock = nodes[0].ok("demo_clock")
    for round_, node in enumerate(nodes):
        other = nodes[(round_ + 1) % 3]
        node.quit()
        values = other.ok("session_incr", sids=sids, wait=30)
        assert values == [2 + round_] * len(sids), values[:5]
        now = other.ok("demo_clock")
        assert now["node"] != node.name and now["ticks"] >= clock["ticks"], (now, clock)
        clock = now
        node.start()
        node.wait_ready()
        wait_mesh(nodes)
    # the opt-out: node-scoped sessions started on n1 were lost when n1 stopped
    assert nodes[1].ok("session_incr", sids=opted_out, scope="node") == [1, 1]


def test_a_factory_other_nodes_cannot_rebuild_is_a_clear_error(cluster):
    (n1,) = cluster(["n1"])
    answer = n1.req("scoped_gos", keys=["h"], factory="Hidden", placement="local")
    assert answer["error"] == "TypeError"
    assert "cluster-scoped process needs a factory and arguments" in answer["message"]
    assert n1.ok("whereis", key="h", table="keep") is None


def test_a_fenced_nodes_cluster_scoped_timer_moves_and_is_not_restarted_there(cluster, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    lease = 1.0
    n1, n2 = cluster(["n1", "n2"], trace_dir=trace_dir, lease=lease)
    n1.ok("pi_start", name="/timer", module="Timer", table="caching", state={"ticks": 0, "last": 0})
    n1.pause()  # past its lease: n2 declares it down and starts the timer again
    time.sleep(3 * lease)
    moved = wait_for(lambda: _timer(n2), 5.0, what="/timer on n2")
    assert moved["node"] == "n2"
    n1.resume()  # it wakes past its deadline: fences, ends its instance, rejoins
    wait_for(lambda: n1.ok("stats")["fenced"] >= 1, 10.0, what="n1 fenced")
    wait_mesh([n1, n2])
    time.sleep(2 * lease)  # a scan or two on both
    assert _timer(n1)["node"] == "n2" and _timer(n2)["node"] == "n2"
    lines = read_traces(trace_dir)
    starts = [line for line in lines if line[3] == "start"]
    ends = [line for line in lines if line[3] == "end"]
    assert [line[2][0] for line in starts] == ["n1", "n2"]  # not started again on n1
    assert [(line[2][0], line[4]) for line in ends] == [("n1", "fenced")]
    # n1's root supervisor dropped the child (no restart storm, no escalation)
    assert n1.ok("pi_start", name="other", module="Job")["pid"][0] == "n1"


def test_the_last_node_keeps_states_for_the_next_one(cluster, tmp_path):
    (n1,) = cluster(["n1"])
    keys = [f"last-{i}" for i in range(20)]
    n1.ok("scoped_gos", keys=keys, placement="local")
    assert n1.ok("key_call_many", keys=keys, request=["add", "kept"]) == [1] * len(keys)
    n1.quit()
    (n2,) = cluster(["n2"])

    def all_back() -> Any:
        answers = n2.ok("key_call_many", keys=keys, request=["get"])
        return answers if all(isinstance(a, dict) for a in answers) else None

    answers = wait_for(all_back, 10.0, what="the keys started again on n2")
    assert all(a["items"] == ["kept"] and a["node"] == "n2" for a in answers), answers


def test_a_takeover_answers_a_new_instance_on_the_receiving_node(cluster, tmp_path):
    """The node taking over a cluster-scoped process it has just looked up (its cache
    names the stopping node's instance) starts a new instance; it never answers the
    old pid (whose frames the stopping node would forward to a dead process). Both a
    supervised ``pi`` (like the demo's clock) and a ``get_or_spawn`` one, round after
    round (the race was intermittent)."""
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    nodes = cluster(["n1", "n2"], trace_dir=trace_dir)
    for round_ in range(4):
        holder, other = nodes[round_ % 2], nodes[(round_ + 1) % 2]
        name, key = f"/pk{round_}", f"g{round_}"
        old_pi = holder.ok(
            "pi_start", name=name, module="PiKeeper", table="pikeep", state={"items": []}
        )["pid"]
        gos = holder.ok("scoped_gos", keys=[key], factory="AsyncKeeper", placement="local")
        old_gos = gos[0]
        assert old_pi[0] == holder.name and old_gos[0] == holder.name, (old_pi, gos)
        # the receiver looks both up (and caches the holder's pids) before the stop
        assert other.ok("pi_send", name=name, table="pikeep", msg="get")["node"] == holder.name
        assert other.ok("key_call_many", keys=[key], request=["get"])[0]["node"] == holder.name
        before = other.ok("scoped_stats")["takeovers"]
        casting_pi = other.send("cast_keys_for", keys=[name], seconds=1.0, table="pikeep")
        casting_gos = other.send("cast_keys_for", keys=[key], seconds=1.0, table="keep")
        time.sleep(0.3)
        holder.quit()
        sent_pi, sent_gos = casting_pi.result(30), casting_gos.result(30)
        details = other.ok("cluster_event_details", kind="takeover")
        # every round's processes move together (they all live on the holder)
        moving = 2 * (round_ + 1)
        assert details[-1] == f"{moving} cluster-scoped process(es) from {holder.name}", details
        assert other.ok("scoped_stats")["takeovers"] == before + moving
        new_pi = other.ok("whereis", key=name, table="pikeep")
        new_gos = other.ok("whereis", key=key, table="keep")
        for new, old in ((new_pi, old_pi), (new_gos, old_gos)):
            assert new is not None and new[0] == other.name and new != old, (new, old)
            assert other.ok("alive", pid=new) is True
        # every cast sent during the move was handled by the new instance
        got_pi = other.ok("pi_send", name=name, table="pikeep", msg="get")
        assert sorted(n for _, n in got_pi["items"]) == sent_pi["sent"][name], got_pi
        got_gos = other.ok("key_call_many", keys=[key], request=["get"])[0]
        assert sorted(n for _, n in got_gos["items"]) == sent_gos["sent"][key], got_gos
        holder.start()
        holder.wait_ready()
        wait_mesh(nodes)
    assert_never_two_live(trace_dir)


def test_a_takeover_of_a_key_held_by_a_live_instance_elsewhere_is_refused(cluster):
    """A node asked to take over a key another node's live instance holds answers
    None (`NotTakenOver`), never that pid, and starts nothing: the node handing off
    keeps the state in the store for failover."""
    n1, n2, n3 = cluster(["n1", "n2", "n3"])
    (held,) = n3.ok("scoped_gos", keys=["held"], factory="Keeper", placement="local")
    assert held[0] == "n3"
    gone = n1.ok("spawn")  # a pid of n1's standing in for its handed-off instance
    n1.ok("exit", pid=gone, reason="kill")
    assert n2.ok("takeover_request", keys=["held"], source="n1", old=[gone]) == [None]
    assert n2.ok("scoped_stats")["takeovers"] == 0
    assert n2.ok("whereis", key="held", table="keep") == held
    assert n3.ok("alive", pid=held) is True
