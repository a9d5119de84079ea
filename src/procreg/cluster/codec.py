"""What crosses the cluster: the secret, signed frames, canonical keys and pids.

A *frame* carries the messages one node sends another in one loop turn::

    MAGIC(4) | header length (u32) | header | body | HMAC-SHA256(32)

The header is ``creation (u64) | seq (u64) | len(sender) (u16) | sender | dest``
(the sender's creation; names in UTF-8; `pack_header`); the body is a sequence of
length-prefixed items, each a pickle made at the call site (so an unpicklable message
fails there, with a `TypeError`). The MAC covers everything before it. A receiver
checks the MAC first (constant time), then the header, and unpickles only a frame that
passed every check: unsigned, badly signed, truncated, misaddressed or replayed frames
are dropped without touching `pickle`.

Keys that cross the cluster must be canonical values (str, int, bytes, bool, None,
float, and tuples of these): `canon` turns one into a string that is equal for equal
keys and decodes back with `uncanon`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import os
import pickle
import secrets
import struct
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Final, cast

from ..errors import ClusterUnavailable
from ..pid import Pid

__all__ = [
    "CUT",
    "BadFrame",
    "as_text",
    "canon",
    "cut_marker",
    "decode_frame",
    "encode_frame",
    "fingerprint",
    "load_secret",
    "pack_header",
    "pack_item",
    "pid_from_str",
    "pid_str",
    "salvage",
    "sign",
    "uncanon",
]

MAGIC: Final = b"PRG2"  # PRG1 had a JSON header
_U32: Final = struct.Struct(">I")
_HEAD: Final = struct.Struct(">QQH")  # creation, seq, length of the sender's name
_BLOCK: Final = 64  # SHA-256's block size (bytes)


@functools.lru_cache(maxsize=8)
def _pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states that have absorbed the key's inner and outer pads (RFC 2104):
    copying them signs a frame without keying a new HMAC each time."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def sign(key: bytes, body: bytes | memoryview) -> bytes:
    """HMAC-SHA256 of `body` under `key` (what ``hmac.digest(key, body, "sha256")``
    gives, from states prepared once per key)."""
    inner, outer = _pads(key)
    h = inner.copy()
    h.update(body)
    o = outer.copy()
    o.update(h.digest())
    return cast(bytes, o.digest())


MAC_SIZE: Final = 32
MAX_FRAME: Final = 64 * 1024 * 1024


class BadFrame(Exception):
    """A frame failed a check; `reason` says which (for the counters)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the secret -----------------------------------------------------------------


def load_secret(
    secret: str | bytes | None = None, path: str | os.PathLike[str] | None = None
) -> bytes:
    """The cluster secret: `secret`, else env ``PROCREG_SECRET``, else the file
    ``~/.procreg.secret`` (or `path`), created with mode 0600 on first use with 32
    random bytes — like Erlang's cookie."""
    if secret is not None:
        value = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not value:
            raise ValueError("the cluster secret must not be empty")
        return value
    env = os.environ.get("PROCREG_SECRET")
    if env:
        return env.encode()
    try:
        file = Path(path) if path is not None else Path.home() / ".procreg.secret"
        return _secret_file(file)
    except (OSError, RuntimeError) as exc:  # no HOME, or one we cannot write
        raise ClusterUnavailable(
            f"no cluster secret: {exc}. Give every node of the cluster the same secret "
            'with PROCREG_SECRET=<random text> (e.g. from `python -c "import secrets; '
            'print(secrets.token_hex(32))"`) or Node(secret=...)'
        ) from exc


def fingerprint(key: bytes) -> str:
    """A short public fingerprint of the cluster secret (HMAC-SHA256 of a fixed
    label, 16 hex digits): nodes compare it at join to refuse a different secret
    without ever revealing the secret itself."""
    return hmac.new(key, b"procreg secret fingerprint v1", hashlib.sha256).hexdigest()[:16]


def _secret_file(file: Path) -> bytes:
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = file.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(
                f"{file} must be readable by its owner only (chmod 600), it is {oct(mode)}"
            ) from None
        value = file.read_bytes().strip()
        if not value:
            raise ValueError(f"{file} is empty") from None
        return value
    with os.fdopen(fd, "wb") as out:
        value = secrets.token_hex(32).encode()
        out.write(value)
    return value


# -- frames -------------------------------------------------------------------------


class Placeholder:
    """Stands for an object `salvage` could not rebuild (its class could not be
    imported here); `name` is ``module.qualname`` of that class."""

    name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<undecodable {self.name}>"


class _Salvager(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception:
            return type("Placeholder", (Placeholder,), {"name": f"{module}.{name}"})


def salvage(raw: bytes) -> Any:
    """Unpickle `raw` with a `Placeholder` for every class that cannot be imported,
    so that an item whose payload is undecodable still tells what it was (a call and
    its id, say). Raises if even that fails."""
    return _Salvager(io.BytesIO(raw)).load()


def pack_item(item: tuple[Any, ...]) -> bytes:
    """Pickle one transport item, raising `TypeError` if it cannot cross the wire."""
    try:
        return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"a message to a remote process must be picklable: {exc}") from exc


def pack_header(sender: str, creation: int, seq: int, dest: str) -> bytes:
    """The part of a frame before its items: ``MAGIC | u32 header length | u64
    creation | u64 seq | u16 len(sender) | sender | dest`` (names in UTF-8)."""
    name = sender.encode()
    rest = _HEAD.pack(creation, seq, len(name)) + name + dest.encode()
    return MAGIC + _U32.pack(len(rest)) + rest


def encode_frame(
    key: bytes, sender: str, creation: int, seq: int, dest: str, items: list[bytes]
) -> bytes:
    """Sign and frame `items` (already pickled) from `sender` to `dest`."""
    parts = [pack_header(sender, creation, seq, dest)]
    for item in items:
        parts.append(_U32.pack(len(item)))
        parts.append(item)
    body = b"".join(parts)
    return body + sign(key, body)


CUT: Final = b"PRGC"  # the one item of a cutover marker (`direct`): CUT | u64 session


def cut_marker(session: int) -> bytes:
    """The item of a cutover marker for direct session `session` (not a pickle)."""
    return CUT + struct.pack(">Q", session)


def decode_frame(key: bytes, frame: bytes, me: str | bytes) -> tuple[str, int, int, list[bytes]]:
    """Check a frame and return ``(sender, creation, seq, items)``; the items are
    still pickles. `me` is this node's name (UTF-8 encoded, or a str). Raises
    `BadFrame` (without unpickling anything)."""
    if not isinstance(frame, (bytes, bytearray)):
        raise BadFrame("type")
    size = len(frame)
    if size > MAX_FRAME:
        raise BadFrame("size")
    end = size - MAC_SIZE
    if end < 8 or frame[:4] != MAGIC:
        raise BadFrame("malformed")
    view = memoryview(frame)
    if not hmac.compare_digest(sign(key, view[:end]), view[end:]):
        raise BadFrame("signature")
    (hlen,) = _U32.unpack_from(frame, 4)
    start = 8 + hlen
    names = 8 + _HEAD.size
    if hlen < _HEAD.size or start > end:
        raise BadFrame("malformed")
    creation, seq, slen = _HEAD.unpack_from(frame, 8)
    if names + slen > start:
        raise BadFrame("malformed")
    if isinstance(me, str):
        me = me.encode()
    if frame[names + slen : start] != me:
        raise BadFrame("misaddressed")
    try:
        sender = frame[names : names + slen].decode()
    except UnicodeDecodeError:
        raise BadFrame("malformed") from None
    items: list[bytes] = []
    pos = start
    unpack = _U32.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise BadFrame("malformed")
        (n,) = unpack(frame, pos)
        pos += 4
        if pos + n > end:
            raise BadFrame("malformed")
        items.append(frame[pos : pos + n])
        pos += n
    return sender, creation, seq, items


# -- canonical keys -------------------------------------------------------------------

_json_str: Final = json.encoder.encode_basestring


def canon(key: Hashable) -> str:
    """A string naming `key` across the cluster; `TypeError` for non-canonical keys.

    >>> canon(("room", 42, None))
    '("room",i42,N)'
    >>> uncanon(canon(("room", 42, None)))
    ('room', 42, None)
    """
    t = type(key)
    if t is str:
        # what json.dumps(key, ensure_ascii=False) gives (no `cast`: a call per key)
        return _json_str(key)  # type: ignore[arg-type]
    if isinstance(key, bool):
        return "T" if key else "F"
    if isinstance(key, int) and t is int:
        return f"i{key}"
    if key is None:
        return "N"
    if isinstance(key, float) and t is float:
        return f"f{float.hex(key)}"
    if isinstance(key, bytes) and t is bytes:
        return f"x{key.hex()}"
    if isinstance(key, tuple) and t is tuple:
        return "(" + ",".join(canon(k) for k in key) + ")"
    raise TypeError(
        "keys that cross the cluster must be str, int, bytes, bool, None, float or "
        f"tuples of these, got {t.__name__}: {key!r}"
    )


def uncanon(text: str) -> Hashable:
    """The key `canon` made `text` from."""
    value, pos = _parse(text, 0)
    if pos != len(text):
        raise ValueError(f"trailing data in canonical key {text!r}")
    return value


def _parse(text: str, pos: int) -> tuple[Hashable, int]:
    c = text[pos]
    if c == '"':
        decoder = json.JSONDecoder()
        value, end = decoder.raw_decode(text, pos)
        return value, end
    if c in "TFN":
        return {"T": True, "F": False, "N": None}[c], pos + 1
    if c in "ifx":
        end = pos + 1
        while end < len(text) and text[end] not in ",)":
            end += 1
        raw = text[pos + 1 : end]
        if c == "i":
            return int(raw), end
        if c == "f":
            return float.fromhex(raw), end
        return bytes.fromhex(raw), end
    if c == "(":
        items: list[Hashable] = []
        pos += 1
        if text[pos] == ")":
            return (), pos + 1
        while True:
            item, pos = _parse(text, pos)
            items.append(item)
            if text[pos] == ")":
                return tuple(items), pos + 1
            pos += 1  # ","
    raise ValueError(f"bad canonical key at {pos}: {text!r}")


# -- pids ------------------------------------------------------------------------------


def pid_str(pid: Pid) -> str:
    """``node\\tcreation\\tserial``: how the store writes a pid."""
    return f"{pid[0]}\t{pid[1]}\t{pid[2]}"


def pid_from_str(text: str) -> Pid:
    """The pid `pid_str` wrote."""
    node, creation, serial = text.split("\t")[:3]
    return Pid(node, int(creation), int(serial))


def as_text(value: Any) -> str:
    """A reply of the store as text (bytes are UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)
