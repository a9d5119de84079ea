"""Process factories for the cluster test nodes.

Every node runner imports this module as ``cluster.servers``, so a factory defined
here is importable by the same name on every node (``placement="hash"`` sends the
factory's name, not the factory).

- `Echo`: a `Server` that answers calls, and logs casts and plain messages.
- `Tracked`: a `Server` that appends its start and its end to the node's trace file
  (one JSON line ``[time, key, pid, "start"|"end", detail]``, flushed at once; the
  detail is the node's creation at the start and the exit reason at the end), for
  the uniqueness checker.
- `co_echo`: the same as `Echo` as a coroutine process.
- `Stuck`: a `Server` with a mailbox bound of 3 whose casts never finish: the
  first cast blocks it, three more fill its mailbox.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TextIO

import procreg

_trace: TextIO | None = None


def set_trace(path: str) -> None:
    """Append the start and end of every `Tracked` process to `path`."""
    global _trace
    _trace = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115


def trace(key: Any, pid: procreg.Pid, event: str, reason: Any = None) -> None:
    if _trace is not None:
        _trace.write(json.dumps([time.time(), key, list(pid), event, reason]) + "\n")
        _trace.flush()


def plain(value: Any) -> Any:
    """`value` as JSON: pids as ``[node, creation, serial]``, runtime messages as
    dicts, exceptions as ``"Type: text"``."""
    if isinstance(value, procreg.Pid):
        return list(value)
    if isinstance(value, procreg.Down):
        return {"type": "Down", "pid": plain(value.pid), "reason": plain(value.reason)}
    if isinstance(value, procreg.Exit):
        return {"type": "Exit", "pid": plain(value.pid), "reason": plain(value.reason)}
    if isinstance(value, procreg.NodeEvent):
        return {"type": "NodeEvent", "kind": value.kind, "node": value.node}
    if isinstance(value, procreg.KeyEvent):
        return {
            "type": "KeyEvent",
            "table": value.table,
            "key": plain(value.key),
            "event": value.event,
            "pid": plain(value.pid),
        }
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _answer(state: Any, request: Any) -> Any:
    op = request[0]
    if op == "echo":
        return request[1]
    if op == "whoami":
        return plain(procreg.self())
    if op == "log":
        return plain(state.log)
    if op == "crash":
        raise RuntimeError(request[1])
    if op == "stop":
        raise procreg.Stop(request[1] if len(request) > 1 else "normal")
    if op == "odd":  # a reply the caller's node cannot unpickle
        return only_here()
    raise ValueError(f"unknown request {request!r}")


def only_here() -> Any:
    """An instance of a class defined at run time in this process's ``__main__``:
    it pickles here, and no other process can unpickle it."""
    import sys

    main = sys.modules["__main__"]
    name = f"OnlyHere_{procreg.current_node().name}"  # another node's is another class
    cls = getattr(main, name, None)
    if cls is None:
        cls = type(name, (), {"__module__": "__main__"})
        setattr(main, name, cls)
    return cls()


TERMINATED: dict[Any, Any] = {}


class Unregisters(procreg.Server):
    """Its async terminate uses the registry on its own key: unregister, whereis."""

    def init(self, key: Any) -> None:
        self.key = key

    def handle_cast(self, msg: Any) -> None:
        raise procreg.Stop("normal")

    async def terminate(self, reason: Any) -> None:
        out: dict[str, Any] = {}
        try:
            out["unregister"] = await procreg.unregister(self.key)
        except Exception as exc:
            out["unregister"] = f"{type(exc).__name__}: {exc}"
        out["whereis"] = plain(await procreg.whereis(self.key))
        TERMINATED[self.key] = out


class Echo(procreg.Server):
    """Answers ``("echo", x)``, ``("whoami",)``, ``("log",)``, ``("hold",)`` (never
    answered), ``("held",)`` (how many are held), ``("release", x)`` (answers the
    held ones `x`; how many), ``("crash", text)`` and
    ``("stop", reason)``; logs casts and messages."""

    def init(self, tag: Any = None) -> None:
        self.tag = tag
        self.log: list[Any] = []
        self.held: list[Any] = []

    def handle_call(self, request: Any) -> Any:
        if request[0] == "hold":
            self.held.append(procreg.caller())
            return procreg.NOREPLY
        if request[0] == "held":
            return len(self.held)
        if request[0] == "release":
            held, self.held = self.held, []
            for caller in held:
                procreg.reply(caller, request[1])
            return len(held)
        return _answer(self, request)

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, list) and msg and msg[0] == "stop":
            raise procreg.Stop(msg[1] if len(msg) > 1 else "normal")
        self.log.append(["cast", msg])

    def handle_info(self, msg: Any) -> None:
        self.log.append(["info", msg])


class Tracked(procreg.Server):
    """Records its start and end in the trace file; ``("stop",)`` as a cast or a call
    ends it normally."""

    def init(self, key: Any) -> None:
        self.key = key
        # the node's creation now (as the runtime and as the cluster membership see
        # it): a pid of an older one comes from a fencing race (see the tests)
        node = procreg.current_node()
        membership = node._cluster.creation if node._cluster is not None else node.creation
        trace(key, self.pid, "start", [node.creation, membership])

    def handle_call(self, request: Any) -> Any:
        if request[0] == "stop":
            raise procreg.Stop("normal")
        return plain(self.pid)

    def handle_cast(self, msg: Any) -> None:
        if msg and msg[0] == "stop":
            raise procreg.Stop("normal")

    def handle_info(self, msg: Any) -> None:
        pass

    def terminate(self, reason: Any) -> None:
        trace(self.key, self.pid, "end", plain(reason))


class Ticker(procreg.Server):
    """A busy registered server (break-10): it keeps sending itself ``"tick"`` so
    that its node always has a drain of it pending, records the wall-clock time of
    the last tick it handled, and puts that time in its ``end`` trace line
    (``{"reason": ..., "last_tick": t, "ticks": n}``)."""

    def init(self, key: Any) -> None:
        self.key = key
        self.ticks = 0
        self.last_tick = time.time()
        trace(key, self.pid, "start", None)
        procreg.send(self.pid, "tick")

    def handle_call(self, request: Any) -> Any:
        return {"ticks": self.ticks, "last_tick": self.last_tick}

    def handle_info(self, msg: Any) -> None:
        if msg == "tick":
            self.ticks += 1
            now = time.time()
            if now - self.last_tick > 0.2:  # the node was stopped: count from here
                self.after_gap = 0
            self.after_gap = getattr(self, "after_gap", 0) + 1
            self.last_tick = now
            procreg.send(self.pid, "tick")

    def terminate(self, reason: Any) -> None:
        trace(
            self.key,
            self.pid,
            "end",
            {
                "reason": plain(reason),
                "last_tick": self.last_tick,
                "ticks": self.ticks,
                "after_gap": getattr(self, "after_gap", 0),
            },
        )


class _Log:
    def __init__(self) -> None:
        self.log: list[Any] = []


async def co_echo() -> None:
    """A coroutine process answering `Echo`'s calls and logging other messages."""
    state = _Log()
    while True:
        msg = await procreg.receive()
        if isinstance(msg, procreg.Call):
            try:
                value = _answer(state, msg.request)
            except procreg.Stop:
                procreg.reply(msg.caller, "stopping")
                return
            procreg.reply(msg.caller, value)
        else:
            state.log.append(["info", msg])


class Stuck(procreg.Server):
    """``max_mailbox = 3``; a cast blocks it for good (its mail then waits)."""

    max_mailbox = 3

    async def handle_cast(self, msg: Any) -> None:
        await asyncio.Event().wait()

    def handle_call(self, request: Any) -> Any:
        return _answer(self, request)


class Failing(procreg.Server):
    """Its init always fails."""

    def init(self) -> None:
        raise ValueError("init failed on purpose")


def _hidden() -> type[Echo]:
    class Hidden(Echo):
        """Defined in a function: not importable by name."""

    return Hidden


FACTORIES: dict[str, Any] = {
    "Echo": Echo,
    "Tracked": Tracked,
    "co_echo": co_echo,
    "Hidden": _hidden(),
    "Failing": Failing,
    "Unregisters": Unregisters,
    "Stuck": Stuck,
    "Ticker": Ticker,
}


# -- cluster-scoped processes (test_cluster_scoped) ------------------------------------
class Job:
    """An n2o_pi module whose INIT leaves a trace line (``"init"``): two nodes racing
    `pi.start` of one job must leave exactly one."""

    @staticmethod
    def proc(msg: Any, p: Any) -> Any:
        from procreg import pi

        if msg is pi.INIT:
            trace(p.name, procreg.self(), "init", procreg.current_node().name)
            return pi.Ok(p)
        if msg == "whoami":
            return pi.Reply(plain(procreg.self()), p)
        return pi.Ok(p)


class Timer:
    """The cluster-scoped ``"/timer"`` of the tests: ticks every 50 ms, counting in
    its state (``{"ticks": n, "last": time}``); hands the state off on a graceful
    stop. ``"get"`` answers the state and the node it runs on. A tick from an earlier
    incarnation's timer is counted in ``"foreign"`` (a handoff must not forward it)."""

    @staticmethod
    def proc(msg: Any, p: Any) -> Any:
        from procreg import pi

        me = procreg.self()
        if msg is pi.INIT:
            moved = procreg.takeover()
            trace(p.name, me, "start", moved.kind if moved else None)
            procreg.send_after(p.state.get("every", 0.05), me, ("tick", me))
            return pi.Ok(p)
        if isinstance(msg, tuple) and msg[0] == "tick":
            if msg[1] != me:  # an earlier incarnation's timer: it must not reach us
                p.state = {**p.state, "foreign": p.state.get("foreign", 0) + 1}
                return pi.Ok(p)
            p.state = {**p.state, "ticks": p.state["ticks"] + 1, "last": time.time()}
            procreg.send_after(p.state.get("every", 0.05), me, ("tick", me))
            return pi.Ok(p)
        if msg == "get":
            return pi.Reply({**p.state, "node": procreg.current_node().name}, p)
        return pi.Ok(p)

    @staticmethod
    def handoff(p: Any) -> Any:
        return p.state

    @staticmethod
    def terminate(reason: Any, p: Any) -> None:
        trace(p.name, procreg.self(), "end", plain(reason))


class Keeper(procreg.Server):
    """A cluster-scoped server with state: ``["add", x]`` (a call or a cast) appends
    `x` to its list, ``["get"]`` answers it; its state moves with ``handoff``, and
    every start and end is traced for the uniqueness checker."""

    def init(self, key: Any) -> None:
        self.key = key
        moved = procreg.takeover()
        self.items: list[Any] = list(moved.state) if moved and moved.state is not None else []
        trace(key, self.pid, "start", moved.kind if moved else None)

    def handle_call(self, request: Any) -> Any:
        if request[0] == "add":
            self.items.append(request[1])
            return len(self.items)
        if request[0] == "get":
            return {"items": self.items, "node": procreg.current_node().name}
        raise ValueError(request)

    def handle_cast(self, msg: Any) -> None:
        if msg[0] == "add":
            self.items.append(msg[1])

    def handoff(self) -> Any:
        return self.items

    def terminate(self, reason: Any) -> None:
        trace(self.key, self.pid, "end", plain(reason))


FACTORIES["Keeper"] = Keeper


class PiKeeper:
    """A cluster-scoped ``pi`` (a supervised child, like the demo's clock) with state:
    ``["add", x]`` (a cast) appends `x` to its ``"items"``, ``"get"`` answers the state
    and the node it runs on; the state moves with ``handoff``."""

    @staticmethod
    async def proc(msg: Any, p: Any) -> Any:  # async, as the demo's clock
        from procreg import pi

        me = procreg.self()
        if msg is pi.INIT:
            moved = procreg.takeover()
            if moved is not None and moved.state is not None:
                p.state = moved.state
            trace(p.name, me, "start", moved.kind if moved else None)
            return pi.Ok(p)
        if isinstance(msg, list) and msg[0] == "add":
            p.state = {**p.state, "items": [*p.state["items"], msg[1]]}
            return pi.Ok(p)
        if msg == "get":
            return pi.Reply({**p.state, "node": procreg.current_node().name}, p)
        return pi.Ok(p)

    @staticmethod
    def handoff(p: Any) -> Any:
        return p.state

    @staticmethod
    def terminate(reason: Any, p: Any) -> None:
        trace(p.name, procreg.self(), "end", plain(reason))


class AsyncKeeper(Keeper):
    """`Keeper` with an async ``terminate`` (its exit completes a loop turn or more
    after it is asked to end)."""

    async def terminate(self, reason: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        trace(self.key, self.pid, "end", plain(reason))


FACTORIES["AsyncKeeper"] = AsyncKeeper
