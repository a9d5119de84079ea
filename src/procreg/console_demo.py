"""A console tour of procreg: processes, calls, the registry, groups, links, monitors
and timers, on the embedded single-machine node. Runs for about two seconds.

    procreg demo --console          # or: python -m procreg.console_demo

It ships inside the package, so it runs from an installed wheel too;
``examples/console_demo.py`` of the source checkout runs it as well.
"""

from __future__ import annotations

import asyncio
import logging

import procreg

__all__ = ["Session", "main", "room_member", "run"]


class Session(procreg.Server):
    """One process per browser session, found by key: ("session", id)."""

    def init(self, sid: str) -> None:
        self.sid = sid
        self.visits = 0
        self.data: dict[str, object] = {}

    def handle_call(self, request: tuple[str, ...]) -> object:
        match request:
            case ("visit",):
                self.visits += 1
                return self.visits
            case ("get", key):
                return self.data.get(key)
            case ("crash",):
                raise RuntimeError(f"session {self.sid} was asked to crash")
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, msg: tuple[str, str, object]) -> None:
        _, key, value = msg
        self.data[key] = value


async def room_member(name: str, room: str, log: list[str]) -> None:
    """A coroutine process: joins a room (a group) and prints what it hears."""
    await procreg.join(room)
    while True:
        msg = await procreg.receive()
        if msg == "tick":
            continue
        line = f"  {name} hears: {msg}"
        log.append(line)
        print(line)


async def main() -> None:
    node = procreg.current_node()
    print(f"node {node.name!r}, I am {procreg.self()}")

    # 1. get_or_spawn: one process per key, however many callers race for it
    pids = await asyncio.gather(
        *(procreg.get_or_spawn(("session", "alice"), Session, "alice") for _ in range(100))
    )
    alice = pids[0]
    print(f"100 concurrent get_or_spawn calls -> {len(set(pids))} process: {alice}")
    for _ in range(3):
        visits = await procreg.call(alice, ("visit",))
    print(f"alice has visited {visits} times")
    procreg.cast(alice, ("set", "nick", "Alice"))
    print(f"alice's nickname: {await procreg.call(alice, ('get', 'nick'))}")

    # 2. a chat room: a group of coroutine processes, publish fans out
    heard: list[str] = []
    for name in ("bob", "carol", "dave"):
        procreg.spawn(room_member, name, "room:lobby", heard)
    await asyncio.sleep(0.01)
    reached = await procreg.publish("room:lobby", "hello from alice")
    print(f"published to {reached} members of room:lobby")
    await asyncio.sleep(0.01)

    # 3. monitors and crash isolation: the crash ends alice's process only
    ref = procreg.monitor(alice)
    try:
        await procreg.call(alice, ("crash",))
    except procreg.ProcessExited as exc:
        print(f"the call failed cleanly: ProcessExited({exc.reason!r})")
    down = await procreg.receive(match=lambda m: isinstance(m, procreg.Down) and m.ref == ref)
    print(f"Down received: reason={down.reason!r}")
    print(f"registry entry gone: whereis -> {await procreg.whereis(('session', 'alice'))}")
    fresh = await procreg.get_or_spawn(("session", "alice"), Session, "alice")
    visits = await procreg.call(fresh, ("visit",))
    print(f"the next request starts a fresh session process: {fresh} (visits={visits})")

    # 4. timers: a ticker and a one-shot reminder
    me = procreg.self()
    ticker = procreg.send_interval(0.2, me, "tick")
    procreg.send_after(0.5, me, "reminder")
    ticks = 0
    while True:
        msg = await procreg.receive(timeout=2)
        if msg == "tick":
            ticks += 1
        elif msg == "reminder":
            break
    ticker.cancel()
    print(f"reminder arrived after {ticks} ticks")

    # 5. links: a worker crash takes its linked partner down too (unless it traps exits)
    async def worker() -> None:
        await procreg.receive()
        raise RuntimeError("worker failed")

    async def partner(w: procreg.Pid) -> None:
        procreg.link(w)
        await procreg.receive()

    w = procreg.spawn(worker)
    p = procreg.spawn(partner, w)
    ref_p = procreg.monitor(p)
    await asyncio.sleep(0.01)
    procreg.send(w, "go")
    down = await procreg.receive(match=lambda m: isinstance(m, procreg.Down) and m.ref == ref_p)
    print(f"linked partner ended with the worker's reason: {down.reason!r}")

    # 6. idle timeout: a session that nobody visits ends by itself
    zed = await procreg.get_or_spawn(("session", "zed"), Session, "zed", idle_timeout=0.3)
    ref_z = procreg.monitor(zed)
    down = await procreg.receive(match=lambda m: isinstance(m, procreg.Down) and m.ref == ref_z)
    print(f"an unvisited session ended by itself: reason={down.reason!r}")
    print(f"and left the registry: whereis -> {await procreg.whereis(('session', 'zed'))}")

    print(f"tables: {procreg.tables()}, sessions registered: {procreg.count()}")
    print(f"{node.process_count()} processes alive; {node.spawned} spawned in all")


def run() -> None:
    """Run the tour on a node of its own (the crash in it is on purpose, so logging is
    quietened to CRITICAL)."""
    logging.basicConfig(level=logging.CRITICAL)
    procreg.run(main, name="demo")


if __name__ == "__main__":
    run()
