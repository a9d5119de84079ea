"""Direct node-to-node frames (``listen=`` in the cluster URL, `procreg.cluster.direct`).

Nodes are OS processes (`harness.NodeProc`). To put a fault between two nodes, node
b listens on a fixed port and advertises the address of a `FaultProxy` in front of
it (``advertise=``): a's direct connection to b goes through the proxy, while both
reach Redis directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest

from procreg.testing import FaultProxy

from .conftest import pid_of
from .harness import NodeProc, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

LEASE = 1.0
LISTEN = "listen=127.0.0.1:0"


def direct_url(base: str, listen: str = LISTEN) -> str:
    return f"{base}{'&' if '?' in base else '?'}{listen}"


def stats(node: NodeProc) -> dict[str, Any]:
    result: dict[str, Any] = node.ok("stats")
    return result


def direct_up(sender: NodeProc, receiver: NodeProc) -> bool:
    """The sender's session to the receiver is up and cut over on both ends."""
    return (
        receiver.name in stats(sender)["direct"]["up"]
        and sender.name in (stats(receiver)["direct"]["inbound"])
    )


def warm(sender: NodeProc, receiver: NodeProc, pid: Any, timeout: float = 10.0) -> None:
    """Call `pid` on `receiver` from `sender` until the direct path is up both ways."""

    def ready() -> bool:
        sender.ok("call", pid=pid, request=["echo", 0])
        return direct_up(sender, receiver)

    wait_for(ready, timeout, interval=0.05, what=f"direct path {sender.name} -> {receiver.name}")


@pytest.fixture
def b_proxy() -> Iterator[tuple[int, FaultProxy]]:
    """A port for node b to listen on, and a fault proxy in front of it."""
    port = free_port()
    proxy = FaultProxy(port).start()
    try:
        yield port, proxy
    finally:
        proxy.stop()


def proxied_pair(cluster, redis, b_proxy, a_url: str = "") -> tuple[NodeProc, NodeProc]:
    port, proxy = b_proxy
    (b,) = cluster(
        ["b"],
        lease=LEASE,
        url=direct_url(redis.url, f"listen=127.0.0.1:{port}&advertise=127.0.0.1:{proxy.port}"),
    )
    (a,) = cluster(["a"], lease=LEASE, url=direct_url(a_url or redis.url))
    return a, b


def test_calls_casts_links_and_monitors_work_over_the_direct_path(cluster, redis) -> None:
    a, b = cluster(["a", "b"], lease=LEASE, url=direct_url(redis.url))
    echo = b.ok("spawn", factory="Echo")
    back = a.ok("spawn", factory="Echo")
    warm(a, b, echo)
    warm(b, a, back)
    before = stats(a)["direct"]["frames_out"]
    published = stats(a)["sent_frames"]
    for i in range(50):
        assert a.ok("call", pid=echo, request=["echo", i]) == i
    assert a.ok("send_many", pid=echo, n=300) == 300
    wait_for(lambda: len(b.ok("call", pid=echo, request=["log"])) >= 300, 10, what="the casts on b")
    log = b.ok("call", pid=echo, request=["log"])
    assert [entry[1][1] for entry in log] == list(range(300))  # in order, once each
    after = stats(a)
    assert after["direct"]["frames_out"] - before >= 50  # they went direct ...
    # ... and a published nothing to b meanwhile (heartbeats go to its own channel)
    assert after["dropped"] == {}
    assert after["sent_frames"] - published < 10
    # a link and a monitor across the direct path: the exit and the Down come over it
    linker = a.ok("watch", target=echo, mode="link", trap=True)
    watcher = a.ok("watch", target=echo, mode="monitor")
    a.ok("cast", pid=echo, msg=["stop", "bye"])

    def got(watcher_pid: Any) -> list[Any]:
        return a.ok("watched", watcher=watcher_pid)["messages"]

    wait_for(lambda: got(linker) and got(watcher), 10, what="the exit signal and the Down")
    assert "bye" in repr(got(linker)) and "bye" in repr(got(watcher))
    assert pid_of(echo)[0] == "b"


def _seqs(log: list[Any]) -> list[int]:
    return [entry[1][1] for entry in log if entry[0] == "cast" and entry[1][0] == "seq"]


def _reasons(node: NodeProc, watcher: Any) -> list[str]:
    return [repr(m["msg"]) for m in node.ok("watched", watcher=watcher)["messages"]]


@pytest.mark.parametrize("fault", ["reset", "blackhole"])
def test_a_stream_stays_in_order_across_cutover_cut_and_return(
    cluster, redis, proxy, b_proxy, fault: str
) -> None:
    """Numbered casts from a to b while the direct path comes up, is cut (the proxy
    in front of b's listen port), and comes back: b sees strictly increasing numbers,
    and a gap comes with ``noconnection`` on both sides. a reaches Redis through a
    proxy that delays it while the path comes up, so that the direct frames would
    overtake the pub/sub frames still in flight if the receiver did not hold them
    until the cutover marker."""
    a, b = proxied_pair(cluster, redis, b_proxy, a_url=proxy.url())
    slow, proxy = proxy, b_proxy[1]
    echo = b.ok("spawn", factory="Echo")
    anchor = a.ok("spawn", factory="Echo")
    n = 4000
    slow.delay(0.05)
    stream = a.send("cast_paced", pid=echo, n=n, every=10, pace=0.005)
    wait_for(lambda: direct_up(a, b), 10, interval=0.05, what="the cutover during the stream")
    slow.delay(0)
    a_watch = a.ok("watch", target=echo, mode="monitor")  # a's side of the pair
    b_watch = b.ok("watch", target=anchor, mode="monitor")  # b's side
    time.sleep(0.3)
    getattr(proxy, fault)()
    wait_for(lambda: stats(a)["direct"]["lost"] >= 1, 10, interval=0.05, what="the loss seen")
    time.sleep(0.3)
    proxy.heal()
    assert stream.result(60) == n
    warm(a, b, echo, timeout=20)  # the direct path comes back
    wait_for(
        lambda: _seqs(b.ok("call", pid=echo, request=["log"]))[-1:] == [n - 1],
        15,
        what="the last cast",
    )
    seqs = _seqs(b.ok("call", pid=echo, request=["log"]))
    assert all(x < y for x, y in pairwise(seqs)), "out of order or twice"
    gap = len(seqs) < n
    # the loss was handled as a disconnection on both sides (whether or not a frame
    # was lost): a's monitor of b's process and b's monitor of a's both got
    # noconnection
    wait_for(
        lambda: (
            "noconnection" in repr(_reasons(a, a_watch))
            and "noconnection" in repr(_reasons(b, b_watch))
        ),
        10,
        what=f"noconnection on both sides (gap: {gap})",
    )


def test_a_half_open_direct_connection_fails_calls_with_node_down(cluster, redis, b_proxy) -> None:
    a, b = proxied_pair(cluster, redis, b_proxy)
    _, proxy = b_proxy
    echo = b.ok("spawn", factory="Echo")
    warm(a, b, echo)
    proxy.blackhole()  # open, silent both ways: a half-open connection
    answer = a.req("call", pid=echo, request=["echo", 1], timeout=30)
    assert answer["error"] == "NodeDown", answer
    assert stats(a)["direct"]["lost"] >= 1
    # and the pair goes on through Redis meanwhile
    assert a.ok("call", pid=echo, request=["echo", 2], timeout=30) == 2
    proxy.heal()
    warm(a, b, echo, timeout=20)


def test_a_stopped_peer_fails_calls_with_node_down(cluster, redis) -> None:
    a, b = cluster(["a", "b"], lease=LEASE, url=direct_url(redis.url))
    echo = b.ok("spawn", factory="Echo")
    warm(a, b, echo)
    b.pause()
    try:
        answer = a.req("call", pid=echo, request=["echo", 1], timeout=30)
        assert answer["error"] == "NodeDown", answer
    finally:
        b.resume()
    # b finds its lease gone, fences itself, rejoins: a new process there answers
    wait_for(lambda: stats(b)["fenced"] >= 1 and not stats(b)["fencing"], 20, what="b rejoined")
    fresh = b.ok("spawn", factory="Echo")
    wait_for(lambda: "b" in a.ok("nodes"), 10, what="a sees b again")
    warm(a, b, fresh, timeout=20)


def test_a_fenced_node_stops_answering_on_the_direct_path(cluster, proxy, redis) -> None:
    (a,) = cluster(["a"], lease=LEASE, url=direct_url(redis.url))
    (b,) = cluster(["b"], lease=LEASE, url=direct_url(proxy.url()))
    echo = b.ok("spawn", factory="Echo")  # not registered: it lives through a fence
    warm(a, b, echo)
    proxy.blackhole()  # b is cut from Redis, not from a
    wait_for(lambda: stats(b)["fencing"], 10, interval=0.05, what="b fenced")
    # b closed its direct connections and refuses new ones: the call is not answered
    # by the process that lives on in b, it fails
    answer = a.req("call", pid=echo, request=["echo", 1], timeout=30)
    assert answer["error"] == "NodeDown", answer
    assert "b" not in stats(b)["direct"]["inbound"]
    proxy.heal()
    wait_for(lambda: not stats(b)["fencing"], 20, what="b rejoined")
    fresh = b.ok("spawn", factory="Echo")
    wait_for(lambda: "b" in a.ok("nodes"), 10, what="a sees b again")
    warm(a, b, fresh, timeout=20)
