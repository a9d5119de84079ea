"""N2O's showcase, done properly: a TTL cache and the supervised "/timer" process that
sweeps it. Runs for about two seconds and prints what each sweep removed.

    python examples/cache_timer.py
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

import procreg
from procreg import pi
from procreg.cache import cache, start_cache_timer


async def main() -> None:
    sessions = cache("caching")
    for i in range(6):
        sessions.put(("session", i), {"user": f"user{i}"}, ttl=0.25 * (i + 1))
    sessions.put("config", {"theme": "dark"})  # never expires

    def report(gone: list[Hashable]) -> None:
        print(f"  sweep: removed {gone or 'nothing'}; {len(sessions)} entries left")

    started = await start_cache_timer(interval=0.3, on_sweep=report)
    assert not isinstance(started, pi.Error), started
    timer, name = started
    print(f"cache timer {name!r} running as {timer} in table 'caching'")
    print(f"  lookup by name: pi.pid('caching', '/timer') -> {pi.pid('caching', '/timer')}")

    await asyncio.sleep(1.0)
    print("crashing the timer on purpose ...")
    procreg.exit(timer, "boom")
    await asyncio.sleep(0.05)
    again = pi.pid("caching", "/timer")
    print(f"  restarted by its supervisor: {again} (was {timer})")

    await asyncio.sleep(1.0)
    print(f"left: {sorted(map(str, sessions.keys()))}")
    last = await pi.stop("caching", "/timer")
    assert isinstance(last, pi.Pi)
    print(f"stopped; last state: sweeps={last.state['sweeps']} (of this incarnation)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)  # the crash above is on purpose
    procreg.run(main)
