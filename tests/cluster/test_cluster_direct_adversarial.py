"""Adversarial tests of the direct node-to-node path (``listen=``, issue 18).

Nodes are OS processes (`harness.NodeProc`); a fault between two nodes is a
`FaultProxy` in front of a node's listen port, advertised with ``advertise=``.

Bugs found (each test named failed on the code before its fix):

1. A late ``RESET`` ended links set up in the window after a loss on one side only.
   Node a loses its direct connection to b: a ends its side of every link with b
   and sends a ``RESET`` (on pub/sub, through Redis). Until b has handled it, b
   still links its processes to a's (the ``LINK`` goes on b's own path to a): a
   attaches them, then b's ``RESET`` handling ends b's side with ``noconnection`` —
   and a's process stays linked to b's for good (when b's process ends, no exit
   signal comes). 28 of 120 links were left so. Fix: the node that handles a
   ``RESET`` tells the sender of each link it ended (a new item, ``LINK_LOST``: the
   sender's side gets ``noconnection`` if it still has the link) and of each of its
   monitors (``DEMONITOR``), after everything it sent before
   (`Remote.node_down(..., tell=True)`).
   Test: `test_links_set_up_while_a_reset_is_in_flight_end_on_both_sides`.

2. A client that connects to the listen port and never sends a hello (or trickles
   bytes of one) kept its socket open for good: only connections that had sent a
   valid hello were checked for silence, so strangers could pile up until the node
   ran out of file descriptors. Fix: accepted connections without a valid hello are
   closed two heartbeat intervals after they opened (as is one whose handshake did
   not finish), and at most `direct.MAX_STRANGERS` wait at a time (more are refused).
   Test: `test_garbage_and_silent_clients_on_the_listen_socket_do_not_hurt_the_node`
   (garbage, a 4 GiB length prefix, a frame before the handshake and an oversized
   handshake record were already dropped: that part held).

3. A store outage left a silent gap followed by later frames. Frames made while the
   store is down are dropped; the re-sync after it ends our side of every link and
   monitor and sends each peer a ``RESET`` — but only after its membership step's
   round trips, and frames made meanwhile went out at once (on a direct connection
   that stayed up, or on pub/sub), so the peer delivered frames made after the gap
   before it learned of the gap (3 runs of 3 failed). Fix: the re-sync sends the
   ``RESET`` s in the callback that marks the store up, before anything else can be
   sent (`fencing.resync`); a re-sync whose step failed no longer loses them either.
   Test: `test_a_store_outage_under_direct_streams_leaves_no_silent_gap`.

4. ``listen=0.0.0.0:PORT`` (or ``::``) without ``advertise=`` was accepted and the
   wildcard published as the node's address: no other machine can connect to it,
   connect failures are logged at DEBUG only, and every frame quietly kept going
   through Redis. Fix: such a URL is refused when parsed (``advertise=`` required,
   and never a wildcard itself). Test:
   `test_bad_listen_and_advertise_values_are_clear_errors` (the other bad values
   there already gave clear errors: that part held).

5. Every refused handshake logged a warning: a scanner or a node with another
   secret connecting in a loop flooded the log (200 lines for 200 tries in 0.08 s).
   Fix: at most one warning a second, with the count refused so far (the count in
   ``Direct.counts["refused"]`` is kept as before). Test:
   `test_a_flood_of_refused_hellos_is_logged_at_most_once_a_second`.

6. Our end of a connection we opened accepted records up to the frame size (64
   MiB) from the other end at any time, though the accepting end only ever sends
   small handshake and heartbeat records: whatever answered at a peer's published
   address (an impostor, another service on that port) could make us buffer 64 MiB
   per attempt. Fix: only an accepted connection whose handshake is done takes
   records over 4 KiB. Test:
   `test_an_impostor_at_a_peer_address_cannot_make_us_buffer_a_big_record`.

Attacks that held (kept as cheap regression tests): a pair flapped six times both
ways (reset, frozen) while streaming casts and calls
(`test_a_flapping_pair_keeps_order_and_never_loses_a_frame_silently`). Not kept:
the proxy's ``blackhole`` healed before the loss is noticed drops bytes in the
middle of a TCP stream and then forwards again, which no TCP path does; the direct
path (like the pub/sub one) then delivers the frames after the hole with no
disconnection — its per-connection framing trusts TCP.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from procreg.testing import FaultProxy

from .harness import NodeProc, free_port, wait_for
from .test_cluster_direct import direct_url, stats, warm

pytestmark = pytest.mark.timeout(120)

LEASE = 1.0


def _b_behind(cluster: Any, redis: Any, b_proxy: Any, a_url: str = "") -> tuple[NodeProc, NodeProc]:
    """Nodes a and b, both listening; a's connection to b goes through `b_proxy`, b's
    to a does not; a reaches Redis at `a_url` (default: directly)."""
    port, proxy = b_proxy
    (b,) = cluster(
        ["b"],
        lease=LEASE,
        url=direct_url(redis.url, f"listen=127.0.0.1:{port}&advertise=127.0.0.1:{proxy.port}"),
    )
    (a,) = cluster(["a"], lease=LEASE, url=direct_url(a_url or redis.url))
    return a, b


def test_links_set_up_while_a_reset_is_in_flight_end_on_both_sides(
    cluster: Any, redis: Any, proxy: FaultProxy, b_proxy: Any
) -> None:
    """b links a stream of its processes (trapping exits) to a process on a while
    a's direct connection to b is cut; a's ``RESET`` reaches b late (a's Redis is
    slowed). Afterwards every link is either whole on both sides or gone on both:
    the number of links a's process holds equals the number of b's processes that
    did not get ``noconnection``."""
    a, b = _b_behind(cluster, redis, b_proxy, a_url=proxy.url())
    cut = b_proxy[1]
    (ea,) = a.ok("link_stream", target=None, n=1)  # (traps exits: outlives the cut)
    eb = b.ok("spawn", factory="Echo")
    warm(a, b, eb)
    warm(b, a, a.ok("spawn", factory="Echo"))
    proxy.delay(0.15)  # a's RESET reaches b 0.15 s (or more) after a's loss
    stream = b.send("link_stream", target=ea, n=120, pace=0.005)
    time.sleep(0.2)
    cut.reset()  # a's connection to b: lost
    pids = stream.result(30)
    wait_for(lambda: stats(a)["direct"]["lost"] >= 1, 10, what="a saw the loss")
    proxy.delay(0)
    time.sleep(1.0)  # the RESET and what follows it have arrived
    got = b.ok("link_stream_state", pids=pids)
    cut_off = sum(1 for reasons in got if any("noconnection" in r for r in reasons))
    assert cut_off, "the cut ended no link: the attack missed its window"
    held = a.ok("info", pid=ea)["links"]
    wait_for(
        lambda: a.ok("info", pid=ea)["links"] == len(pids) - cut_off,
        10,
        what=(
            f"a's process to hold exactly the links b still has ({len(pids) - cut_off}; "
            f"it held {held}, b's side of {cut_off} got noconnection)"
        ),
    )


def _gaps_explained(log: list[Any]) -> tuple[bool, str]:
    """The numbers in `log` (``["seq", i]``) strictly increase, and every gap between
    two of them has a ``noconnection`` exit signal logged between them, or the
    process was not linked for part of that time (it re-linked between them after a
    ``noconnection`` logged before the first: a disconnection while it was not
    linked has nothing to tell it)."""
    last, cut, gone = -1, False, False
    for entry in log:
        if entry[0] == "cut":
            cut = cut or "noconnection" in entry[1]
            continue
        if entry[0] in ("relinked", "unlinked"):
            cut = True
            gone = gone or entry[0] == "unlinked"  # (the sender's node went down)
            continue
        n = entry[1]
        if n <= last:
            return False, f"{n} after {last}: out of order or twice"
        if n != last + 1 and not cut:
            return False, f"a silent gap: {n} after {last}, no noconnection between"
        last, cut = n, gone
    return True, f"last {last}"


def _streams(a: NodeProc, b: NodeProc, n: int) -> tuple[list[Any], list[Any]]:
    """Warm the direct path both ways, then stream `n` numbered casts each way to a
    `cmd_gap_watch` process linked to a process on the sender. Returns
    ``([b's gap watcher, a's], [a's stream, b's])``."""
    (anchor_a,) = a.ok("link_stream", target=None, n=1)
    (anchor_b,) = b.ok("link_stream", target=None, n=1)
    gap_b = b.ok("gap_watch", anchor=anchor_a)  # receives a's stream
    gap_a = a.ok("gap_watch", anchor=anchor_b)  # receives b's stream
    warm(a, b, b.ok("spawn", factory="Echo"))
    warm(b, a, a.ok("spawn", factory="Echo"))
    streams = [
        a.send("cast_paced", pid=gap_b, n=n, every=5, pace=0.004),
        b.send("cast_paced", pid=gap_a, n=n, every=5, pace=0.004),
    ]
    return [gap_b, gap_a], streams


def _check_streams(a: NodeProc, b: NodeProc, gaps: list[Any], streams: list[Any], n: int) -> None:
    """Both streams ended and arrived in order, every gap explained (`_gaps_explained`)."""
    for stream in streams:
        assert stream.result(60) == n
    _settle_and_check(b, gaps[0], n, a, b)
    _settle_and_check(a, gaps[1], n, a, b)


def _settle_and_check(receiver: NodeProc, gap: Any, n: int, a: NodeProc, b: NodeProc) -> None:
    """Wait until `receiver`'s gap watcher got the last cast (or, if a node fenced and
    the rest went to a dead pid, nothing more for half a second); then check its log
    (`_gaps_explained`)."""
    seen: list[int] = []

    def settled() -> bool:
        log = receiver.ok("gap_log", pid=gap)
        seen.append(len(log))
        return log[-1:] == [["seq", n - 1]] or (len(seen) > 2 and seen[-3:] == [seen[-1]] * 3)

    wait_for(settled, 20, interval=0.25, what=f"the stream to {receiver.name} to settle")
    log = receiver.ok("gap_log", pid=gap)
    ok, why = _gaps_explained(log)
    marks: list[Any] = []
    for e in log:
        if e[0] != "seq":
            marks.append(e[0])
        elif marks and isinstance(marks[-1], list) and marks[-1][1] == e[1] - 1:
            marks[-1][1] = e[1]
        else:
            marks.append([e[1], e[1]])
    assert ok, f"{receiver.name}: {why}; {marks}; a: {stats(a)}; b: {stats(b)}"


def test_a_store_outage_under_direct_streams_leaves_no_silent_gap(
    cluster: Any, redis: Any, proxy: FaultProxy
) -> None:
    """Redis restarted (its data lost) while two nodes stream
    numbered casts to each other over the direct path: frames made while the store
    is down are dropped, and the receiver must learn of it (``noconnection``, from
    the re-sync's ``RESET``) before any later frame is delivered. The nodes reach
    Redis through a proxy that delays it a little, so that the re-sync's round
    trips take a while (frames made meanwhile went direct, ahead of the
    ``RESET``)."""
    a, b = cluster(["a", "b"], lease=2.0, url=direct_url(proxy.url()))
    n = 2500
    gaps, streams = _streams(a, b, n)
    proxy.delay(0.03)
    time.sleep(0.4)
    redis.restart()
    time.sleep(1.0)
    proxy.delay(0)
    _check_streams(a, b, gaps, streams, n)


def test_a_reset_lost_with_a_frozen_store_connection_is_sent_again(
    cluster: Any, redis: Any, proxy: FaultProxy, b_proxy: Any
) -> None:
    """a's connections to Redis freeze (half-open) and, at once, its direct
    connection to b is cut: the ``RESET`` a sends b is written on the frozen
    publishing connection and lost. a notices the silence, reconnects and re-syncs:
    b must get a ``RESET`` then (a gap in a's stream comes after a
    ``noconnection``), although a had already forgotten its links with b."""
    port, cut = b_proxy
    (b,) = cluster(
        ["b"],
        lease=2.0,
        url=direct_url(redis.url, f"listen=127.0.0.1:{port}&advertise=127.0.0.1:{cut.port}"),
    )
    (a,) = cluster(["a"], lease=2.0, url=direct_url(proxy.url()))
    n = 2500
    gaps, streams = _streams(a, b, n)
    time.sleep(0.4)
    proxy.freeze()  # a's open connections to Redis go silent; new ones pass
    cut.reset()
    wait_for(lambda: stats(a)["store_failures"] >= 1, 10, what="a noticed the silence")
    cut.heal()
    _check_streams(a, b, gaps, streams, n)


def test_a_flapping_pair_keeps_order_and_never_loses_a_frame_silently(
    cluster: Any, redis: Any, b_proxy: Any
) -> None:
    """Both directions of a pair go through a proxy that is reset or frozen (a
    half-open connection) and healed, six times, while each node streams numbered
    casts to a process of the other and calls it: each receiver sees strictly
    increasing numbers, every gap comes after a ``noconnection`` (its link to the
    sender's process, re-armed after each one), and every call answers or fails
    with `NodeDown` (none hangs until its timeout)."""
    a_port = free_port()
    a_proxy = FaultProxy(a_port).start()
    try:
        port, b_prox = b_proxy
        (b,) = cluster(
            ["b"],
            lease=LEASE,
            url=direct_url(redis.url, f"listen=127.0.0.1:{port}&advertise=127.0.0.1:{b_prox.port}"),
        )
        (a,) = cluster(
            ["a"],
            lease=LEASE,
            url=direct_url(
                redis.url, f"listen=127.0.0.1:{a_port}&advertise=127.0.0.1:{a_proxy.port}"
            ),
        )
        n = 3000
        gaps, streams = _streams(a, b, n)
        echo_b, echo_a = b.ok("spawn", factory="Echo"), a.ok("spawn", factory="Echo")
        calls = []
        for i in range(6):
            time.sleep(0.3)
            calls += [a.send("call", pid=echo_b, request=["echo", i], timeout=5)]
            calls += [b.send("call", pid=echo_a, request=["echo", i], timeout=5)]
            for p in (a_proxy, b_prox):
                # (not `blackhole`: the proxy drops bytes in the middle of a TCP
                # stream and then forwards again, which no TCP path does)
                p.reset() if i % 2 == 0 else p.freeze()
            time.sleep(0.1 + 0.15 * (i % 3))
            for p in (a_proxy, b_prox):
                p.heal()
        for stream in streams:
            assert stream.result(60) == n
        for call in calls:
            answer = call.wait(20)
            assert answer["ok"] or answer["error"] == "NodeDown", answer
        _check_streams(a, b, gaps, streams, n)
    finally:
        a_proxy.stop()


def _records(*pairs: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack(">IB", len(p) + 1, k) + p for k, p in pairs)


def test_garbage_and_silent_clients_on_the_listen_socket_do_not_hurt_the_node(
    cluster: Any, redis: Any
) -> None:
    """Clients that send garbage, a 4 GiB length prefix, a frame before any
    handshake, a handshake record of 1 MB, or connect and never speak: the node
    drops them (the silent ones within a few heartbeat intervals) and goes on
    serving calls over the direct path."""
    a, b = cluster(["a", "b"], lease=LEASE, url=direct_url(redis.url))
    echo = b.ok("spawn", factory="Echo")
    warm(a, b, echo)
    host, port = stats(b)["direct"]["address"]
    payloads = [
        b"GET / HTTP/1.0\r\n\r\n",
        struct.pack(">IB", 0xFFFFFFFF, 4),
        _records((4, b"PRG2" + b"\0" * 64)),
        struct.pack(">IB", 1 << 20, 1) + b"x" * 65536,
        b"",
    ]
    socks = []
    for payload in payloads * 10:
        s = socket.create_connection((host, port), timeout=5)
        if payload:
            s.sendall(payload)
        socks.append(s)
    try:
        for i in range(20):
            assert a.ok("call", pid=echo, request=["echo", i]) == i

        def closed(s: socket.socket) -> bool:
            s.settimeout(0.01)
            try:
                return s.recv(65536) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        wait_for(
            lambda: all(closed(s) for s in socks),
            15,
            what="every stranger dropped",
            explain=lambda: [i % len(payloads) for i, s in enumerate(socks) if not closed(s)],
        )
        assert a.ok("call", pid=echo, request=["echo", "after"]) == "after"
        assert "b" in stats(a)["direct"]["up"]
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("listen=0.0.0.0:7000", "give advertise=HOST:PORT"),
        ("listen=[::]:7000", "give advertise=HOST:PORT"),
        ("listen=0.0.0.0:7000&advertise=0.0.0.0:7000", "advertise=0.0.0.0 is a wildcard"),
        ("listen=:7000", "must be host:port"),
        ("listen=127.0.0.1:70000", "must be host:port"),
        ("listen=127.0.0.1:x", "must be host:port"),
        ("advertise=127.0.0.1:7000", "needs listen="),
        ("listen=127.0.0.1:0&advertise=127.0.0.1:0", "port other than 0"),
    ],
)
def test_bad_listen_and_advertise_values_are_clear_errors(query: str, error: str) -> None:
    """A URL whose ``listen=`` / ``advertise=`` cannot work is refused when parsed,
    saying why — a wildcard listen address without ``advertise=`` used to be
    published as is, so no other machine could connect and every frame quietly
    went through Redis."""
    from procreg.cluster.url import parse_url

    with pytest.raises(ValueError, match=error):
        parse_url(f"redis://127.0.0.1:6379/0?{query}")
    assert parse_url("redis://h/0?listen=0.0.0.0:7000&advertise=10.0.0.5:7000").advertise == (
        "10.0.0.5",
        7000,
    )


def test_a_flood_of_refused_hellos_is_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 connections with a hello signed under another secret: each is refused
    and counted, but the warning is logged at most once a second (a scanner or a
    misconfigured node must not flood the log)."""
    import asyncio
    import logging

    from procreg.cluster import directlink as d

    from .test_cluster_direct import _direct, _record, _records

    async def main() -> None:
        b = _direct(b"the-cluster-secret", "b", 7)
        await b.start()
        host, port = b.address
        bad = d.signed(b"another-secret", "hello", "a", 3, "b", 7, 1, "n" * 32)
        for _ in range(200):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_record(d.HELLO, bad))
            ((kind, _),) = await _records(reader, 1)
            assert kind == d.REFUSE
            writer.close()
        assert b.counts["refused"] == 200
        await b.close()

    with caplog.at_level(logging.WARNING, logger="procreg.cluster"):
        start = time.monotonic()
        asyncio.run(main())
        seconds = time.monotonic() - start
    refusals = [r for r in caplog.records if "refused a direct connection" in r.getMessage()]
    assert 1 <= len(refusals) <= seconds + 1, len(refusals)


def test_an_impostor_at_a_peer_address_cannot_make_us_buffer_a_big_record() -> None:
    """Whatever listens at a peer's published address (an impostor, another service
    on that port) answers our hello with a record that claims 48 MiB and then
    streams it: the accepting side of a connection never sends more than small
    handshake and heartbeat records, so our end drops the connection at the length
    prefix instead of buffering the record (before: up to 64 MiB per attempt)."""
    import asyncio

    from .test_cluster_direct import _direct

    written = [0]

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(5)  # (our hello's first bytes)
            writer.write(struct.pack(">IB", 48 << 20, 2))
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(48):
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), 5)
                    written[0] += len(chunk)
            except (OSError, TimeoutError):
                pass
            writer.close()
            done.set_result(None)

        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = _direct(b"the-cluster-secret", "a", 3)
        a.transport.peer_creation["b"] = 7
        a.addresses["b"] = (7, "127.0.0.1", port)
        a.want("b")
        await asyncio.wait_for(done, 30)
        assert "b" not in a.out  # dropped, backing off
        await a.close()
        server.close()

    asyncio.run(main())
    assert written[0] < 24 << 20, written[0]  # (the kernel's socket buffers take some)
