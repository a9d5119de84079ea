"""The transport's own connections (`procreg.cluster.wire`): the server closing them
must not cut a node off for good. The keeper re-opens them, the subscribed one
subscribes again (frames and invalidations flow again), and the node is not fenced.
"""

from __future__ import annotations

from typing import Any

import pytest

from .harness import wait_for

pytestmark = pytest.mark.timeout(90)


def _kill(client, pick) -> int:
    """CLIENT KILL every connection for which ``pick(info)`` holds; how many."""
    killed = 0
    for info in client.client_list():
        if pick(info):
            killed += client.client_kill_filter(_id=info["id"])
    return killed


def _works_again(n_from, pid, what: str) -> None:
    wait_for(
        lambda: n_from.req("call", pid=pid, request=["echo", 7], timeout=1.0).get("result") == 7,
        15,
        interval=0.2,
        what=what,
    )


def test_subscribed_connections_killed_by_the_server_come_back(cluster, redis):
    n1, n2 = cluster(["n1", "n2"])
    server = n1.ok("spawn", factory="Echo")
    assert n2.ok("call", pid=server, request=["echo", 1]) == 1
    client = redis.client()
    assert _kill(client, lambda info: info.get("flags") == "P" or int(info["sub"]) > 0) >= 2
    _works_again(n2, server, "a remote call after the subscribers were killed")
    _works_again(n1, n2.ok("spawn", factory="Echo"), "the other direction")
    # invalidations flow again: a cached remote key that ends is forgotten
    pid = n1.ok("register", key="k-after")
    wait_for(lambda: n2.ok("whereis", key="k-after") == pid, 5, what="n2 to find the key")
    n1.ok("unregister", key="k-after")
    wait_for(lambda: n2.ok("whereis", key="k-after") is None, 5, what="n2 to forget it")
    for node in (n1, n2):
        stats = node.ok("stats")
        assert stats["fenced"] == 0
        assert stats["store_up"]


def test_publishing_connections_killed_by_the_server_come_back(cluster, redis):
    n1, n2 = cluster(["n1", "n2"], pubsub_only=True)  # (publishers in flight)
    server = n1.ok("spawn", factory="Echo")
    assert n2.ok("call", pid=server, request=["echo", 1]) == 1
    client = redis.client()
    assert _kill(client, lambda info: info.get("cmd") == "publish") >= 1
    _works_again(n2, server, "a remote call after the publishers were killed")
    # many frames in a row still arrive in order
    assert n2.ok("send_many", pid=server, n=500) == 500
    log = n2.ok("call", pid=server, request=["log"])
    assert [entry[1] for entry in log if entry[0] == "cast"] == [["seq", i] for i in range(500)]
    for node in (n1, n2):
        assert node.ok("stats")["fenced"] == 0


def test_an_idle_publishing_connection_closed_by_the_server_is_reopened_quietly(redis):
    """With redis.conf `timeout`, Redis closes idle clients (pub/sub ones excepted):
    the transport's publishing connection must come back without the store being
    marked down, which would end every link and monitor across nodes."""
    import asyncio

    import procreg

    client = redis.client()
    client.config_set("timeout", 1)

    async def main() -> tuple[int, int, Any]:
        node = procreg.current_node()
        cluster = node._cluster
        before = cluster.store.failures
        first = cluster.transport._pub
        await asyncio.sleep(3.5)  # idle: the server closes the publishing connection
        return cluster.store.failures - before, cluster.fenced, first is cluster.transport._pub

    # lease 9 s: heartbeats every 3 s leave the connection idle past the 1 s timeout
    failures, fenced, same = procreg.run(
        main, name="a", cluster=redis.url, secret="s" * 16, lease=9.0
    )
    assert not same, "the server did not close the idle connection: the test proves nothing"
    assert failures == 0
    assert fenced == 0


def test_a_slow_subscriber_closed_by_the_server_recovers(cluster, redis):
    """Redis closes a subscriber that falls behind (``client-output-buffer-limit
    pubsub``): that is a lost subscribed connection like any other. The node re-opens
    it, subscribes again and drops its cache; messaging works again, nothing fences.
    (Per destination, this server-side limit is what bounds a slow node's backlog.)"""
    client = redis.client()
    client.config_set("client-output-buffer-limit", "pubsub 256kb 128kb 1")
    n1, n2 = cluster(["n1", "n2"], lease=3.0, pubsub_only=True)  # (a flood through Redis)
    server = n2.ok("spawn", factory="Echo")
    assert n1.ok("call", pid=server, request=["echo", 1]) == 1
    before = n2.ok("stats")["store_failures"]
    n2.pause()  # n2 stops reading: Redis buffers what is published to it
    try:
        assert n1.ok("flood", pid=server, n=3000, size=8192) == 3000  # ~25 MB
        wait_for(  # Redis dropped n2's subscription: its channel has no subscriber
            lambda: dict(client.pubsub_numsub("procreg:ch:n2")).get(b"procreg:ch:n2") == 0,
            5,
            what="Redis to close n2's subscribed connection",
        )
    finally:
        n2.resume()
    wait_for(
        lambda: n2.ok("stats")["store_failures"] > before,
        10,
        what="n2 to notice the server closed its subscribed connection",
    )
    _works_again(n1, server, "a remote call to the node whose subscription was closed")
    assert n2.ok("stats")["fenced"] == 0
