"""Direct node-to-node frames (``listen=`` in the cluster URL, `procreg.cluster.direct`).

Nodes are OS processes (`harness.NodeProc`). To put a fault between two nodes, node
b listens on a fixed port and advertises the address of a `FaultProxy` in front of
it (``advertise=``): a's direct connection to b goes through the proxy, while both
reach Redis directly.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import defaultdict
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest

from .conftest import pid_of
from .harness import NodeProc, wait_for

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
    published = stats(a)["sent_frames"] - before  # (sent_frames counts both paths)
    for i in range(50):
        assert a.ok("call", pid=echo, request=["echo", i]) == i
    assert a.ok("send_many", pid=echo, n=300) == 300
    wait_for(lambda: len(b.ok("call", pid=echo, request=["log"])) >= 300, 10, what="the casts on b")
    log = b.ok("call", pid=echo, request=["log"])
    assert [entry[1][1] for entry in log] == list(range(300))  # in order, once each
    after = stats(a)
    assert after["direct"]["frames_out"] - before >= 50  # they went direct ...
    # ... and a published nothing to b meanwhile (b is a's only peer, and a's
    # heartbeats, published to its own channel, are not counted in sent_frames)
    assert after["dropped"] == {}
    assert after["sent_frames"] - after["direct"]["frames_out"] == published
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
    # (b may have been declared down meanwhile, then fenced itself and rejoined)
    wait_for(lambda: not stats(b)["fencing"], 20, what="b back")
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
    assert "a" not in stats(b)["direct"]["inbound"]  # (keyed by the sender)
    assert "b" not in stats(a)["direct"]["up"]
    proxy.heal()
    wait_for(lambda: not stats(b)["fencing"], 20, what="b rejoined")
    fresh = b.ok("spawn", factory="Echo")
    wait_for(lambda: "b" in a.ok("nodes"), 10, what="a sees b again")
    warm(a, b, fresh, timeout=20)


def test_a_home_cut_off_from_the_store_leaves_no_dead_pid_in_another_nodes_cache(
    cluster, proxy, redis
) -> None:
    """Found by the torture test: node h, the home of a key, is cut off from Redis
    (so it hears no invalidation) but not from the others, and has not fenced itself
    yet. The key's holder, on node n1, ends; its release reaches the store and every
    other node. Node n2 then asks h for the key (``placement="hash"``). h must not
    answer from its lookup cache (the dead pid), and n2 must not cache a pid of a
    third node that h handed it: no invalidation would ever come for it (the key's
    next claim finds no entry), so n2 kept handing the dead pid out for good."""
    from procreg.cluster.claims import home_node
    from procreg.cluster.codec import canon

    table = f"procreg:t:{canon('default')}"
    lease = 4.0  # h keeps its lease for 2.2-3.6 s after the cut: time to ask it
    n1, n2 = cluster(["n1", "n2"], lease=lease, url=direct_url(redis.url))
    (h,) = cluster(["h"], lease=lease, url=direct_url(proxy.url()))
    key = next(f"c{i}" for i in range(1000) if home_node(f"c{i}", ["h", "n1", "n2"]) == "h")
    on_h, on_n2 = h.ok("spawn", factory="Echo"), n2.ok("spawn", factory="Echo")
    warm(n2, h, on_h)  # the request goes to h directly ...
    warm(h, n2, on_n2)  # ... and so does h's answer
    dead = n1.ok("gos", key=key)["pid"]
    assert h.ok("whereis", key=key) == dead  # now in h's cache
    with redis.client() as client:
        assert client.hlen(table) == 1
        proxy.blackhole()  # h is cut from Redis, not from n1 and n2
        n1.ok("exit", pid=dead, reason="kill")
        wait_for(lambda: not client.hlen(table), 5, what="the release")
    time.sleep(0.1)  # (n2 has the invalidation)
    if stats(h)["fencing"]:
        pytest.skip("h fenced itself before it was asked (a very slow machine)")
    answer = n2.req("gos", key=key, placement="hash", wait=15)
    # h answers from the store: it cannot reach it, so the request fails (or, had
    # the store been reachable, a fresh process)
    assert not answer.get("ok") or answer["result"]["pid"] != dead, answer
    wait_for(lambda: stats(h)["fencing"], 10, interval=0.05, what="h fenced")
    proxy.heal()
    wait_for(lambda: not stats(h)["fencing"], 20, what="h rejoined")
    wait_for(lambda: "h" in n2.ok("nodes"), 10, what="n2 sees h again")
    for node in (n2, n1, h):
        assert node.ok("whereis", key=key) != dead, f"{node.name} hands out the dead {dead}"


def test_a_remote_spawn_answered_by_a_claim_from_before_the_request_leaves_no_dead_pid(
    cluster, proxy, redis
) -> None:
    """The sibling of the test above, with h in touch with the store but slow to
    hear from it: h has a claim of the key in flight (it found n1's holder) when the
    holder ends and n2, having heard the release, asks h, and so joins h's claim.
    Its answer (the holder, as the store held it before n2 asked) must not reach n2's
    cache, where no invalidation would ever come for it; n2 checks such a third
    node's pid in the store itself, and gets a live process."""
    from procreg.cluster.claims import home_node
    from procreg.cluster.codec import canon

    table = f"procreg:t:{canon('default')}"
    lease = 3.0  # h's store round trips take 0.6 s below: inside its store timeout
    n1, n2 = cluster(["n1", "n2"], lease=lease, url=direct_url(redis.url))
    (h,) = cluster(["h"], lease=lease, url=direct_url(proxy.url()))
    keys = [f"t{i}" for i in range(1000) if home_node(f"t{i}", ["h", "n1", "n2"]) == "h"]
    on_h, on_n2 = h.ok("spawn", factory="Echo"), n2.ok("spawn", factory="Echo")
    warm(n2, h, on_h)
    warm(h, n2, on_n2)
    for key in keys[:5]:  # until the race is set up (timing on a busy machine)
        holder = n1.ok("gos", key=key)["pid"]
        # what the store answers h reaches it 0.6 s late; h's requests go at once
        proxy.delay(0.6, direction="to_client")
        own = h.send("gos", key=key)  # (local placement: h claims it, n1's holder wins)
        time.sleep(0.1)  # h's claim has run in the store; its answer is on its way
        with redis.client() as client:
            n1.ok("exit", pid=holder, reason="kill")
            wait_for(lambda: not client.hlen(table), 5, interval=0.01, what="the release")
        time.sleep(0.02)  # (n2 has the invalidation)
        lookups = stats(n2)["store_lookups"]
        asked = n2.req("gos", key=key, placement="hash", wait=15)  # joins h's claim?
        answered = own.wait(10)
        proxy.delay(0)
        if (
            answered.get("ok")
            and answered["result"]["pid"] == holder  # h's claim ran before the release
            and asked.get("ok")
            # and h handed n2 that third node's pid: n2 returned it, or checked it
            and (asked["result"]["pid"] == holder or stats(n2)["store_lookups"] > lookups)
        ):
            break
    else:
        pytest.skip("the race did not set up in 5 tries (a very slow machine)")
    assert asked["result"]["pid"] != holder, f"n2 was handed the dead {holder}"
    time.sleep(0.3)  # (the invalidations h and n2 get now are for other things)
    assert n2.ok("whereis", key=key) != holder, f"n2 keeps the dead {holder} in its cache"


def test_a_remote_spawn_does_not_hand_out_a_pid_whose_down_came_first(
    cluster, proxy, redis
) -> None:
    """Causality with ``placement="hash"``: n1 gets the Down of n3's holder (over a
    direct connection) before n3's release reaches the store (n3's requests to it
    are 0.2 s late). Home h, asked by n1, still finds the holder in the store and
    answers it; n1 must not hand it out (it asks again until the key is free), as a
    local get_or_spawn would not (`test_cluster_semantics.py`)."""
    from procreg.cluster.claims import home_node

    lease = 3.0  # n3's store round trips take 0.2 s below: inside its store timeout
    n1, h = cluster(["n1", "h"], lease=lease, url=direct_url(redis.url))
    (n3,) = cluster(["n3"], lease=lease, url=direct_url(proxy.url()))
    key = next(f"d{i}" for i in range(1000) if home_node(f"d{i}", ["h", "n1", "n3"]) == "h")
    on = {node.name: node.ok("spawn", factory="Echo") for node in (n1, h)}
    warm(n3, n1, on["n1"])  # the Down goes to n1 directly
    warm(n1, h, on["h"])
    warm(h, n1, on["n1"])
    holder = n3.ok("gos", key=key)["pid"]
    proxy.delay(0.2, direction="to_server")  # n3's release reaches the store late
    out = n1.ok("down_then_lookup", key=key, placement="hash", wait=30)
    proxy.delay(0)
    assert out["pid"] == holder and out["reason"] == "normal", out
    assert out["whereis"] != holder, out
    assert out["get_or_spawn"] != holder, out


# -- the handshake, in process ----------------------------------------------------------


class _Stub:
    """What `Direct` needs of a `Transport`."""

    def __init__(self, key: bytes, name: str, creation: int) -> None:
        self.key, self.name, self.creation = key, name, creation
        self.interval = 0.3
        self.peer_creation: dict[str, int] = {}
        self.dropped: dict[str, int] = defaultdict(int)
        self.store = SimpleNamespace(up=True)
        self.frames: list[bytes] = []
        self.cuts: list[tuple[str, int]] = []

    def guard(self) -> None:
        pass

    def flush_now(self) -> None:
        pass

    def receive(self, frame: bytes, link: Any = None) -> bool:
        self.frames.append(bytes(frame))
        return True

    def cut_over(self, node: str, session: int) -> tuple[Any, int]:
        self.cuts.append((node, session))
        return (None, 0)


def _direct(key: bytes, name: str, creation: int, fenced: bool = False) -> Any:
    from procreg.cluster.direct import Direct

    return Direct(
        _Stub(key, name, creation),  # type: ignore[arg-type]
        ("127.0.0.1", 0),
        None,
        lambda: fenced,
        lambda peer: None,
        lambda peer: 0,
    )


async def _records(reader: asyncio.StreamReader, n: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readexactly(5), 5)
        length, kind = struct.unpack(">IB", head)
        out.append((kind, await reader.readexactly(length - 1)))
    return out


def _record(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def test_the_handshake_refuses_a_wrong_secret_an_old_incarnation_a_replay_and_a_fence() -> None:
    from procreg.cluster import directlink as d

    key = b"the-cluster-secret"

    async def main() -> None:
        b = _direct(key, "b", 7)
        await b.start()
        host, port = b.address

        async def handshake(hello: bytes, ack: Any = None) -> tuple[list[Any], Any, Any]:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_record(d.HELLO, hello))
            (answer,) = await _records(reader, 1)
            if ack is not None and answer[0] == d.WELCOME:
                writer.write(_record(d.ACK, ack(answer[1])) + _record(d.FRAME, b"payload"))
                await writer.drain()
            return [answer], reader, writer

        def hello(k: bytes = key, creation: int = 3, to: int = 7, session: int = 1) -> bytes:
            return d.signed(k, "hello", "a", creation, "b", to, session, "n" * 32)

        def ack_for(welcome: bytes) -> bytes:
            nonce_b = welcome[:-32].decode().split("\t")[7]
            return d.signed(key, "ack", "a", 3, "b", 7, 1, nonce_b)

        # a legitimate session: hello, welcome, ack (over b's nonce), a frame
        answers, reader, writer = await handshake(hello(), ack_for)
        assert answers[0][0] == d.WELCOME
        welcome = answers[0][1]
        for _ in range(100):
            link = b.inbound.get("a")  # (once the ack is in)
            if link is not None and link.held:
                break
            await asyncio.sleep(0.01)
        assert link is not None and link.up
        assert link.held == [b"payload"]  # held until the cutover marker
        b.on_marker("a", 3, 1)
        assert b.transport.frames == [b"payload"]
        writer.close()
        # a replay of that session's hello: its session was accepted already
        answers, reader, writer = await handshake(hello())
        assert answers[0][0] == d.REFUSE
        writer.close()
        # a hello of a session not accepted yet, then an ack over the old nonce
        answers, reader, writer = await handshake(hello(session=2), lambda _: ack_for(welcome))
        assert answers[0][0] == d.WELCOME  # (a fresh nonce) ...
        (refused,) = await _records(reader, 1)
        assert refused[0] == d.REFUSE  # ... that the replayed ack does not sign
        writer.close()
        # another secret, an old incarnation, another destination creation
        b.transport.peer_creation["a"] = 5
        bad_ones = [hello(k=b"other", creation=5), hello(creation=4), hello(creation=5, to=6)]
        for bad in bad_ones:
            answers, reader, writer = await handshake(bad)
            assert answers[0][0] == d.REFUSE, answers
            writer.close()
        assert b.transport.frames == [b"payload"]
        assert b.counts["refused"] == 5
        await b.close()
        # a fenced node refuses everything
        fenced = _direct(key, "b", 7, fenced=True)
        await fenced.start()
        host, port = fenced.address
        answers, reader, writer = await handshake(hello(creation=5))
        assert answers[0][0] == d.REFUSE
        writer.close()
        await fenced.close()

    asyncio.run(main())


# -- per-name state of dead nodes ------------------------------------------------------------


def test_the_state_kept_per_peer_name_does_not_grow_with_dead_node_names(redis) -> None:
    """Ghost nodes (a lease, an entry in ``nodes``, an address, a signed frame to us,
    a cast from us) come and go, 10 at a time, 60 names in all: once each is down,
    its lease gone and its entries purged, the node forgets it (sequence numbers,
    creations, down marks, channel names, direct state) — and still refuses its
    frames as stale."""
    import procreg
    from procreg.cluster.codec import encode_frame, pack_item
    from procreg.cluster.items import SEND

    from .conftest import SECRET

    key = SECRET.encode()
    sizes: list[dict[str, int]] = []
    out: dict[str, Any] = {}

    async def main() -> None:
        node = procreg.current_node()
        cluster = node._cluster
        t, remote = cluster.transport, cluster.remote
        r = redis.client()

        def size() -> dict[str, int]:
            return {
                "peer_creation": len(t.peer_creation),
                "last_seq": len(t._last_seq),
                "channels": len(t._channels),
                "downs": len(remote.downs),
                "addresses": len(cluster.direct.addresses),
                "retry": len(cluster.direct._retry_at),
                "addr_hash": r.hlen("procreg:addr"),
            }

        async def until(predicate: Any, what: str) -> None:
            for _ in range(200):
                if predicate():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}: {size()}")

        old_frame = b""
        for round_ in range(6):
            ghosts: list[tuple[str, int]] = []
            for i in range(10):
                name = f"ghost{round_}-{i}"
                creation = int(r.incr("procreg:creation"))
                r.set(f"procreg:lease:{name}", creation, px=400)
                r.hset("procreg:addr", name, f"{creation} 127.0.0.1:9")  # (nothing there)
                r.hset("procreg:nodes", name, creation)
                ghosts.append((name, creation))
            await until(lambda g=ghosts: all(n in remote.live for n, _ in g), "the ghosts up")
            for seq, (name, creation) in enumerate(ghosts, 1):
                item = pack_item((SEND, (node.name, node.creation, 10**9), "hi"))
                frame = encode_frame(key, name, creation, seq, node.name, [item])
                r.publish(f"procreg:ch:{node.name}", frame)
                procreg.cast(procreg.Pid(name, creation, 1), "hello")  # (a channel name)
                old_frame = old_frame or frame
            await until(
                lambda g=ghosts: (
                    all(x in t._last_seq for x in g) and all(n in t._channels for n, _ in g)
                ),
                "their frames, our casts",
            )
            sizes.append(size())
            await until(
                lambda g=ghosts: not any(n in remote.downs or n in t.peer_creation for n, _ in g),
                "the ghosts forgotten",
            )
        sizes.append(size())
        # a replay of the first ghost's frame: stale, not delivered again
        before = t.dropped["stale"]
        r.publish(f"procreg:ch:{node.name}", old_frame)
        await until(lambda: t.dropped["stale"] > before, "the replayed frame refused")
        out["floor"] = t.pruned_floor
        r.close()

    procreg.run(main, name="a", cluster=redis.url + "?listen=127.0.0.1:0", secret=SECRET, lease=0.3)
    # at most one round's names (10) are kept at any time, none once they are gone
    assert all(s["peer_creation"] <= 10 and s["downs"] <= 10 for s in sizes), sizes
    assert all(s["channels"] <= 11 and s["last_seq"] <= 11 for s in sizes), sizes
    last = sizes[-1]
    assert last["peer_creation"] == last["downs"] == last["last_seq"] == 0, sizes
    assert last["addresses"] == last["retry"] == 0 and last["channels"] <= 1, last
    assert last["addr_hash"] == 1, sizes  # (ours)
    assert out["floor"] > 0


# -- the store's fault tests with direct connections on ---------------------------------------


@pytest.mark.parametrize(("fault", "seconds"), [("blackhole", 4.0), ("reset", 4.0)])
def test_a_partitioned_node_fences_itself_with_direct_connections_on(
    cluster, proxy, redis, tmp_path, fault: str, seconds: float
) -> None:
    """`test_cluster_partitions.partition` (node a cut from the store, not from b)
    with every node listening: a's keys never have two live processes."""
    from .test_cluster_partitions import partition

    def with_listen(names: list[str], **kw: Any) -> list[NodeProc]:
        kw["url"] = direct_url(kw.get("url") or redis.url)
        nodes: list[NodeProc] = cluster(names, **kw)
        return nodes

    result = partition(with_listen, proxy, redis, tmp_path, fault, seconds)
    assert result  # (partition asserts the invariant itself)


def test_a_node_without_listen_is_reached_through_redis(cluster, redis) -> None:
    """Only nodes that both listen use direct connections: a mixed cluster works,
    its frames to and from the node without the option going through pub/sub."""
    (a,) = cluster(["a"], lease=LEASE, url=direct_url(redis.url))
    (b,) = cluster(["b"], lease=LEASE, url=redis.url, pubsub_only=True)
    echo = b.ok("spawn", factory="Echo")
    back = a.ok("spawn", factory="Echo")
    for i in range(20):
        assert a.ok("call", pid=echo, request=["echo", i]) == i
        assert b.ok("call", pid=back, request=["echo", i]) == i
    assert stats(a)["direct"]["frames_out"] == stats(a)["direct"]["frames_in"] == 0
    assert stats(b)["direct"] is None


def test_an_unreachable_advertised_address_is_a_warning_once_per_run_of_failures(
    cluster, redis
) -> None:
    """b advertises an address nothing listens on (a wrong ``advertise=``): a's frames
    to b go through Redis and calls work, and a's log says so once, with the peer and
    the address, not once per retry."""
    from .harness import free_port

    dead = free_port()
    (b,) = cluster(
        ["b"],
        lease=LEASE,
        url=direct_url(redis.url, f"listen=127.0.0.1:0&advertise=127.0.0.1:{dead}"),
    )
    (a,) = cluster(["a"], lease=LEASE, url=direct_url(redis.url))
    echo = b.ok("spawn", factory="Echo")
    end = time.monotonic() + 4 * LEASE  # long enough for several retries
    i = 0
    while time.monotonic() < end:
        assert a.ok("call", pid=echo, request=["echo", i]) == i
        i += 1
        time.sleep(0.05)
    log = a.logfile.read_text(errors="replace")
    warned = [line for line in log.splitlines() if "no direct connection to b" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], warned
    assert f"127.0.0.1:{dead}" in warned[0] and "through Redis" in warned[0], warned
    assert stats(a)["direct"]["frames_out"] == 0
