"""Moved to `procreg.testing.redis` (the throwaway Redis and Sentinel servers live with
the other testing tools); this name stays as an alias for existing imports."""

from __future__ import annotations

from ..testing.redis import RedisServer, SentinelServer, find_server_binary, free_port

__all__ = ["RedisServer", "SentinelServer", "find_server_binary", "free_port"]
