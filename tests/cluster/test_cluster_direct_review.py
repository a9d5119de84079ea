"""Review findings on the direct path (`procreg.cluster.direct`), one test each.

Nodes run in this process (several `procreg.Node`s in one loop) or as bare `Direct`
objects driven in one loop, as the handshake test of `test_cluster_direct` does.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import procreg

from .conftest import SECRET
from .test_cluster_direct import _direct, _record, _records

pytestmark = pytest.mark.timeout(60)

KEY = b"the-cluster-secret"


class Echo(procreg.Server):
    def handle_call(self, request: Any) -> Any:
        return request


async def until(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


def node(url: str, name: str, lease: float) -> procreg.Node:
    return procreg.Node(name, cluster=url + "?listen=127.0.0.1:0", secret=SECRET, lease=lease)


# -- 1: a new incarnation's session survives the old one's node-down -----------------------


def test_the_old_incarnations_node_down_keeps_the_new_ones_session(redis) -> None:
    """b restarts as b2 and opens a session to a before a's poll saw the old b go:
    the node-down of the old incarnation closes nothing of b2's."""

    async def main() -> None:
        a = node(redis.url, "a", 6.0)
        async with a:
            echo = Echo.start()
            b = node(redis.url, "b", 6.0)
            async with b:
                await until(lambda: "b" in a.nodes(), "a sees b")
                old = b.creation
            b2 = node(redis.url, "b", 6.0)
            async with b2:
                d2, da = b2._cluster.direct, a._cluster.direct

                async def up() -> bool:
                    await b2.call(echo, "hi", 5.0)
                    link = d2.out.get("a")
                    return link is not None and link.up and "b" in da.inbound

                for _ in range(500):
                    if await up():
                        break
                    await asyncio.sleep(0.01)
                link, inbound = d2.out["a"], da.inbound["b"]
                assert link.up and inbound.creation == b2.creation
                await a._cluster.node_down("b", old)  # (a's poll, in whatever order)
                assert not inbound.closed and da.inbound.get("b") is inbound
                assert await b2.call(echo, "still", 5.0) == "still"
                assert not link.closed and d2.counts["lost"] == 0

    run(main)


# -- 2: the floor of pruned creations does not apply to known peers -------------------------


def test_a_pruned_newer_node_does_not_make_a_live_peer_refused(redis) -> None:
    """a, b, c join in that order; c leaves and is pruned (the floor of forgotten
    creations rises to c's): b, live and known to a, still gets its direct
    session to a."""

    async def main() -> None:
        a, b = node(redis.url, "a", 0.6), node(redis.url, "b", 0.6)
        async with a:
            pid = Echo.start()  # (on a)
            await b.start()
            c = node(redis.url, "c", 0.6)
            async with c:
                await until(lambda: "c" in a.nodes() and "c" in b.nodes(), "c seen")
                c_creation = c.creation
            ca, db = a._cluster, b._cluster.direct
            await until(lambda: ca.transport.pruned_floor >= c_creation, "c pruned on a")
            assert b.creation < c_creation

            def settled() -> bool:
                link = db.out.get("a")
                return (link is not None and link.up) or ca.direct.counts["refused"] > 0

            for _ in range(1000):
                assert await b.call(pid, "hi", 5.0) == "hi"
                if settled():
                    break
                await asyncio.sleep(0.01)
            assert ca.direct.counts["refused"] == 0
            assert db.out["a"].up
            await b.stop()

    run(main)


# -- 3: a replayed hello does not end a live session ---------------------------------------


def test_a_replayed_hello_neither_ends_the_live_session_nor_is_welcomed() -> None:
    """A captured hello sent again (never acked) leaves the live session of its
    sender alone, and is refused: its session was accepted already."""
    from procreg.cluster import directlink as d

    async def main() -> None:
        b = _direct(KEY, "b", 7)
        await b.start()
        host, port = b.address
        hello = d.signed(KEY, "hello", "a", 3, "b", 7, 1, "n" * 32)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_record(d.HELLO, hello))
        ((kind, welcome),) = await _records(reader, 1)
        assert kind == d.WELCOME
        nonce_b = welcome[:-32].decode().split("\t")[7]
        writer.write(_record(d.ACK, d.signed(KEY, "ack", "a", 3, "b", 7, 1, nonce_b)))
        await until(lambda: "a" in b.inbound and b.inbound["a"].up, "the session up")
        live = b.inbound["a"]
        b.on_marker("a", 3, 1)
        # the replay: the same hello on another connection, never acked
        r2, w2 = await asyncio.open_connection(host, port)
        w2.write(_record(d.HELLO, hello))
        ((answer, _),) = await _records(r2, 1)
        assert answer == d.REFUSE
        assert not live.closed and b.inbound.get("a") is live
        writer.write(_record(d.FRAME, b"after the replay"))
        await until(lambda: b.transport.frames, "the frame on the live session")
        assert b.transport.frames == [b"after the replay"]
        # a hello for a newer session is welcomed, but replaces the live one only
        # once acked: unacked, the live session stays
        r3, w3 = await asyncio.open_connection(host, port)
        w3.write(_record(d.HELLO, d.signed(KEY, "hello", "a", 3, "b", 7, 2, "m" * 32)))
        ((answer, _),) = await _records(r3, 1)
        assert answer == d.WELCOME
        assert not live.closed and b.inbound.get("a") is live
        for w in (writer, w2, w3):
            w.close()
        await b.close()

    run(main)


# -- 5: a link closed while it connects leaves no socket open -------------------------------


def test_a_link_closed_while_it_connects_closes_its_socket() -> None:
    """a's connection to b is closed (a fence, a new creation) while its connect is
    in flight: the socket that then connects is closed, and b sees it close."""

    async def main() -> None:
        readers: list[asyncio.StreamReader] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            readers.append(reader)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = _direct(KEY, "a", 3)
        await a.start()
        a.addresses["b"] = (7, "127.0.0.1", port)
        a.transport.peer_creation["b"] = 7
        a.want("b")
        link = a.out["b"]
        a.close_all()  # (before the connect completes)
        await until(lambda: readers, "the connection accepted")
        assert await asyncio.wait_for(readers[0].read(), 5) == b""  # closed, nothing sent
        assert link.transport is not None and link.transport.is_closing()
        await a.close()
        server.close()

    run(main)


# -- 7: names seen only through frames are pruned too ----------------------------------------


def test_names_seen_only_through_their_frames_are_forgotten(redis) -> None:
    """Nodes that sent us a frame but came and went between two membership polls
    (never live for us, never down): their creations and sequence numbers are
    forgotten too, and their frames stay refused."""
    from procreg.cluster.codec import encode_frame, pack_item
    from procreg.cluster.items import SEND

    out: dict[str, Any] = {}

    async def main() -> None:
        here = procreg.current_node()
        t = here._cluster.transport
        r = redis.client()
        frames = []
        for i in range(20):
            creation = int(r.incr("procreg:creation"))
            item = pack_item((SEND, (here.name, here.creation, 10**9), "hi"))
            frame = encode_frame(SECRET.encode(), f"flash{i}", creation, 1, here.name, [item])
            frames.append(frame)
            r.publish(f"procreg:ch:{here.name}", frame)

        def flashes() -> int:
            return sum(n.startswith("flash") for n in t.peer_creation) + sum(
                k[0].startswith("flash") for k in t._last_seq
            )

        await until(lambda: flashes() == 40, "their frames")
        await until(lambda: flashes() == 0, "them forgotten")
        before = t.dropped["stale"]
        r.publish(f"procreg:ch:{here.name}", frames[-1])  # (a replay)
        await until(lambda: t.dropped["stale"] > before, "the replay refused")
        out["ok"] = True
        r.close()

    procreg.run(main, name="a", cluster=redis.url + "?listen=127.0.0.1:0", secret=SECRET, lease=0.3)
    assert out["ok"]


# -- 9: a REFUSE counts only before the handshake is done, on an outbound link ----------------


def _pair() -> tuple[Any, Any, list[str]]:
    """Direct objects a (creation 3) and b (7); a's `on_lost` calls go to the list."""
    from procreg.cluster.direct import Direct

    lost: list[str] = []
    a = Direct(
        _direct(KEY, "a", 3).transport,
        ("127.0.0.1", 0),
        None,
        lambda: False,
        lost.append,
        lambda p: 0,
    )
    return a, _direct(KEY, "b", 7), lost


def test_a_refuse_on_an_up_session_is_a_loss_not_a_quiet_retry() -> None:
    """A REFUSE (unauthenticated) on a's session to b once it is up ends it as lost
    (`on_lost`: NodeDown, noconnection, RESET), not quietly; one on b's accepted end
    ends that connection and leaves b's own outbound state alone."""
    from procreg.cluster import directlink as d

    async def main() -> None:
        a, b, lost = _pair()
        await a.start()
        await b.start()
        a.addresses["b"] = (7, *b.address)
        a.transport.peer_creation["b"] = 7
        a.want("b")
        await until(lambda: "b" in a.out and a.out["b"].up and "a" in b.inbound, "the session")
        link, accepted = a.out["b"], b.inbound["a"]
        a.record(link, d.REFUSE, b"injected")
        assert link.closed and lost == ["b"] and a.counts["lost"] == 1
        b.addresses["a"] = (3, "127.0.0.1", 9)
        b._backoff["a"] = 1.0
        b.record(accepted, d.REFUSE, b"injected")
        assert accepted.closed and b._backoff == {"a": 1.0} and "a" not in b._retry_at
        await a.close()
        await b.close()

    run(main)


# -- 10: a wildcard listen address needs advertise= --------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_a_wildcard_listen_address_without_advertise_is_refused(host: str) -> None:
    from procreg.cluster.url import parse_url

    base = "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="advertise="):
        parse_url(f"{base}?listen={host}:7000")
    with pytest.raises(ValueError, match="advertise="):
        parse_url(f"{base}?listen=127.0.0.1:7000&advertise={host}:7000")
    config = parse_url(f"{base}?listen={host}:7000&advertise=10.0.0.5:7000")
    assert config.advertise == ("10.0.0.5", 7000)
    assert parse_url(f"{base}?listen=localhost:0").listen == ("localhost", 0)


# -- 11: records before the handshake are small on both ends ----------------------------------


def test_an_outbound_link_refuses_a_big_record_before_the_handshake() -> None:
    """The acceptor's end answers only small records (welcome, refuse, pong) until
    the session is up: a bigger announced length ends the connection at once
    instead of making us buffer up to `MAX_RECORD` bytes."""
    from procreg.cluster import directlink as d

    async def main() -> None:
        a = _direct(KEY, "a", 3)
        link = d.Link(a, True)
        link.peer, link.creation = "b", 7
        a.out["b"] = link
        link.data_received(struct.pack(">IB", d.MAX_HANDSHAKE + 1, d.WELCOME) + b"x" * 10)
        assert link.closed and "b" not in a.out
        fine = d.Link(a, True)
        fine.data_received(struct.pack(">IB", d.MAX_HANDSHAKE, d.WELCOME) + b"x" * 10)
        assert not fine.closed  # (waits for the rest)

    run(main)


# -- 12: the cutover marker's confirmation count ------------------------------------------------


def test_the_cutover_marker_is_confirmed_by_the_replies_to_its_own_publishes() -> None:
    """`Transport.cut_over` publishes what was queued and the marker (2 PUBLISHes
    here): the marker is confirmed once the publishing connection has those 2 more
    replies, not 4."""
    from collections import deque
    from types import SimpleNamespace

    from procreg.cluster.transport import Transport

    class Wire:  # (counts as `wire.Wire.send` does)
        sent = replies = 10
        closed = False

        def backlog(self) -> int:
            return 0

        def send(self, *commands: Any) -> None:
            self.sent += len(commands)

    t = Transport.__new__(Transport)
    t.store = SimpleNamespace(up=True, key=lambda *p: "procreg:" + ":".join(p))  # type: ignore[assignment]
    t._pub, t._waiting, t._out = Wire(), [], {"b": [b"queued"]}  # type: ignore[assignment]
    t._seq, t.key, t.name, t.creation, t._channels = 0, b"k" * 32, "a", 1, {}
    t._dests, t.sent_frames, t.dropped = deque(), 0, {}  # type: ignore[assignment]
    result = t.cut_over("b", 1)
    assert result is not None
    wire, target = result
    assert wire.sent == 12 and target == 12


# -- 15: a handshake that does not finish is closed --------------------------------------------


def test_a_hello_never_acked_is_closed_by_the_accepting_end() -> None:
    """A connection that sent a valid hello and never the ack (a replay, say) is
    closed by the accepting end after two heartbeat intervals; nothing of it stays."""
    from procreg.cluster import directlink as d

    async def main() -> None:
        b = _direct(KEY, "b", 7)
        await b.start()
        host, port = b.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_record(d.HELLO, d.signed(KEY, "hello", "a", 3, "b", 7, 1, "n" * 32)))
        ((kind, _),) = await _records(reader, 1)
        assert kind == d.WELCOME and len(b.pending) == 1
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by b
        assert not b.pending and not b.inbound
        writer.close()
        await b.close()

    run(main)
