"""How a node keeps Python's cyclic garbage collector out of the way.

CPython's collector scans every tracked container in a generation each time that
generation is collected. A node with a million processes holds millions of tracked
objects, so two things go wrong without help: mass spawning triggers young
collections every 700 allocations (slowing spawns several times), and each full
collection walks every live process (a pause of a large fraction of a second).

While at least one node with ``gc_policy=True`` (the default) is running:

1. the young-generation threshold is raised from 700 to 20,000 allocations, so
   spawning a burst of processes is not interrupted every few hundred objects;
2. whenever the number of live processes has grown by a quarter (at least 20,000)
   since the last time, the node collects the young generations and then calls
   `gc.freeze()`, which moves every object alive at that moment into the permanent
   generation: full collections then scan only what was created since (at most a
   fifth of the processes), so pauses stay proportional to recent churn, not to the
   number of processes;
3. when the live processes fall below a quarter of the count at the last freeze,
   `gc.unfreeze()` hands the old objects back to the collector, so the memory of
   reference cycles that became garbage while frozen is reclaimed.

The cost: a reference cycle that was alive at a freeze and dies afterwards is only
reclaimed after the next unfreeze (or when the last node stops). procreg's own
objects do not form such cycles after a process ends. Turn the policy off with
``Node(gc_policy=False)`` or the environment variable ``PROCREG_GC_POLICY=0``; the
interpreter's settings are restored when the last node stops.
"""

from __future__ import annotations

import gc

__all__ = ["GcPolicy"]

YOUNG_THRESHOLD = 20_000
FIRST_FREEZE = 20_000


class GcPolicy:
    """Process-wide GC tuning, shared by the running nodes that ask for it."""

    _users = 0
    _saved: tuple[int, int, int] | None = None
    _frozen_at = 0
    _next_freeze = FIRST_FREEZE
    freezes = 0
    unfreezes = 0

    @classmethod
    def acquire(cls) -> None:
        if cls._users == 0:
            cls._saved = gc.get_threshold()
            _, g1, g2 = cls._saved
            gc.set_threshold(max(YOUNG_THRESHOLD, cls._saved[0]), g1, g2)
            cls._frozen_at = 0
            cls._next_freeze = FIRST_FREEZE
        cls._users += 1

    @classmethod
    def release(cls) -> None:
        cls._users -= 1
        if cls._users == 0:
            if cls._frozen_at:
                gc.unfreeze()
                cls._frozen_at = 0
            if cls._saved is not None:
                gc.set_threshold(*cls._saved)
                cls._saved = None

    @classmethod
    def grew(cls, live: int) -> None:
        """Called by a node when its live-process count reaches `_next_freeze`."""
        if cls._users == 0:
            return
        gc.collect(1)
        gc.freeze()
        cls.freezes += 1
        cls._frozen_at = live
        cls._next_freeze = live + max(FIRST_FREEZE, live // 4)

    @classmethod
    def shrank(cls, live: int) -> None:
        """Called by a node when its live-process count falls below a quarter of the
        count at the last freeze."""
        if cls._frozen_at and live < cls._frozen_at // 4:
            gc.unfreeze()
            cls.unfreezes += 1
            cls._frozen_at = 0
            cls._next_freeze = max(FIRST_FREEZE, live * 2)

    @classmethod
    def next_freeze(cls) -> int:
        return cls._next_freeze if cls._users else 1 << 62

    @classmethod
    def unfreeze_below(cls) -> int:
        return cls._frozen_at // 4 if cls._frozen_at else -1
