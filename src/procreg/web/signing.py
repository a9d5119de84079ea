"""Signed session cookies: ``<session id>.<HMAC-SHA256 of the id>``.

The id is random (144 bits from `secrets`); the signature proves that this server
issued it, so a browser can present only ids it was given. A cookie that does not
verify (tampered, made up, signed with another secret, malformed) is simply not a
session id: the middleware then issues a fresh one. Comparison is constant-time.

>>> signer = CookieSigner("a secret of the application")
>>> sid = new_session_id()
>>> value = signer.sign(sid)
>>> signer.unsign(value) == sid
True
>>> signer.unsign(value[:-1] + ("A" if value[-1] != "A" else "B")) is None
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets

__all__ = ["SECRET_ENV", "CookieSigner", "new_session_id", "resolve_secret"]

log = logging.getLogger("procreg.web")

SECRET_ENV = "PROCREG_WEB_SECRET"
"""The environment variable holding the session secret when none is passed."""

_SID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_CONTEXT = b"procreg.web session id v1:"
_process_secret: bytes | None = None


def new_session_id() -> str:
    """A new random session id (24 URL-safe characters, 144 bits)."""
    return secrets.token_urlsafe(18)


def resolve_secret(secret: str | bytes | None) -> bytes:
    """The secret to sign with: `secret`, else env ``PROCREG_WEB_SECRET``, else a random
    secret for this interpreter (logged as a warning: sessions then do not survive a
    restart, and several server processes would not accept each other's cookies)."""
    global _process_secret
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if secret is None:
        if _process_secret is None:
            _process_secret = secrets.token_bytes(32)
            log.warning(
                "procreg.web: no session secret given (secret= or env %s); using a random "
                "one for this process: sessions will not survive a restart",
                SECRET_ENV,
            )
        return _process_secret
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be str or bytes, not {type(secret).__name__}")
    if len(secret) < 16:
        raise ValueError("the session secret must be at least 16 bytes long")
    return secret


class CookieSigner:
    """Signs session ids with HMAC-SHA256 under a key derived from `secret`."""

    def __init__(self, secret: str | bytes | None = None) -> None:
        raw = resolve_secret(secret)
        self._key = hmac.new(raw, b"procreg.web cookie signing key", hashlib.sha256).digest()

    def _mac(self, sid: str) -> str:
        digest = hmac.new(self._key, _CONTEXT + sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, sid: str) -> str:
        """The cookie value for session id `sid`."""
        return f"{sid}.{self._mac(sid)}"

    def unsign(self, value: str | None) -> str | None:
        """The session id in a cookie value, or None if the value does not verify."""
        if not value or len(value) > 200:
            return None
        sid, dot, mac = value.rpartition(".")
        if not dot or not _SID.fullmatch(sid):
            return None
        if not hmac.compare_digest(self._mac(sid).encode(), mac.encode()):
            return None
        return sid
