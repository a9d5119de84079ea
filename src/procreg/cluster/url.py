"""Cluster URLs: where the store is, and procreg's own options.

Forms (the part before ``?`` is what redis-py documents for `redis.asyncio.from_url`,
except the Sentinel form, which redis-py has no URL for)::

    redis://[[user]:password@]host:port[/db]          plain TCP
    rediss://[[user]:password@]host:port[/db]         TLS (redis-py's ssl_* query options)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]
    rediss+sentinel://...                             the same, TLS to the primary

procreg's own query options (removed before the URL reaches redis-py):

- ``prefix=NAME``: key prefix (default ``procreg``), so several clusters can share one
  server;
- ``wait=N``: a claim is granted, and a lease renewal counts, only once Redis's
  ``WAIT N`` confirms the write reached N replicas (default 0; 1 for the Sentinel
  forms, so that a failover to the most up-to-date replica loses no granted claim);
- ``wait_timeout=SECONDS``: how long ``WAIT`` may block (default: a sixth of the
  lease, at most 0.5 s);
- ``listen=HOST:PORT``: also exchange frames with the other nodes that have it over
  direct TCP connections (`direct`), listening on that address (port 0: any free
  one); without it every frame goes through Redis pub/sub;
- ``advertise=HOST:PORT``: the address the other nodes connect to (default: the
  address listened on, with the port actually bound), for NAT or a proxy; needed
  with a wildcard ``listen=`` (``0.0.0.0``, ``::``), which is no address to publish.

>>> c = parse_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/main/2?prefix=app")
>>> (c.sentinels, c.service, c.db, c.password, c.prefix, c.wait)
([('10.0.0.1', 26379), ('10.0.0.2', 26379)], 'main', 2, 'pw', 'app:', 1)
>>> parse_url("redis://127.0.0.1:6379/0?wait=1&x=y").url
'redis://127.0.0.1:6379/0?x=y'
>>> parse_url("redis://127.0.0.1:6379/0?listen=127.0.0.1:0").listen
('127.0.0.1', 0)
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse, urlunparse

__all__ = ["StoreURL", "parse_url"]

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}


@dataclass(frozen=True)
class StoreURL:
    """A parsed cluster URL. `url` is what redis-py gets for the plain forms;
    `sentinels`/`service` are set for the Sentinel forms."""

    url: str
    prefix: str = "procreg:"
    wait: int = 0
    wait_timeout: float | None = None
    listen: tuple[str, int] | None = None
    advertise: tuple[str, int] | None = None
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """The URL without its password, for messages and logs."""
        if self.sentinel:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {hosts} service {self.service!r} db {self.db}"
        parts = urlparse(self.url)
        if parts.password:
            netloc = parts.netloc.rsplit("@", 1)[1]
            return urlunparse(parts._replace(netloc=f"***@{netloc}"))
        return self.url


def _int_option(query: dict[str, list[str]], name: str, default: int) -> int:
    raw = query.pop(name, None)
    if raw is None:
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise ValueError(f"cluster URL option {name}= must be an integer, got {raw[0]!r}") from None
    if value < 0:
        raise ValueError(f"cluster URL option {name}= must be >= 0, got {value}")
    return value


_WILDCARDS = frozenset({"0.0.0.0", "::", "*"})  # listen everywhere: no address to publish


def _address(query: dict[str, list[str]], name: str) -> tuple[str, int] | None:
    """The ``host:port`` of option `name` (port 0 allowed), or None."""
    raw = query.pop(name, None)
    if raw is None:
        return None
    text = raw[0].strip()
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 <= number < 65536:
        raise ValueError(
            f"cluster URL option {name}= must be host:port (port 0: any free one), got {text!r}"
        )
    return host, number


def _unspecified(host: str) -> bool:
    """True for a wildcard address (``0.0.0.0``, ``::``, ``*``)."""
    if host in _WILDCARDS:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # (a host name)


def _sentinel_address(hostport: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; the port defaults to 26379), checked."""
    text = hostport.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("26379" if not rest else "")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" not in text:
        host, port = text, "26379"
    else:
        host, port = "", ""  # an IPv6 address must be in brackets
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not host or not 0 < number < 65536:
        raise ValueError(
            f"bad sentinel address {hostport!r} in the cluster URL: use host:port, "
            "[ipv6]:port, comma-separated"
        )
    return host, number


def parse_url(url: str) -> StoreURL:
    """Parse a cluster URL (forms above); `ValueError` for a malformed one."""
    parts = urlparse(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["procreg"])[0] + ":"
    scheme = parts.scheme.lower()
    sentinel = scheme in SENTINEL_SCHEMES
    if not sentinel and scheme not in PLAIN_SCHEMES:
        raise ValueError(
            f"unsupported cluster URL scheme {parts.scheme!r}: use redis://, rediss://, "
            "unix://, redis+sentinel:// or rediss+sentinel://"
        )
    wait = _int_option(query, "wait", 1 if sentinel else 0)
    timeout_raw = query.pop("wait_timeout", None)
    wait_timeout = None
    if timeout_raw is not None:
        try:
            wait_timeout = float(timeout_raw[0])
        except ValueError:
            raise ValueError(f"wait_timeout= must be a number, got {timeout_raw[0]!r}") from None
        if not (wait_timeout > 0 and math.isfinite(wait_timeout)):
            raise ValueError(
                f"wait_timeout= must be a finite number of seconds > 0, got {timeout_raw[0]!r}"
            )
    listen = _address(query, "listen")
    advertise = _address(query, "advertise")
    if advertise is not None and (listen is None or advertise[1] == 0):
        raise ValueError("advertise= needs listen= and a port other than 0")
    # (a wildcard address, published, would make every other node connect to itself)
    for option, address in (
        ("listen", listen if advertise is None else None),
        ("advertise", advertise),
    ):
        if address is not None and _unspecified(address[0]):
            raise ValueError(
                f"{option}={address[0]} is a wildcard address the other nodes cannot"
                " connect to: give advertise=HOST:PORT, the address they reach this node at"
            )
    rest = "&".join(f"{k}={v}" for k, vs in query.items() for v in vs)
    if not sentinel:
        return StoreURL(
            url=urlunparse(parts._replace(query=rest)),
            prefix=prefix,
            wait=wait,
            wait_timeout=wait_timeout,
            listen=listen,
            advertise=advertise,
        )
    # redis+sentinel://[user:pass@]h1:p1,h2:p2/service[/db]
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) or None
    sentinels = [_sentinel_address(hostport) for hostport in netloc.split(",")]
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(
            "a Sentinel cluster URL names the service (and optionally the database): "
            f"redis+sentinel://host:port[,host:port...]/service_name[/db], got {url!r}"
        )
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError:
        raise ValueError(f"bad database number {path[1]!r} in the cluster URL") from None
    return StoreURL(
        url=url,
        prefix=prefix,
        wait=wait,
        wait_timeout=wait_timeout,
        listen=listen,
        advertise=advertise,
        sentinels=sentinels,
        service=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        tls=SENTINEL_SCHEMES[scheme],
    )
