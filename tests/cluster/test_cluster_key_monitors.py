"""Key monitors across the cluster (`procreg.monitor_key`, `cluster.keywatch`).

Node processes (the `cluster` fixture) watch keys that other nodes register,
unregister, or whose holders end — killed, fenced, or gone with their node — and
get each change once, in order. The last test runs one node in the test process
and changes the store behind its back to check the re-check after a gap.

Waits are bounded (`wait_for`); nothing here asserts how long anything took. "No
event" is checked against a barrier: a later event on the same ``kev`` channel (Redis
delivers a channel's messages in order), after which the counts must be exact.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import procreg
from procreg.cluster.codec import canon, pid_str
from procreg.pid import Pid

from .conftest import LEASE, SECRET
from .harness import wait_back, wait_for

pytestmark = pytest.mark.timeout(90)

KW = "procreg:kw"


def events(node, watcher) -> list[tuple[str, Any, tuple[str, int, int]]]:
    """``(event, key, pid)`` of what `watcher` (a `cmd_monitor_key` process) got."""
    return [
        (e["event"], e["key"], (e["pid"][0], e["pid"][1], e["pid"][2]))
        for e in node.ok("key_events", watcher=watcher)
    ]


def expect(watchers, wanted, timeout=10.0, what=""):
    """Wait until every ``(node, watcher)`` has got at least ``len(wanted)`` events,
    then check they are exactly `wanted`."""
    for node, watcher in watchers:
        got = wait_for(
            lambda n=node, w=watcher: e if len(e := events(n, w)) >= len(wanted) else None,
            timeout,
            what=f"{len(wanted)} key events for {watcher} on {node.name} {what}",
            explain=lambda n=node, w=watcher: f"so far: {events(n, w)}",
        )
        assert got == wanted, (node.name, got)


def pid(value) -> tuple[str, int, int]:
    return (value[0], int(value[1]), int(value[2]))


def watched_fields(redis) -> list[str]:
    client = redis.client()
    try:
        return sorted(f.decode() for f in client.hkeys(KW))
    finally:
        client.close()


def field(key: Any, table: str = "default") -> str:
    return canon(table) + "\n" + canon(key)


def test_changes_on_any_node_reach_watchers_on_every_node(cluster, redis):
    n1, n2, n3 = cluster(["n1", "n2", "n3"])
    watchers = [(node, node.ok("monitor_key", key="k")) for node in (n1, n2, n3)]
    assert watched_fields(redis) == [field("k")]
    p1 = pid(n1.ok("register", key="k"))
    expect(watchers, [("registered", "k", p1)])
    assert n1.ok("unregister", key="k", pid=list(p1)) is True
    expect(watchers, [("registered", "k", p1), ("unregistered", "k", p1)])
    p2 = pid(n1.ok("gos", key="k")["pid"])
    n2.ok("exit", pid=list(p2), reason="kill")  # killed from another node
    history = [
        ("registered", "k", p1),
        ("unregistered", "k", p1),
        ("registered", "k", p2),
        ("ended", "k", p2),
    ]
    expect(watchers, history)
    p3 = pid(n3.ok("gos", key="k")["pid"])  # another holder's node
    assert p3[0] == "n3"
    n3.ok("exit", pid=list(p3), reason="shutdown")
    history += [("registered", "k", p3), ("ended", "k", p3)]
    expect(watchers, history)
    # another table is another key
    p4 = pid(n2.ok("register", key="k", table="other"))
    p5 = pid(n2.ok("register", key="k"))
    history += [("registered", "k", p5)]
    expect(watchers, history)  # (nothing for p4: exactly one more event)
    assert p4 != p5


def test_holder_node_killed_reports_ended_once_after_its_lease(cluster):
    n1, n2, n3 = cluster(["n1", "n2", "n3"])
    p1 = pid(n1.ok("gos", key="k")["pid"])
    # watching after the registration: nothing is sent for the state at that time
    watchers = [(node, node.ok("monitor_key", key="k")) for node in (n2, n3)]
    n1.kill()
    # both survivors purge n1's incarnation: each entry goes once, one "ended"
    expect(watchers, [("ended", "k", p1)], timeout=10 * LEASE, what="after n1 was killed")
    p2 = pid(n2.ok("gos", key="k")["pid"])
    expect(watchers, [("ended", "k", p1), ("registered", "k", p2)])


def test_holder_node_fenced_reports_ended_once(cluster):
    n1, n2 = cluster(["n1", "n2"])
    p1 = pid(n1.ok("gos", key="k")["pid"])
    creation = n1.ok("ping")["creation"]
    watchers = [(n2, n2.ok("monitor_key", key="k"))]
    n1.pause()
    wait_for(lambda: "n1" not in n2.ok("nodes"), 10 * LEASE, what="n1 down on n2")
    time.sleep(0.2)  # (n2's purge of n1's entries under way)
    n1.resume()
    wait_for(
        lambda: (s := n1.ok("stats"))["fenced"] and s["creation"] != creation,
        10 * LEASE,
        what="n1 to fence itself and rejoin",
    )
    # whoever removed the entry first (n2's purge, n1's release after the fence), once
    expect(watchers, [("ended", "k", p1)])
    again = pid(n1.ok("gos", key="k")["pid"])
    assert again[1] != creation
    expect(watchers, [("ended", "k", p1), ("registered", "k", again)])


def test_demonitor_and_watcher_death_stop_the_events_and_unwatch_the_key(cluster, redis):
    n1, n2 = cluster(["n1", "n2"])
    w1 = n2.ok("monitor_key", key="k")
    w2 = n2.ok("monitor_key", key="k")
    assert n2.ok("watcher_call", watcher=w1, request=["demonitor"]) == [True]
    p1 = pid(n1.ok("register", key="k"))
    expect([(n2, w2)], [("registered", "k", p1)])
    assert events(n2, w1) == []
    assert watched_fields(redis) == [field("k")]  # w2 still watches it
    n2.ok("exit", pid=w2, reason="kill")
    wait_for(lambda: watched_fields(redis) == [], 10, what="the watch to leave the store")
    assert n1.ok("unregister", key="k", pid=list(p1)) is True
    n1.ok("register", key="k")
    # barrier: a watched key's event comes after anything published for "k"
    w3 = n2.ok("monitor_key", key="barrier")
    p2 = pid(n1.ok("register", key="barrier"))
    expect([(n2, w3)], [("registered", "barrier", p2)])
    assert events(n2, w1) == []
    assert events(n2, w2) == [("registered", "k", p1)]
    for node in (n1, n2):  # records on the key-event channel: p1's and the barrier's
        assert node.ok("keywatch")["events"] == 2, node.name


def test_no_key_events_for_unwatched_keys(cluster, redis):
    n1, n2 = cluster(["n1", "n2"])
    watcher = n2.ok("monitor_key", key="watched")
    keys = [f"plain-{i}" for i in range(100)]
    made = n1.ok("gos_many", keys=keys)
    assert made["errors"] == {}
    for key, p in list(zip(keys, made["pids"], strict=True))[:10]:
        assert n1.ok("unregister", key=key, pid=p) is True
    for p in made["pids"][10:20]:
        n1.ok("exit", pid=p, reason="kill")
    n2.ok("register", key="plain-0")  # replaces nothing: it was unregistered
    p = pid(n1.ok("register", key="watched"))
    expect([(n2, watcher)], [("registered", "watched", p)])
    for node in (n1, n2):
        assert node.ok("keywatch")["events"] == 1, node.name
    assert watched_fields(redis) == [field("watched")]


def test_watcher_node_fenced_keeps_its_monitors_and_reports_what_it_missed(cluster, redis):
    n1, n2 = cluster(["n1", "n2"])
    watcher = n2.ok("monitor_key", key="k")
    creation = n2.ok("ping")["creation"]
    n2.pause()
    wait_for(lambda: "n2" not in n1.ok("nodes"), 10 * LEASE, what="n2 down on n1")
    # n1 purged n2's incarnation, its watch too: this registration publishes nothing
    wait_for(lambda: watched_fields(redis) == [], 10, what="n2's watch purged")
    p1 = pid(n1.ok("register", key="k"))
    n2.resume()
    wait_for(
        lambda: (s := n2.ok("stats"))["fenced"] and s["creation"] != creation,
        10 * LEASE,
        what="n2 to fence itself and rejoin",
    )
    # its watcher (not registered) lives on; the re-check after the rejoin reports
    # the registration it missed, and records the watch for the new incarnation
    expect([(n2, watcher)], [("registered", "k", p1)])
    wait_for(lambda: watched_fields(redis) == [field("k")], 10, what="the watch re-recorded")
    assert n1.ok("unregister", key="k", pid=list(p1)) is True
    expect([(n2, watcher)], [("registered", "k", p1), ("unregistered", "k", p1)])
    n2.ok("exit", pid=watcher, reason="kill")
    wait_for(lambda: watched_fields(redis) == [], 10, what="no watch left")


def test_subscription_lost_and_back_reports_each_change_once(cluster, redis):
    """The server drops every subscribed connection; a registration right then is
    either delivered or missed and found by the re-check after re-subscribing:
    either way, once."""
    n1, n2 = cluster(["n1", "n2"])
    watcher = n2.ok("monitor_key", key="k")
    before = n2.ok("keywatch")["rechecks"]
    client = redis.client()
    try:
        killed = 0
        for info in client.client_list():
            if int(info["sub"]) > 0:
                killed += client.client_kill_filter(_id=info["id"])
        assert killed >= 2
    finally:
        client.close()
    # (n1's store may be marked down for a moment: claims fail fast, so retry)
    p1 = pid(
        wait_for(
            lambda: (a := n1.req("register", key="k"))["ok"] and a["result"],
            10,
            what="a registration after the kill",
        )
    )
    wait_for(lambda: n2.ok("keywatch")["rechecks"] > before, 10, what="n2's re-check")
    expect([(n2, watcher)], [("registered", "k", p1)])
    assert n1.ok("unregister", key="k", pid=list(p1)) is True
    expect([(n2, watcher)], [("registered", "k", p1), ("unregistered", "k", p1)])


def _unless_unavailable(node, cmd, **args):
    """The command's result, or None while the node finds the store unreachable (a
    node that has recovered once may still meet a connection the restart closed:
    cluster calls fail fast then, by design)."""
    answer = node.send(cmd, **args).wait(10.0)
    if not answer.get("ok") and answer.get("error") == "ClusterUnavailable":
        return None
    assert answer.get("ok"), answer
    return answer.get("result")


def test_redis_restarted_empty_reports_only_real_changes(cluster, redis):
    n1, n2 = cluster(["n1", "n2"])
    stays = pid(n1.ok("gos", key="stays")["pid"])
    goes = pid(n1.ok("gos", key="goes")["pid"])
    w_stays = n2.ok("monitor_key", key="stays")
    w_goes = n2.ok("monitor_key", key="goes")
    redis.stop()
    n1.ok("exit", pid=list(goes), reason="kill")  # while the store is away
    time.sleep(0.2)
    redis.start()  # same port, no data
    nodes = [n1, n2]
    for node in nodes:
        wait_back(lambda n=node: n.ok("stats")["recoveries"] >= 1, nodes, redis, 10, "recovery")
    wait_back(
        lambda: _unless_unavailable(n2, "whereis", key="stays") == list(stays),
        nodes,
        redis,
        10,
        "stays again",
    )
    # after the grace period, n2's re-check reports the holder that went away (as
    # "unregistered": n2 cannot tell how) and nothing for the one registered again
    got = wait_for(
        lambda: (e := events(n2, w_goes)) and e,
        10 * LEASE,
        what="the missed end of 'goes'",
    )
    assert len(got) == 1 and got[0][1:] == ("goes", goes), got
    assert got[0][0] in ("ended", "unregistered"), got
    wait_back(lambda: n2.ok("keywatch")["rechecks"] >= 1, nodes, redis, 10, "a re-check")
    assert n1.ok("unregister", key="stays", pid=list(stays)) is True
    expect([(n2, w_stays)], [("unregistered", "stays", stays)])
    assert events(n2, w_goes) == got
    assert sorted(watched_fields(redis)) == sorted([field("stays"), field("goes")])


def test_recheck_reports_changes_made_behind_its_back(redis):
    """One node in the test process: the store's entry of a watched key is changed
    with no key event (as if it had been published while we were not subscribed);
    `recheck` reports the difference with what the watcher last heard, once."""
    client = redis.client()

    async def main() -> list[Any]:
        backend = procreg.current_node()._cluster.backend
        got: list[Any] = []

        async def watcher() -> None:
            await procreg.monitor_key("k")
            ready.set_result(None)
            while True:
                got.append(await procreg.receive())

        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        procreg.spawn(watcher)
        await ready
        # another node "z" (live: its lease holds creation 7) holds the key in the store
        ghost = Pid("z", 7, 1)
        client.set("procreg:lease:z", 7)
        client.hset("procreg:nodes", "z", 7)
        client.hset("procreg:t:" + canon("default"), canon("k"), pid_str(ghost) + "\t")

        async def z_live(live: bool) -> None:
            deadline = time.monotonic() + 5
            while ("z" in procreg.nodes()) != live:
                assert time.monotonic() < deadline, procreg.nodes()
                await asyncio.sleep(0.02)

        await z_live(True)

        async def settle(n: int) -> None:
            deadline = time.monotonic() + 5
            while len(got) < n or backend.keywatch._recheck_task is None:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.02)
            await backend.keywatch._recheck_task
            await asyncio.sleep(0.1)  # (anything more would be a duplicate)

        backend.keywatch.recheck()
        await settle(1)
        backend.keywatch.recheck()  # nothing changed since: nothing reported
        await settle(1)
        client.hdel("procreg:t:" + canon("default"), canon("k"))
        backend.keywatch.recheck()  # its node is live: it may have unregistered
        await settle(2)
        client.hset("procreg:t:" + canon("default"), canon("k"), pid_str(ghost) + "\t")
        backend.keywatch.recheck()
        await settle(3)
        client.delete("procreg:lease:z")  # its node is gone (lease lapsed)
        await z_live(False)
        backend.keywatch.recheck()
        await settle(4)
        return [(e.event, e.pid) for e in got]

    try:
        result = procreg.run(main, name="a", cluster=redis.url, secret=SECRET, lease=LEASE)
    finally:
        client.close()
    ghost = Pid("z", 7, 1)
    assert result == [
        ("registered", ghost),
        ("unregistered", ghost),
        ("registered", ghost),
        ("ended", ghost),
    ]


def test_monitor_key_refuses_what_it_cannot_record(redis):
    """A key that cannot cross the cluster: `TypeError`; the store unreachable:
    `ClusterUnavailable`. Either way the caller keeps no key monitor."""

    async def main() -> list[str]:
        node = procreg.current_node()
        out = []
        for key in (frozenset({1}), "k"):
            if key == "k":
                redis.stop()
                deadline = time.monotonic() + 5
                while node._cluster.store.up:  # (until a store call fails)
                    assert time.monotonic() < deadline
                    try:
                        await procreg.whereis("elsewhere")
                    except procreg.ClusterUnavailable:
                        pass
                    await asyncio.sleep(0.05)
            try:
                await procreg.monitor_key(key)
            except (TypeError, procreg.ClusterUnavailable) as exc:
                out.append(type(exc).__name__)
            me = node.me()
            assert me._procreg_ext is None or not me._procreg_ext.key_monitors
            assert node.registry.local.key_monitors == {}
        return out

    try:
        result = procreg.run(main, name="a", cluster=redis.url, secret=SECRET, lease=5.0)
    finally:
        redis.start()
    assert result == ["TypeError", "ClusterUnavailable"]


def test_many_watchers_at_once_and_churn(redis):
    """200 processes monitor 200 keys in one loop turn (their watches go in one
    script call); the watchers of 50 keys end and others take their place in the
    same turn. A fake node "z" then claims and unregisters every key with the
    protocol's own scripts: each live watcher gets exactly those two events, and the
    store counts each key once."""
    from procreg.cluster import store as scripts

    client = redis.client()
    n = 200

    async def main() -> dict[str, Any]:
        backend = procreg.current_node()._cluster.backend
        calls: list[str] = []
        real = backend.store.script

        async def counting(name: str, keys: list[str], args: list[Any]) -> Any:
            calls.append(name)
            return await real(name, keys, args)

        backend.store.script = counting  # type: ignore[method-assign]
        got: dict[Pid, list[Any]] = {}

        async def watcher(key: str, ready: asyncio.Future[None]) -> None:
            await procreg.monitor_key(key)
            ready.set_result(None)
            while True:
                got[procreg.self()].append(await procreg.receive())

        async def start(key: str) -> Pid:
            ready = asyncio.get_running_loop().create_future()
            pid = procreg.spawn(watcher, key, ready)
            got[pid] = []
            await ready
            return pid

        keys = [f"k{i}" for i in range(n)]
        first = await asyncio.gather(*(start(k) for k in keys))
        watch_calls = calls.count("watch")
        for pid in first[:50]:
            procreg.exit(pid, "kill")
        second = await asyncio.gather(*(start(k) for k in keys[:50]))
        await asyncio.sleep(0.2)  # (the unwatch flush of the turn above)
        fields = {f.decode(): int(v) for f, v in client.hgetall(KW).items()}

        # "z" (live) claims every key, then unregisters them, as a node would
        client.set("procreg:lease:z", 7)
        client.hset("procreg:nodes", "z", 7)
        claim = client.register_script(scripts.CLAIM)
        release = client.register_script(scripts.RELEASE)
        epoch = client.get("procreg:epoch").decode()
        args: list[Any] = [epoch, 7, "procreg:lease:", "new", "procreg:inval", "procreg:t:"]
        for i, key in enumerate(keys):
            args += [canon("default"), canon(key), f"z\t7\t{i}\t"]
        owned = "procreg:owned:z:7"
        ckeys = [owned, "procreg:epoch", "procreg:lease:z", "procreg:grace", KW, "procreg:kev"]
        assert claim(keys=ckeys, args=args) == [b""] * n
        rargs: list[Any] = ["procreg:inval", "procreg:"]
        for i, key in enumerate(keys):
            rargs += ["u", canon("default"), canon(key), f"z\t7\t{i}"]
        assert release(keys=[owned], args=rargs) == n
        live = second + first[50:]
        deadline = time.monotonic() + 10
        while any(len(got[p]) < 2 for p in live):
            assert time.monotonic() < deadline, [len(got[p]) for p in live]
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # (anything more would be a duplicate)
        for pid in live:
            procreg.exit(pid, "kill")
        deadline = time.monotonic() + 10
        while client.exists(KW):
            assert time.monotonic() < deadline, client.hgetall(KW)
            await asyncio.sleep(0.02)
        return {
            "watch_calls": watch_calls,
            "fields": fields,
            "events": {
                keys[i % n]: [(e.event, e.pid) for e in got[p]]
                for i, p in enumerate(second + first[50:])
            },
            "dead": [got[p] for p in first[:50]],
        }

    try:
        result = procreg.run(main, name="a", cluster=redis.url, secret=SECRET, lease=LEASE)
    finally:
        client.close()
    assert result["watch_calls"] <= 2  # (one per loop turn: the gather spans one or two)
    assert result["fields"] == {field(f"k{i}"): 1 for i in range(n)}
    assert all(events == [] for events in result["dead"])
    for i in range(n):
        zpid = Pid("z", 7, i)
        assert result["events"][f"k{i}"] == [("registered", zpid), ("unregistered", zpid)]
