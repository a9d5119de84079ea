"""The demo's server clock: an n2o_pi timer process that publishes the time to the
``"clock"`` pool every second.

Like N2O's ``"/timer"`` process it re-arms itself with `procreg.send_after` on every
tick, aimed at the next wall-clock second so that the clock does not drift::

    await procreg.pi.start(clock_pi())

In a cluster it is cluster-scoped: one clock for all nodes, started again by a
surviving node if its node dies, and handed off (with its tick count) when its node
stops gracefully, so it keeps ticking through a rolling restart.
"""

from __future__ import annotations

import time
from typing import Any, Final

from ... import pi
from ...api import self as self_pid
from ...api import send_after
from ..comet import publish

__all__ = ["CLOCK_POOL", "Clock", "clock_pi"]

CLOCK_POOL: Final = "clock"
"""The pool the clock publishes to."""

TICK: Final = ("clock", "tick")


def _arm(interval: float) -> None:
    delay = interval - (time.time() % interval)
    send_after(max(delay, 0.05), self_pid(), TICK)


class Clock:
    """The ``proc`` of the clock. Its `Pi.state` is a dict: ``interval`` (seconds),
    ``pool`` (where to publish) and ``ticks`` (published so far; ask with a
    ``"ticks"`` call)."""

    @staticmethod
    async def proc(msg: Any, p: pi.Pi) -> pi.Ok | pi.Reply | pi.Error:
        """Handle `pi.INIT`, the tick, and the ``"ticks"`` call."""
        state = p.state
        if msg is pi.INIT:
            _arm(state["interval"])
            return pi.Ok(p)
        if msg == TICK:
            now = time.time()
            await publish(
                state["pool"],
                {
                    "type": "clock",
                    "time": time.strftime("%H:%M:%S", time.localtime(now)),
                    "epoch": now,
                },
            )
            p.state = {**state, "ticks": state.get("ticks", 0) + 1}
            _arm(state["interval"])
            return pi.Ok(p)
        if msg == "ticks":
            return pi.Reply(state.get("ticks", 0), p)
        return pi.Error(("unknown_message", msg))

    @staticmethod
    def handoff(p: pi.Pi) -> Any:
        """The state to move on a graceful stop (the tick count goes on)."""
        return p.state


def clock_pi(interval: float = 1.0, pool: str = CLOCK_POOL, sup: Any = "root") -> pi.Pi:
    """The `Pi` record of the clock: name ``"clock"`` in table ``"web"``, under the
    root supervisor, restarted if it ever ends; cluster-scoped (one clock for the
    whole cluster, moving to a surviving node when its own stops or dies)."""
    state = {"interval": interval, "pool": pool, "ticks": 0}
    return pi.Pi("clock", "web", sup, Clock, state=state, restart="permanent", scope="cluster")
