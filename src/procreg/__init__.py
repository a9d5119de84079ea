"""procreg: supervised asyncio processes, found by key anywhere in a cluster.

A process registry in the Erlang tradition (Nitrogen's nprocreg, N2O's n2o_pi)::

    import procreg

    class Counter(procreg.Server):
        def init(self):
            self.n = 0
        def handle_call(self, request):
            self.n += 1
            return self.n

    async def main():
        pid = await procreg.get_or_spawn("visits", Counter)
        return await procreg.call(pid, "hit")

    procreg.run(main)   # -> 1
"""

from __future__ import annotations

from . import cache, nitrogen, pi, typed
from .api import (
    answered,
    call,
    caller,
    cast,
    count,
    demonitor,
    entries,
    exit,
    get_or_spawn,
    is_alive,
    join,
    leave,
    link,
    lookup,
    members,
    monitor,
    monitor_key,
    monitor_nodes,
    nodes,
    publish,
    receive,
    register,
    reply,
    run,
    self,
    send,
    send_after,
    send_interval,
    spawn,
    spawn_monitor,
    spawn_unique,
    tables,
    unlink,
    unregister,
    whereis,
)
from .cache import Cache
from .errors import (
    AlreadyRegistered,
    CallTimeout,
    ClusterUnavailable,
    Deadlock,
    DecodeError,
    NodeDown,
    NoNode,
    NoProcess,
    NotInProcess,
    Overloaded,
    ProcessExited,
    ProcregError,
    Stop,
)
from .introspection import NodeStats, ProcessInfo, ProcessStatus
from .messages import Call, Down, Exit, KeyEvent, NodeEvent
from .node import Node, current_node
from .pid import Pid, Ref
from .registry import DEFAULT_TABLE, LocalBackend, NotOwner, Published, RegistryBackend
from .scope import NO_STATE, Takeover, takeover
from .server import NOREPLY, Server
from .supervisor import ChildSpec, ChildStatus, Supervisor, SupervisorError, child
from .timers import Timer
from .typed import Returns

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TABLE",
    "NOREPLY",
    "AlreadyRegistered",
    "Cache",
    "Call",
    "ChildSpec",
    "ChildStatus",
    "CallTimeout",
    "ClusterUnavailable",
    "DecodeError",
    "Deadlock",
    "Down",
    "Exit",
    "KeyEvent",
    "LocalBackend",
    "NoNode",
    "NoProcess",
    "Node",
    "NodeDown",
    "NodeEvent",
    "NodeStats",
    "NotInProcess",
    "NotOwner",
    "Overloaded",
    "Pid",
    "ProcessExited",
    "ProcessInfo",
    "ProcessStatus",
    "Published",
    "ProcregError",
    "Ref",
    "RegistryBackend",
    "Returns",
    "Server",
    "Stop",
    "Takeover",
    "NO_STATE",
    "Supervisor",
    "SupervisorError",
    "Timer",
    "answered",
    "cache",
    "call",
    "caller",
    "child",
    "cast",
    "count",
    "current_node",
    "demonitor",
    "entries",
    "exit",
    "get_or_spawn",
    "is_alive",
    "join",
    "leave",
    "link",
    "lookup",
    "members",
    "monitor",
    "monitor_key",
    "monitor_nodes",
    "nodes",
    "nitrogen",
    "pi",
    "publish",
    "receive",
    "register",
    "reply",
    "run",
    "self",
    "send",
    "send_after",
    "send_interval",
    "spawn",
    "spawn_monitor",
    "spawn_unique",
    "takeover",
    "tables",
    "typed",
    "unlink",
    "unregister",
    "whereis",
]
