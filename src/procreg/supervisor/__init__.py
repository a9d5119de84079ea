"""Supervision trees: `Supervisor`, child specs (`child`) and the dynamic-children API.

A supervisor is a process that starts its children in order, linked to it, watches
them (it traps exits), restarts them by its `strategy` and their `restart` type, and
stops them in reverse order. More than `intensity` restarts within `period` seconds and
it gives up: it stops its children and exits with reason ``"shutdown"``, so that its own
supervisor decides (escalation). As in OTP:

- strategies: ``one_for_one`` (restart the child that ended), ``one_for_all`` (stop
  the others, restart all), ``rest_for_one`` (stop and restart the ones started
  after it);
- restart types: ``permanent`` (always restarted), ``transient`` (restarted unless it
  ended with ``"normal"`` or ``"shutdown"``), ``temporary`` (never; its spec is
  dropped when it ends);
- ``shutdown``: seconds a child gets to stop after ``exit(child, "shutdown")`` before
  it is killed; ``"brutal_kill"`` kills at once; ``"infinity"`` waits (the default
  for child supervisors).

>>> import asyncio, procreg
>>> class Worker(procreg.Server):
...     def handle_call(self, request):
...         return "pong"
>>> async def main():
...     sup = await procreg.Supervisor.start([procreg.child(Worker, id="w", key="worker")])
...     first = await procreg.whereis("worker")
...     procreg.exit(first, "boom")            # crash it: the supervisor restarts it
...     await asyncio.sleep(0.01)
...     second = await procreg.whereis("worker")
...     return first != second and await procreg.call(second, "ping")
>>> procreg.run(main)
'pong'

The package, by concept: `procreg.supervisor.specs` (`child`, `ChildSpec`,
`ChildStatus`, the flags and errors), `procreg.supervisor.tree` (`Supervisor`: starting
a tree and the calls to a running supervisor; `root`), `procreg.supervisor.engine`
(the supervisor process: starting, stopping and restarting children) and
`procreg.supervisor.requests` (what a running supervisor answers). Import the names
from `procreg.supervisor` (or `procreg`).
"""

from __future__ import annotations

from .specs import (
    RESTARTS,
    STRATEGIES,
    SUPERVISORS,
    AlreadyPresent,
    AlreadyStarted,
    ChildSpec,
    ChildStatus,
    SupervisorError,
    child,
)
from .tree import Supervisor, root

__all__ = [
    "RESTARTS",
    "STRATEGIES",
    "SUPERVISORS",
    "AlreadyPresent",
    "AlreadyStarted",
    "ChildSpec",
    "ChildStatus",
    "Supervisor",
    "SupervisorError",
    "child",
    "root",
]
