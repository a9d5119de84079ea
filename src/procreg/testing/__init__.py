"""Tools for testing code that uses procreg (and for procreg's own fault tests).

- `RedisServer`: a throwaway Redis (or Valkey) server on a free loopback port, owned
  by the caller, who may stop, restart (empty), kill, pause and resume it;
  `SentinelServer`: a Redis Sentinel for failover tests; `find_server_binary`,
  `free_port`.
- `FaultProxy`: a TCP proxy between a node and its store that blackholes, resets,
  freezes or delays connections on demand.
- `LoopbackCluster`: several nodes of one event loop that form an in-memory cluster
  (messages, calls, links, monitors, node down, the shared registry; no Redis):
  `LoopbackNet`, `LoopbackNode` (`procreg.testing.loopback`).

>>> from procreg.testing import RedisServer  # doctest: +SKIP
>>> with RedisServer() as redis:  # doctest: +SKIP
...     procreg.run(main, cluster=redis.url, secret="test")
"""

from __future__ import annotations

from .loopback import LoopbackCluster, LoopbackNet, LoopbackNode
from .proxy import FaultProxy
from .redis import RedisServer, SentinelServer, find_server_binary, free_port

__all__ = [
    "FaultProxy",
    "LoopbackCluster",
    "LoopbackNet",
    "LoopbackNode",
    "RedisServer",
    "SentinelServer",
    "find_server_binary",
    "free_port",
]
