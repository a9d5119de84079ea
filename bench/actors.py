"""The Pykka baseline: ``ThreadingActor`` subclasses, one thread per actor.

Used through ``ActorRef.ask`` (call), ``ActorRef.tell`` (cast), ``ActorRef.stop``
(exit) and ``ActorRegistry.stop_all`` (cleanup).
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from .measure import Tally

__all__ = ["PykkaCounter", "PykkaEcho", "PykkaIdle", "stop_all"]


class PykkaIdle(pykka.ThreadingActor):
    """An actor that does nothing (memory, spawn and stop figures)."""

    use_daemon_thread = True


class PykkaEcho(pykka.ThreadingActor):
    """Replies with the message it got (call round trip)."""

    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return message


_TALLY_LOCK = threading.Lock()


class PykkaCounter(pykka.ThreadingActor):
    """Counts told messages in a shared `Tally` (tell throughput)."""

    use_daemon_thread = True

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def on_receive(self, message: Any) -> Any:
        t = self.tally
        with _TALLY_LOCK:  # several actors (threads) share one tally
            t.n += 1
            done = t.n == t.target
        if done:
            t.finish()
        return None


def stop_all() -> None:
    """Stop every actor and wait for their threads (untimed cleanup)."""
    pykka.ActorRegistry.stop_all(block=True)
