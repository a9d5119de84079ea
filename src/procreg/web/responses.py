"""Small HTTP helpers shared by the demo and the observer: loopback checks and
responses for the pages and scripts they serve (with strict security headers)."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from starlette.requests import HTTPConnection
from starlette.responses import Response

__all__ = ["LOOPBACK_HOSTS", "asset", "client_is_local", "is_loopback", "page"]

LOOPBACK_HOSTS: Final = ("127.0.0.1", "::1", "localhost")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def is_loopback(host: str | None) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_is_local(conn: HTTPConnection) -> bool:
    """True if the request comes from this machine (or over a Unix socket)."""
    client = conn.scope.get("client")
    return client is None or is_loopback(client[0])


def _headers(conn: HTTPConnection) -> dict[str, str]:
    host = conn.headers.get("host", "")
    ws = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return {
        "content-security-policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{ws}; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'"
        ),
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "cache-control": "no-store",
    }


def page(conn: HTTPConnection, html: str) -> Response:
    """An HTML page, with a content security policy that allows only this origin's
    scripts and styles (no inline script) and connections back to this host."""
    return Response(html, media_type="text/html; charset=utf-8", headers=_headers(conn))


def asset(conn: HTTPConnection, text: str, media_type: str) -> Response:
    """A script or stylesheet served from a string."""
    return Response(text, media_type=media_type, headers=_headers(conn))
