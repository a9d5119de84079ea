"""Hostile frames on a node's channel, and a node with the wrong secret.

The test publishes straight onto ``procreg:ch:<node>`` with redis-py: every frame
that fails a check must be dropped, counted by reason, and never unpickled (one of
them carries a pickle that would create a directory when loaded), and the node must
go on working.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procreg.cluster.codec import (
    MAC_SIZE,
    MAGIC,
    BadFrame,
    decode_frame,
    encode_frame,
    pack_header,
    sign,
)

from .conftest import SECRET
from .harness import wait_for

pytestmark = pytest.mark.timeout(60)


class _Evil:
    """Unpickling this runs ``os.mkdir(path)``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _sign(body: bytes, key: bytes = SECRET.encode()) -> bytes:
    return body + hmac.new(key, body, hashlib.sha256).digest()


def _header(sender: str, creation: int, seq: int, dest: str) -> bytes:
    return pack_header(sender, creation, seq, dest)


def _capture(client, channel: str, trigger, timeout: float = 5.0) -> bytes:
    """The first frame published on `channel` after `trigger()`."""
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        deadline = time.monotonic() + timeout
        while True:  # the server confirmed the subscription
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "subscribe":
                break
            assert time.monotonic() < deadline, "no subscription"
        trigger()
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                return message["data"]
        raise AssertionError(f"no frame on {channel}")
    finally:
        with contextlib.suppress(Exception):
            pubsub.close()


def _dropped(node) -> dict[str, int]:
    return node.ok("stats")["dropped"]


def _plus(before: dict[str, int], extra: dict[str, int]) -> dict[str, int]:
    out = dict(before)
    for reason, n in extra.items():
        out[reason] = out.get(reason, 0) + n
    return out


def test_bad_frames_are_dropped_counted_and_never_unpickled(cluster, redis, tmp_path):
    n1, n2 = cluster(["n1", "n2"], pubsub_only=True)  # (frames captured in Redis)
    c1 = n1.ok("ping")["creation"]
    server = n2.ok("spawn", factory="Echo")
    assert n1.ok("call", pid=server, request=["echo", 1]) == 1
    client = redis.client()
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))

    # a real frame from n1 to n2 (it carries one cast), captured on its way
    frame = _capture(client, "procreg:ch:n2", lambda: n1.ok("cast", pid=server, msg="captured"))
    assert frame[:4] == MAGIC
    wait_for(
        lambda: n2.ok("call", pid=server, request=["log"]) == [["cast", "captured"]],
        5,
        what="the captured cast to arrive",
    )
    before_n1, before_n2 = _dropped(n1), _dropped(n2)

    frames = {
        "garbage": (b"certainly not a frame", "malformed"),
        "empty": (b"", "malformed"),
        "magic and noise": (MAGIC + os.urandom(100), "signature"),
        "truncated by a byte": (frame[:-1], "signature"),
        "truncated to a stub": (frame[:30], "malformed"),
        "forged (wrong key), evil item": (
            encode_frame(b"not-the-secret", "n1", c1, 10**9, "n2", [evil]),
            "signature",
        ),
        "unsigned, evil item": (
            _header("n1", c1, 10**9, "n2") + struct.pack(">I", len(evil)) + evil + bytes(MAC_SIZE),
            "signature",
        ),
        "signed, header shorter than its fixed fields": (
            _sign(MAGIC + struct.pack(">I", 15) + b'{"not":"list"}1'),
            "malformed",
        ),
        "signed, sender's name past the header": (
            _sign(MAGIC + struct.pack(">I", 20) + struct.pack(">QQH", c1, 10**9, 500) + b"n1"),
            "malformed",
        ),
        "signed, sender's name not UTF-8": (
            _sign(
                MAGIC
                + struct.pack(">I", 22)
                + struct.pack(">QQH", c1, 10**9, 2)
                + b"\xff\xfe"
                + b"n2"
            ),
            "malformed",
        ),
        "signed, header length past the end": (
            _sign(MAGIC + struct.pack(">I", 10**6) + b"[]"),
            "malformed",
        ),
        "signed, evil item then a broken length": (
            _sign(
                _header("n1", c1, 10**9, "n2")
                + struct.pack(">I", len(evil))
                + evil
                + struct.pack(">I", 1000)
                + b"xx"
            ),
            "malformed",
        ),
        "signed, stale creation": (
            encode_frame(
                SECRET.encode(),
                "n1",
                c1 - 1,
                10**9,
                "n2",
                [pickle.dumps((2, tuple(server), "stale"))],
            ),
            "stale",
        ),
        "replayed": (frame, "replay"),
    }
    expected: dict[str, int] = {}
    for payload, reason in frames.values():
        client.publish("procreg:ch:n2", payload)
        expected[reason] = expected.get(reason, 0) + 1
    # the real frame, signed for n2, published on n1's channel
    client.publish("procreg:ch:n1", frame)

    wait_for(lambda: _dropped(n2) == _plus(before_n2, expected), 5, what="n2's counters")
    wait_for(lambda: _dropped(n1) == _plus(before_n1, {"misaddressed": 1}), 5, what="n1's counters")
    time.sleep(0.2)  # nothing more trickles in
    assert _dropped(n2) == _plus(before_n2, expected)
    assert not marker.exists(), "a pickle from a rejected frame was loaded"
    # the node is unharmed and saw the captured cast once, not the stale one
    assert n1.ok("call", pid=server, request=["log"]) == [["cast", "captured"]]
    back = n1.ok("spawn", factory="Echo")
    assert n2.ok("call", pid=back, request=["echo", "still fine"]) == "still fine"


def test_a_node_with_another_secret_is_refused_and_cannot_talk_to_the_others(cluster, redis):
    n1, n2 = cluster(["n1", "n2"], pubsub_only=True)  # (frames captured in Redis)
    # refused at join: the secret's fingerprint differs from the cluster's
    (refused,) = cluster(["n3"], secret="some-other-secret", wait=False)
    with pytest.raises(AssertionError, match="another cluster secret"):
        refused.wait_ready()
    # with that check out of the way (the fingerprint key deleted), it joins, but
    # its frames and ours are dropped both ways
    with contextlib.closing(redis.client()) as client:
        client.delete("procreg:fingerprint")
    (n3,) = cluster(["n3"], secret="some-other-secret")
    # the store is shared, so it joins and sees the registry...
    p1 = n1.ok("register", key="on-n1")
    assert n3.ok("whereis", key="on-n1") == p1
    p3 = n3.ok("spawn", factory="Echo")
    # ... but none of its frames is accepted, and it accepts none
    answer = n3.req("call", pid=p1, request=["echo", 1], timeout=1.0)
    assert answer["error"] == "CallTimeout", answer
    answer = n1.req("call", pid=p3, request=["echo", 1], timeout=1.0)
    assert answer["error"] == "CallTimeout", answer
    n3.ok("cast", pid=p1, msg="from the wrong secret")
    wait_for(lambda: _dropped(n1).get("signature", 0) >= 2, 5, what="n1 to drop n3's frames")
    wait_for(lambda: _dropped(n3).get("signature", 0) >= 1, 5, what="n3 to drop n1's frames")
    assert n1.ok("call", pid=p1, request=["log"]) == []
    # the nodes with the right secret are unaffected
    assert n2.ok("call", pid=p1, request=["echo", 2]) == 2


@given(key=st.binary(min_size=1, max_size=200), body=st.binary(max_size=3000))
def test_frames_are_signed_with_hmac_sha256(key: bytes, body: bytes) -> None:
    """`codec.sign` (pads prepared once per key) is HMAC-SHA256, keys longer than a
    block included, and a frame's last 32 bytes are that MAC of the rest."""
    assert sign(key, body) == hmac.digest(key, body, "sha256")
    frame = encode_frame(key, "n1", 7, 1, "n2", [body])
    assert frame[-MAC_SIZE:] == hmac.digest(key, frame[:-MAC_SIZE], "sha256")
    assert decode_frame(key, frame, "n2") == ("n1", 7, 1, [body])


@given(
    items=st.lists(st.binary(max_size=40), max_size=4),
    edits=st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10**4),
    noise=st.binary(max_size=60),
)
def test_the_frame_parser_only_accepts_well_formed_frames(
    items: list[bytes], edits: list[tuple[int, int]], cut: int, noise: bytes
) -> None:
    """Fuzz `decode_frame` with frames *signed with the right key* whose body was
    edited, truncated or is noise after the magic: it raises `BadFrame` or returns
    items that lie inside the frame, never another error (the receiving I/O callback
    only catches `BadFrame`)."""
    key = SECRET.encode()
    body = bytearray(encode_frame(key, "n1", 7, 3, "n2", items)[:-MAC_SIZE])
    for pos, value in edits:
        body[pos % len(body)] = value
    for candidate in (bytes(body), bytes(body[: cut % (len(body) + 1)]), MAGIC + noise):
        try:
            sender, creation, seq, got = decode_frame(key, candidate + sign(key, candidate), "n2")
        except BadFrame:
            continue
        assert isinstance(sender, str) and creation >= 0 and seq >= 0
        assert sum(4 + len(i) for i in got) <= len(candidate)
