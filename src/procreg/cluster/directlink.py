"""One direct connection between two nodes (`direct`): the record format on the
socket, the signed handshake records, and `Link`, the asyncio `Protocol` that parses
records in the I/O callback and hands them to its `direct.Direct`.

Records: ``u32 length | u8 type | payload``; the length covers the type and the
payload. Handshake records are tab-separated text fields followed by their
HMAC-SHA256 under the cluster secret (`signed`, `opened`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any, Final

from .codec import MAX_FRAME, sign

if TYPE_CHECKING:
    from .direct import Direct

__all__ = [
    "ACK",
    "BYE",
    "FRAME",
    "HELLO",
    "PING",
    "PONG",
    "REFUSE",
    "WELCOME",
    "Link",
    "opened",
    "signed",
    "wire_replies",
]

log = logging.getLogger("procreg.cluster")

_REC: Final = struct.Struct(">IB")  # length of type + payload, type
HELLO, WELCOME, ACK, FRAME, PING, PONG, BYE, REFUSE = range(1, 9)
MAX_RECORD: Final = MAX_FRAME + 1024
MAX_HANDSHAKE: Final = 4096  # bytes of a record before the handshake is done


def signed(key: bytes, *fields: object) -> bytes:
    """A handshake record's payload: `fields` as tab-separated text (``str`` of
    each; the first names the record, e.g. ``"hello"``), then its HMAC-SHA256 under
    `key` (32 bytes, `codec.sign`). `opened` reads it back."""
    text = "\t".join(str(f) for f in fields).encode()
    return text + sign(key, text)


def opened(key: bytes, payload: bytes, kind: str) -> list[str] | None:
    """The fields of a signed handshake record, or None if its MAC is wrong."""
    text, mac = payload[:-32], payload[-32:]
    if len(payload) < 33 or not hmac.compare_digest(sign(key, text), mac):
        return None
    try:
        fields = text.decode().split("\t")
    except UnicodeDecodeError:
        return None
    return fields if fields[0] == kind else None


def wire_replies(wire: object) -> int:
    """Replies received so far on a publishing connection (`wire.Wire`)."""
    return int(getattr(wire, "replies", 0))


class Link(asyncio.Protocol):
    """One direct connection, either end: `outbound` (we send frames on it) or
    accepted (we receive them)."""

    def __init__(self, direct: Direct, outbound: bool) -> None:
        self.direct = direct
        self.outbound = outbound
        self.peer = ""
        self.creation = 0  # the peer's
        self.session = 0
        self.nonce = secrets.token_hex(16)
        self.up = False  # outbound: frames go here; accepted: the ack came
        self.marked = False  # accepted: the cutover marker came (frames are released)
        self.held: list[bytes] = []  # accepted: frames before the marker
        self.held_bytes = 0
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.opened = time.monotonic()
        self.heard = self.opened
        self.probed = 0.0  # outbound: the oldest unanswered heartbeat
        # outbound: (publishing connection, its reply count once our cutover marker is
        # confirmed) until it is
        self.marker: tuple[Any, int] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:  # closed while connecting (fenced, a new creation, peer down)
            transport.abort()
        elif not self.outbound and not self.direct.accepted(self):
            self.closed = True
            transport.abort()

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        direct = self.direct
        direct.transport.guard()  # woken past our lease deadline: fence first
        while size - pos >= 5 and not self.closed:
            length, kind = _REC.unpack_from(buf, pos)
            # (only frames are big, and only an accepted connection whose handshake is
            # done gets them: a stranger, or whatever answers at a peer's address,
            # must not make us buffer megabytes)
            big = self.up and not self.outbound
            if length > (MAX_RECORD if big else MAX_HANDSHAKE) or length < 1:
                self.lose("a bad record length")
                return
            if size - pos - 4 < length:
                break
            payload = bytes(buf[pos + 5 : pos + 4 + length])
            pos += 4 + length
            try:
                direct.record(self, kind, payload)
            except Exception:
                log.exception("handling a direct record from %s failed", self.peer or "?")
        del buf[:pos]
        if not self.outbound and not self.closed:
            direct.transport.flush_now()  # what the frames made (replies) leaves now

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.lose("closed by the peer" if exc is None else repr(exc))

    # -- writing -------------------------------------------------------------------------
    def write(self, kind: int, payload: bytes) -> None:
        """Write one record (`kind`, `payload`) on the socket; nothing if the link
        is closed or not connected yet. Never blocks: see `backlog`."""
        if self.transport is not None and not self.closed:
            self.transport.write(_REC.pack(len(payload) + 1, kind) + payload)

    def backlog(self) -> int:
        """Bytes written but not yet taken by the socket (0 if not connected)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self, bye: bool = True) -> None:
        """End quietly (no `on_lost`): a goodbye, then close."""
        if self.closed:
            return
        if bye:
            self.write(BYE, b"")
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.direct.forget(self)

    def lose(self, why: str) -> None:
        """End as lost: frames may be gone (`Direct.lost`)."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.direct.lost(self, why)
