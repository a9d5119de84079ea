"""Messages the runtime itself delivers to processes."""

from __future__ import annotations

from typing import Any, NamedTuple

from .pid import Pid, Ref

__all__ = ["Call", "Down", "Exit", "KeyEvent", "NodeEvent"]


class Down(NamedTuple):
    """Sent to a monitoring process when the monitored one ends.

    ``reason`` is ``"noproc"`` if the process was already gone when monitored.
    """

    ref: Ref
    pid: Pid
    reason: Any


class Exit(NamedTuple):
    """An exit signal from a linked process (or `procreg.exit`), delivered as a message
    to a process that traps exits."""

    pid: Pid | None
    reason: Any


class KeyEvent(NamedTuple):
    """Sent to a process that called `procreg.monitor_key` when the key it watches
    changes (gproc's name monitors, ``gproc:monitor(Key, follow)``):

    - ``event == "registered"``: `pid` now holds the key;
    - ``event == "unregistered"``: `pid`, its holder, removed it (`procreg.unregister`);
    - ``event == "ended"``: `pid`, its holder, ended, and its entry went with it.

    After ``"unregistered"`` or ``"ended"`` the key is free. `ref` is the one
    `monitor_key` returned; the monitor lasts until `procreg.demonitor(ref)` or the
    end of the watching process.
    """

    ref: Ref
    table: str
    key: Any
    event: str
    pid: Pid


class NodeEvent(NamedTuple):
    """Sent to processes that called `procreg.monitor_nodes` when a node of the cluster
    comes up (``kind == "up"``) or goes down (``kind == "down"``)."""

    kind: str
    node: str


class Call(NamedTuple):
    """A `procreg.call` as a coroutine process receives it.

    Answer it with ``procreg.reply(msg.caller, value)``. (`Server` processes never see
    this type: their ``handle_call`` gets the request and returns the reply.)
    """

    request: Any
    caller: Any
