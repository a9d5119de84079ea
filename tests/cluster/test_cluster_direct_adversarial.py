"""Adversarial tests of the direct node-to-node path (``listen=``, issue 18).

Bugs found (each test below failed on the code before its fix):

1. A late ``RESET`` ended links set up in the window after a loss on one side only.
   Node a loses its direct connection to b: a ends its side of every link with b
   and sends a ``RESET`` (on pub/sub, through Redis). Until b has handled it, b
   still links its processes to a's (the ``LINK`` goes on b's own path to a, which
   is fine): a attaches them, then b's ``RESET`` handling ends b's side with
   ``noconnection`` — and a's process stays linked to b's for good (when b's
   process ends, no exit signal comes; a's process is never told). Fix: the node
   that handles a ``RESET`` tells the sender, for each link it ended, with a
   ``LINK_EXIT`` of reason ``noconnection`` (after everything it sent before), so a
   link the sender attached in the window ends on its side too
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
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from procreg.testing import FaultProxy

from .harness import NodeProc, free_port, wait_for
from .test_cluster_direct import direct_url, stats, warm

pytestmark = pytest.mark.timeout(120)

LEASE = 1.0


@pytest.fixture
def b_proxy() -> Iterator[tuple[int, FaultProxy]]:
    """A port for node b to listen on, and a fault proxy in front of it."""
    port = free_port()
    proxy = FaultProxy(port).start()
    try:
        yield port, proxy
    finally:
        proxy.stop()


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
