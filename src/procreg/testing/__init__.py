"""Tools for testing code that uses procreg, and for procreg's own fault tests.

- `FaultProxy`: a TCP proxy between a node and its store that blackholes, resets,
  freezes or delays connections on demand.

The throwaway Redis server lives in `procreg.cluster.devserver` (`RedisServer`).
"""

from __future__ import annotations

from .proxy import FaultProxy

__all__ = ["FaultProxy"]
