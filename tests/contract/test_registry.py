"""The registry contract, on every backend (local, Redis, loopback): tables,
register/unregister/whereis/lookup, get_or_spawn, spawn_unique, groups and bad input
(issue 3)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import procreg
from conftest import wait_down, wait_until

from .conftest import Backend

# -- helpers -----------------------------------------------------------------------


async def worker(*args: Any) -> None:
    """A coroutine process: answers calls, stops on "stop", crashes on "crash",
    forwards ("echo", to, x) and records anything else in its own log."""
    while True:
        msg = await procreg.receive()
        if isinstance(msg, procreg.Call):
            req = msg.request
            if req == "args":
                procreg.reply(msg.caller, args)
            elif isinstance(req, tuple) and req[0] == "link":
                procreg.link(req[1])
                procreg.reply(msg.caller, "ok")
            else:
                procreg.reply(msg.caller, req)
        elif msg == "stop":
            return
        elif msg == "crash":
            raise RuntimeError("crash on request")
        elif isinstance(msg, tuple) and msg[0] == "echo":
            procreg.send(msg[1], ("echoed", procreg.self(), msg[2]))


class Box(procreg.Server):
    """A server with a sync init; its handlers mirror `worker`."""

    def init(self, *args: Any) -> None:
        self.args = args
        self.infos: list[Any] = []

    def handle_call(self, request: Any) -> Any:
        if request == "args":
            return self.args
        if request == "infos":
            return list(self.infos)
        if isinstance(request, tuple) and request[0] == "link":
            procreg.link(request[1])
            return "ok"
        return request

    def handle_cast(self, msg: Any) -> None:
        if msg == "stop":
            procreg.exit(procreg.self(), "normal")
        elif msg == "crash":
            raise RuntimeError("crash on request")

    def handle_info(self, msg: Any) -> None:
        self.infos.append(msg)
        if isinstance(msg, tuple) and msg[0] == "echo":
            procreg.send(msg[1], ("echoed", procreg.self(), msg[2]))


class AsyncBox(Box):
    """A server with an async init."""

    async def init(self, *args: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.args = args
        self.infos = []


async def end_and_wait(pid: procreg.Pid, how: str = "kill") -> Any:
    ref = procreg.monitor(pid)
    if how == "kill":
        procreg.exit(pid, "kill")
    elif how == "crash":
        procreg.cast(pid, "crash")
    else:
        raise AssertionError(how)
    return (await wait_down(ref)).reason


async def dead_pid() -> procreg.Pid:
    pid = procreg.spawn(worker)
    await end_and_wait(pid)
    assert not procreg.is_alive(pid)
    return pid


# -- tables ------------------------------------------------------------------------


def test_default_table_is_named_default(backend: Backend) -> None:
    async def main() -> Any:
        await procreg.register("k")
        return (
            procreg.DEFAULT_TABLE,
            procreg.entries(),
            procreg.entries("default"),
            await procreg.whereis("k", table="default"),
            procreg.self(),
        )

    default, entries, entries_default, found, me = backend.run(main)
    assert default == "default"
    assert entries == [("k", me)]
    assert entries_default == [("k", me)]
    assert found == me


def test_named_tables_are_created_on_first_use(backend: Backend) -> None:
    async def main() -> Any:
        before = procreg.tables()
        await procreg.register("k", table="sessions")
        return before, procreg.tables(), procreg.entries("sessions"), procreg.entries()

    before, after, sessions, default = backend.run(main)
    assert "sessions" not in before
    assert "sessions" in after
    assert len(sessions) == 1
    assert default == []


def test_same_key_in_two_tables_maps_to_two_processes(backend: Backend) -> None:
    async def main() -> Any:
        a = await procreg.get_or_spawn("room", Box, table="chat")
        b = await procreg.get_or_spawn("room", Box, table="comet")
        return (
            a,
            b,
            await procreg.whereis("room", table="chat"),
            await procreg.whereis("room", table="comet"),
            await procreg.whereis("room"),
        )

    a, b, in_chat, in_comet, in_default = backend.run(main)
    assert a != b
    assert in_chat == a
    assert in_comet == b
    assert in_default is None


def test_entries_tables_and_count(backend: Backend) -> None:
    async def main() -> Any:
        pids = {}
        for i in range(5):
            pids[("t1", i)] = await procreg.get_or_spawn(i, Box, table="t1")
        for i in range(3):
            pids[("t2", i)] = await procreg.get_or_spawn(i, worker, table="t2")
        return (
            pids,
            sorted(procreg.entries("t1")),
            sorted(procreg.entries("t2")),
            set(procreg.tables()),
            procreg.count("t1"),
            procreg.count("t2"),
            procreg.count(),
        )

    pids, t1, t2, tables, n1, n2, n_default = backend.run(main)
    assert t1 == sorted((i, pids[("t1", i)]) for i in range(5))
    assert t2 == sorted((i, pids[("t2", i)]) for i in range(3))
    assert {"t1", "t2"} <= tables
    assert (n1, n2, n_default) == (5, 3, 0)


def test_count_follows_register_unregister_and_exit(backend: Backend) -> None:
    async def main() -> list[int]:
        seen = [procreg.count("c")]
        a = procreg.spawn(worker)
        b = procreg.spawn(worker)
        await procreg.register("a", a, table="c")
        seen.append(procreg.count("c"))
        await procreg.register("b", b, table="c")
        seen.append(procreg.count("c"))
        await procreg.unregister("a", table="c", pid=a)
        seen.append(procreg.count("c"))
        await end_and_wait(b)
        seen.append(procreg.count("c"))
        return seen

    assert backend.run(main) == [0, 1, 2, 1, 0]


def test_unknown_table_reads_are_empty_not_errors(backend: Backend) -> None:
    async def main() -> Any:
        await procreg.register("k")
        return (
            procreg.entries("nope"),
            procreg.count("nope"),
            await procreg.whereis("k", table="nope"),
            await procreg.lookup("k", table="nope"),
            await procreg.unregister("k", table="nope"),
            "nope" in procreg.tables(),
        )

    assert backend.run(main) == ([], 0, None, None, False, False)


# -- register / unregister / whereis / lookup ----------------------------------------


def test_read_your_writes(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        await procreg.register("k", pid)
        found = await procreg.whereis("k")
        await procreg.unregister("k", pid=pid)
        gone = await procreg.whereis("k")
        return pid, found, gone

    pid, found, gone = backend.run(main)
    assert found == pid
    assert gone is None


def test_register_without_pid_registers_the_caller(backend: Backend) -> None:
    async def main() -> Any:
        await procreg.register("me")
        return procreg.self(), await procreg.whereis("me")

    me, found = backend.run(main)
    assert found == me


def test_register_with_meta_and_lookup(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        await procreg.register("user:1", pid, meta={"role": "admin", "n": 1})
        await procreg.register("user:2", pid)
        return (
            pid,
            await procreg.lookup("user:1"),
            await procreg.lookup("user:2"),
            await procreg.lookup("user:3"),
        )

    pid, one, two, three = backend.run(main)
    assert one == (pid, {"role": "admin", "n": 1})
    assert two == (pid, None)
    assert three is None


def test_meta_is_copied_at_register(backend: Backend) -> None:
    async def main() -> Any:
        meta = {"v": 1}
        await procreg.register("k", meta=meta)
        meta["v"] = 2
        return await procreg.lookup("k")

    _, meta = backend.run(main)
    assert meta == {"v": 1}


def test_register_held_key_raises_already_registered_with_holder_pid(backend: Backend) -> None:
    async def main() -> Any:
        holder = procreg.spawn(worker)
        other = procreg.spawn(worker)
        await procreg.register("k", holder, meta={"who": "holder"})
        with pytest.raises(procreg.AlreadyRegistered) as info:
            await procreg.register("k", other)
        return holder, info.value, await procreg.lookup("k")

    holder, err, entry = backend.run(main)
    assert err.pid == holder
    assert isinstance(err, procreg.ProcregError)
    assert entry == (holder, {"who": "holder"})


def test_reregister_by_same_pid_updates_meta(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        await procreg.register("k", pid, meta={"v": 1})
        first = await procreg.lookup("k")
        await procreg.register("k", pid, meta={"v": 2})
        second = await procreg.lookup("k")
        return pid, first, second, procreg.count()

    pid, first, second, n = backend.run(main)
    assert first == (pid, {"v": 1})
    assert second == (pid, {"v": 2})
    assert n == 1


def test_register_dead_pid_raises_no_process(backend: Backend) -> None:
    async def main() -> Any:
        pid = await dead_pid()
        with pytest.raises(procreg.NoProcess):
            await procreg.register("k", pid)
        return await procreg.whereis("k"), procreg.count()

    assert backend.run(main) == (None, 0)


def test_unregister_key_of_another_process_raises_not_owner(backend: Backend) -> None:
    async def main() -> Any:
        holder = procreg.spawn(worker)
        await procreg.register("k", holder)
        with pytest.raises(procreg.NotOwner):
            await procreg.unregister("k")
        with pytest.raises(procreg.NotOwner):
            await procreg.unregister("k", pid=procreg.self())
        return holder, await procreg.whereis("k")

    holder, found = backend.run(main)
    assert found == holder
    assert issubclass(procreg.NotOwner, procreg.ProcregError)


def test_unregister_own_key_and_missing_key(backend: Backend) -> None:
    async def main() -> Any:
        await procreg.register("mine")
        removed = await procreg.unregister("mine")
        again = await procreg.unregister("mine")
        return removed, again, await procreg.whereis("mine")

    assert backend.run(main) == (True, False, None)


def test_unregister_outside_any_process_is_unconditional(backend: Backend) -> None:
    async def main() -> Any:
        async with backend.new_node():
            pid = procreg.spawn(worker)
            await procreg.register("k", pid)
            removed = await procreg.unregister("k")
            return removed, await procreg.whereis("k"), procreg.is_alive(pid)

    assert asyncio.run(main()) == (True, None, True)


def test_register_from_outside_a_process_needs_a_pid(backend: Backend) -> None:
    async def main() -> None:
        async with backend.new_node():
            with pytest.raises(procreg.NotInProcess):
                await procreg.register("k")
            assert procreg.count() == 0

    asyncio.run(main())


def test_process_holds_several_keys_in_several_tables_all_removed_at_end(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        keys = [("a", "default"), ("b", "default"), ("a", "t1"), (("x", 1), "t2")]
        for key, table in keys:
            await procreg.register(key, pid, table=table)
        held = [await procreg.whereis(key, table=table) for key, table in keys]
        reason = await end_and_wait(pid)
        after = [await procreg.whereis(key, table=table) for key, table in keys]
        counts = [procreg.count(t) for t in ("default", "t1", "t2")]
        return pid, held, reason, after, counts

    pid, held, reason, after, counts = backend.run(main)
    assert held == [pid] * 4
    assert reason == "kill"
    assert after == [None] * 4
    assert counts == [0, 0, 0]


def test_unregister_one_key_keeps_the_others(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        await procreg.register("a", pid)
        await procreg.register("b", pid)
        await procreg.register("c", pid, table="t")
        await procreg.unregister("b", pid=pid)
        return (
            pid,
            await procreg.whereis("a"),
            await procreg.whereis("b"),
            await procreg.whereis("c", table="t"),
        )

    pid, a, b, c = backend.run(main)
    assert (a, b, c) == (pid, None, pid)


def test_key_is_free_again_after_the_holder_ends(backend: Backend) -> None:
    async def main() -> Any:
        first = procreg.spawn(worker)
        await procreg.register("k", first)
        await end_and_wait(first)
        second = procreg.spawn(worker)
        await procreg.register("k", second)
        return second, await procreg.whereis("k")

    second, found = backend.run(main)
    assert found == second


# -- an entry disappears when its process ends, whatever the reason ------------------

REASONS = ["normal", "crash", "kill", "shutdown", "idle", "linked"]


async def _start(kind: str, idle: float | None) -> procreg.Pid:
    if kind == "coroutine":
        return procreg.spawn(worker, idle_timeout=idle)
    return Box.start(idle_timeout=idle)


@pytest.mark.parametrize("kind", ["coroutine", "server"])
@pytest.mark.parametrize("how", REASONS)
def test_entry_disappears_when_process_ends(backend: Backend, kind: str, how: str) -> None:
    async def main() -> Any:
        pid = await _start(kind, 0.02 if how == "idle" else None)
        await procreg.register(("k", how), pid)
        await procreg.register(("k", how), pid, table="other", meta={"m": 1})
        await procreg.join(("g", how), pid)
        ref = procreg.monitor(pid)
        if how == "normal":
            if kind == "coroutine":
                procreg.send(pid, "stop")
            else:
                procreg.cast(pid, "stop")
        elif how == "crash":
            procreg.cast(pid, "crash")
        elif how in ("kill", "shutdown"):
            procreg.exit(pid, how)
        elif how == "linked":
            buddy = procreg.spawn(worker)
            assert await procreg.call(pid, ("link", buddy), timeout=2) == "ok"
            procreg.send(buddy, "crash")
        # idle: just wait
        reason = (await wait_down(ref)).reason
        return (
            reason,
            procreg.is_alive(pid),
            await procreg.whereis(("k", how)),
            await procreg.lookup(("k", how), table="other"),
            await procreg.members(("g", how)),
        )

    reason, alive, found, looked, members = backend.run(main)
    if how in ("normal", "kill", "shutdown", "idle"):
        assert reason == how
    else:
        assert isinstance(reason, RuntimeError)
    assert not alive
    assert found is None
    assert looked is None
    assert members == []


# -- get_or_spawn -------------------------------------------------------------------


@pytest.mark.parametrize("factory", [Box, AsyncBox, worker], ids=["sync", "async-init", "body"])
def test_get_or_spawn_idle_timeout_ends_process_and_frees_key(
    backend: Backend, factory: Any
) -> None:
    async def main() -> Any:
        first = await procreg.get_or_spawn("k", factory, idle_timeout=0.02)
        registered = await procreg.whereis("k")
        reason = (await wait_down(procreg.monitor(first))).reason
        gone = await procreg.whereis("k")
        second = await procreg.get_or_spawn("k", factory)
        return first, registered, reason, gone, second, procreg.is_alive(second)

    first, registered, reason, gone, second, alive = backend.run(main)
    assert registered == first
    assert reason == "idle"
    assert gone is None
    assert second != first
    assert alive


@pytest.mark.parametrize("factory", [Box, AsyncBox], ids=["sync-init", "async-init"])
def test_get_or_spawn_server_passes_args_and_returns_same_pid(
    backend: Backend, factory: type
) -> None:
    async def main() -> Any:
        a = await procreg.get_or_spawn("k", factory, 1, "two")
        b = await procreg.get_or_spawn("k", factory, 3, "four")
        return a, b, await procreg.call(a, "args"), await procreg.whereis("k")

    a, b, args, found = backend.run(main)
    assert a == b == found
    assert args == (1, "two")


def test_get_or_spawn_async_body_with_args(backend: Backend) -> None:
    async def main() -> Any:
        a = await procreg.get_or_spawn("k", worker, "x", 2)
        b = await procreg.get_or_spawn("k", worker, "y", 3)
        return a, b, await procreg.call(a, "args", timeout=2), procreg.is_alive(a)

    a, b, args, alive = backend.run(main)
    assert a == b
    assert args == ("x", 2)
    assert alive


def test_get_or_spawn_with_meta(backend: Backend) -> None:
    async def main() -> Any:
        pid = await procreg.get_or_spawn("k", Box, meta={"room": "lobby"})
        return pid, await procreg.lookup("k")

    pid, entry = backend.run(main)
    assert entry == (pid, {"room": "lobby"})


@pytest.mark.parametrize("factory", [Box, AsyncBox, worker], ids=["sync", "async-init", "body"])
@pytest.mark.parametrize("how", ["kill", "crash"])
def test_get_or_spawn_starts_a_new_process_after_the_old_one_died(
    backend: Backend, factory: Any, how: str
) -> None:
    async def main() -> Any:
        first = await procreg.get_or_spawn("k", factory)
        await end_and_wait(first, how)
        second = await procreg.get_or_spawn("k", factory)
        return first, second, procreg.is_alive(second), await procreg.whereis("k")

    first, second, alive, found = backend.run(main)
    assert second != first
    assert alive
    assert found == second


def _sync_fn() -> None:
    pass


class NotAServer:
    pass


@pytest.mark.parametrize(
    "factory",
    [_sync_fn, lambda: None, NotAServer, "worker", None, print],
    ids=["sync-def", "lambda", "plain-class", "str", "none", "builtin"],
)
@pytest.mark.parametrize("op", ["get_or_spawn", "spawn_unique"])
def test_bad_factory_raises_type_error_and_registers_nothing(
    backend: Backend, factory: Any, op: str
) -> None:
    async def main() -> Any:
        before = procreg.current_node().process_count()
        fn = getattr(procreg, op)
        with pytest.raises(TypeError):
            await fn("k", factory)
        return (
            await procreg.whereis("k"),
            procreg.count(),
            procreg.current_node().process_count() - before,
        )

    assert backend.run(main) == (None, 0, 0)


@pytest.mark.parametrize("op", ["get_or_spawn", "spawn_unique"])
def test_server_instance_as_factory_raises_type_error(backend: Backend, op: str) -> None:
    async def main() -> Any:
        fn = getattr(procreg, op)
        with pytest.raises(TypeError):
            await fn("k", Box())
        return await procreg.whereis("k"), procreg.count()

    assert backend.run(main) == (None, 0)


class InitFails(procreg.Server):
    def init(self, *args: Any) -> None:
        raise ValueError("bad init")


class AsyncInitFails(procreg.Server):
    async def init(self, *args: Any) -> None:
        await asyncio.sleep(0)
        raise ValueError("bad async init")


@pytest.mark.parametrize("factory", [InitFails, AsyncInitFails], ids=["sync", "async"])
@pytest.mark.parametrize("op", ["get_or_spawn", "spawn_unique"])
def test_failing_init_raises_to_caller_and_key_stays_free(
    backend: Backend, factory: type, op: str
) -> None:
    async def main() -> Any:
        before = procreg.current_node().process_count()
        fn = getattr(procreg, op)
        with pytest.raises(ValueError, match="bad"):
            await fn("k", factory, table="t")
        free = await procreg.whereis("k", table="t")
        leftover = procreg.current_node().process_count() - before
        good = await procreg.get_or_spawn("k", Box, table="t")
        return free, leftover, procreg.count("t"), good, await procreg.whereis("k", table="t")

    free, leftover, n, good, found = backend.run(main)
    assert free is None
    assert leftover == 0
    assert n == 1
    assert found == good


def test_concurrent_callers_share_one_failing_async_init(backend: Backend) -> None:
    class Fails(procreg.Server):
        inits = 0

        async def init(self) -> None:
            Fails.inits += 1
            await asyncio.sleep(0)
            raise ValueError("nope")

    async def main() -> Any:
        results = await asyncio.gather(
            *(procreg.get_or_spawn("k", Fails) for _ in range(20)), return_exceptions=True
        )
        return results, Fails.inits, await procreg.whereis("k")

    results, inits, found = backend.run(main)
    assert all(isinstance(r, ValueError) for r in results)
    assert inits == 1
    assert found is None


@pytest.mark.parametrize("op", ["get_or_spawn", "spawn_unique"])
def test_100_concurrent_callers_async_init_start_exactly_one(backend: Backend, op: str) -> None:
    inits: list[procreg.Pid] = []

    class Slow(procreg.Server):
        async def init(self) -> None:
            inits.append(procreg.self())
            for _ in range(3):
                await asyncio.sleep(0)

    async def main() -> Any:
        fn = getattr(procreg, op)
        results = await asyncio.gather(*(fn("k", Slow) for _ in range(100)))
        return results, list(inits), await procreg.whereis("k"), procreg.count()

    results, inits, found, n = backend.run(main)
    assert len(inits) == 1
    pids = [r[0] for r in results] if op == "spawn_unique" else results
    assert set(pids) == {inits[0]} == {found}
    assert n == 1
    if op == "spawn_unique":
        assert sum(1 for _, started in results if started) == 1


@pytest.mark.parametrize("factory", [Box, AsyncBox, worker], ids=["sync", "async-init", "body"])
def test_spawn_unique_exactly_one_started_among_racers(backend: Backend, factory: Any) -> None:
    async def main() -> Any:
        results = await asyncio.gather(
            *(procreg.spawn_unique(("k", i % 5), factory) for i in range(100))
        )
        return results, sorted(procreg.entries(), key=repr)

    results, entries = backend.run(main)
    by_key: dict[Any, set[procreg.Pid]] = {}
    started: dict[Any, int] = {}
    for i, (pid, was_started) in enumerate(results):
        key = ("k", i % 5)
        by_key.setdefault(key, set()).add(pid)
        started[key] = started.get(key, 0) + int(was_started)
    assert all(len(pids) == 1 for pids in by_key.values())
    assert started == {("k", j): 1 for j in range(5)}
    assert dict(entries) == {key: next(iter(pids)) for key, pids in by_key.items()}


def test_spawn_unique_reports_not_started_for_existing_key(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        await procreg.register("k", pid)
        return pid, await procreg.spawn_unique("k", Box)

    pid, (found, started) = backend.run(main)
    assert found == pid
    assert started is False


def test_get_or_spawn_gives_way_to_a_register_during_async_init(backend: Backend) -> None:
    gate: dict[str, asyncio.Event] = {}

    class Gated(procreg.Server):
        async def init(self) -> None:
            await gate["e"].wait()

    async def main() -> Any:
        gate["e"] = asyncio.Event()
        before = procreg.current_node().process_count()
        task = asyncio.ensure_future(procreg.spawn_unique("k", Gated))
        await asyncio.sleep(0)
        await procreg.register("k")
        gate["e"].set()
        pid, started = await task
        for _ in range(5):
            await asyncio.sleep(0)
        after = procreg.current_node().process_count()
        return pid, started, procreg.self(), after - before

    pid, started, me, extra = backend.run(main)
    assert pid == me
    assert started is False
    assert extra == 0


def test_cancelling_one_caller_does_not_fail_the_others(backend: Backend) -> None:
    gate: dict[str, asyncio.Event] = {}

    class Gated(procreg.Server):
        async def init(self) -> None:
            await gate["e"].wait()

        def handle_call(self, request: Any) -> Any:
            return request

    async def main() -> Any:
        gate["e"] = asyncio.Event()
        first = asyncio.ensure_future(procreg.get_or_spawn("k", Gated))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(procreg.get_or_spawn("k", Gated))
        await asyncio.sleep(0)
        first.cancel()
        gate["e"].set()
        (result,) = await asyncio.gather(second, return_exceptions=True)
        return result

    result = backend.run(main)
    assert isinstance(result, procreg.Pid), result


def test_cancelled_caller_leaves_no_orphan_process(backend: Backend) -> None:
    gate: dict[str, asyncio.Event] = {}
    started: list[procreg.Pid] = []

    class Gated(procreg.Server):
        async def init(self) -> None:
            started.append(procreg.self())
            await gate["e"].wait()

    async def main() -> Any:
        gate["e"] = asyncio.Event()
        task = asyncio.ensure_future(procreg.get_or_spawn("k", Gated))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate["e"].set()

        # (a store-backed backend registers it once its claim and init are both done)
        async def settled() -> bool:
            if not started:
                return False  # (its claim may still be on its way)
            if all(not procreg.is_alive(p) for p in started):
                return True
            return await procreg.whereis("k") is not None

        await wait_until(settled)
        found = await procreg.whereis("k")
        return [(p, procreg.is_alive(p)) for p in started], found

    instances, found = backend.run(main)
    assert len(instances) == 1
    # every live instance is the registered one
    for pid, alive in instances:
        assert not alive or pid == found


def test_get_or_spawn_never_hands_out_an_exiting_process(backend: Backend) -> None:
    gate: dict[str, asyncio.Event] = {}

    class SlowStop(procreg.Server):
        def handle_call(self, request: Any) -> Any:
            return request

        async def terminate(self, reason: Any) -> None:
            await gate["e"].wait()

    async def main() -> Any:
        gate["e"] = asyncio.Event()
        first = await procreg.get_or_spawn("k", SlowStop)
        procreg.exit(first, "shutdown")
        task = asyncio.ensure_future(procreg.get_or_spawn("k", SlowStop))
        for _ in range(3):
            await asyncio.sleep(0)
        gate["e"].set()
        second = await asyncio.wait_for(task, 2)
        try:
            pong = await procreg.call(second, "ping", 1)
        except procreg.NoProcess as exc:
            pong = exc
        return first, second, procreg.is_alive(second), pong

    first, second, alive, pong = backend.run(main)
    assert second != first
    assert alive
    assert pong == "ping"


# -- bad input -----------------------------------------------------------------------


async def _op(op: str, key: Any) -> Any:
    if op == "get_or_spawn":
        return await procreg.get_or_spawn(key, Box)
    if op == "spawn_unique":
        return await procreg.spawn_unique(key, Box)
    if op == "register":
        return await procreg.register(key)
    if op == "unregister":
        return await procreg.unregister(key)
    if op == "lookup":
        return await procreg.lookup(key)
    if op == "whereis":
        return await procreg.whereis(key)
    if op == "join":
        return await procreg.join(key)
    if op == "leave":
        return await procreg.leave(key)
    if op == "members":
        return await procreg.members(key)
    if op == "publish":
        return await procreg.publish(key, "x")
    raise AssertionError(op)


OPS = [
    "get_or_spawn",
    "spawn_unique",
    "register",
    "unregister",
    "lookup",
    "join",
    "leave",
    "members",
    "publish",
]


@pytest.mark.parametrize("key", [["a", 1], {"a": 1}, {1, 2}], ids=["list", "dict", "set"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("table_exists", [False, True])
def test_unhashable_key_raises_type_error_naming_its_type(
    backend: Backend, op: str, key: Any, table_exists: bool
) -> None:
    async def main() -> Any:
        if table_exists:
            await procreg.get_or_spawn("other", Box)
            await procreg.join("other-group")
        before = procreg.current_node().process_count()
        with pytest.raises(TypeError) as info:
            await _op(op, key)
        return (
            str(info.value),
            procreg.current_node().process_count() - before,
            procreg.count(),
        )

    message, extra, n = backend.run(main)
    assert type(key).__name__ in message
    assert extra == 0
    assert n == (1 if table_exists else 0)


def test_whereis_unhashable_key_when_table_exists(backend: Backend) -> None:
    async def main() -> str:
        await procreg.register("other")
        with pytest.raises(TypeError) as info:
            await procreg.whereis(["a"])
        return str(info.value)

    assert "list" in backend.run(main)


def test_whereis_unhashable_key_on_empty_table(backend: Backend) -> None:
    async def main() -> str:
        with pytest.raises(TypeError) as info:
            await procreg.whereis(["a"])
        return str(info.value)

    assert "list" in backend.run(main)


def test_non_str_table_is_a_type_error(backend: Backend) -> None:
    async def main() -> None:
        with pytest.raises(TypeError):
            await procreg.register("k", table=42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await procreg.get_or_spawn("k", Box, table=42)  # type: ignore[arg-type]
        assert procreg.count() == 0

    backend.run(main)


def test_bad_placement_is_a_value_error(backend: Backend) -> None:
    async def main() -> Any:
        with pytest.raises(ValueError):
            await procreg.get_or_spawn("k", Box, placement="anywhere")
        return await procreg.whereis("k")

    assert backend.run(main) is None


# -- groups --------------------------------------------------------------------------


def test_join_leave_members_publish(backend: Backend) -> None:
    async def main() -> Any:
        a = procreg.spawn(worker)
        b = Box.start()
        c = procreg.spawn(worker)
        joined = [
            await procreg.join("g", a),
            await procreg.join("g", b),
            await procreg.join("g", c),
        ]
        listed = await procreg.members("g")
        left = await procreg.leave("g", c)
        left_again = await procreg.leave("g", c)
        after = await procreg.members("g")
        n = await procreg.publish("g", "hello")
        return (a, b, c), joined, listed, left, left_again, after, n

    (a, b, c), joined, listed, left, left_again, after, n = backend.run(main)
    assert joined == [True, True, True]
    assert listed == [a, b, c]
    assert (left, left_again) == (True, False)
    assert after == [a, b]
    assert n == 2


def test_join_twice_is_a_noop(backend: Backend) -> None:
    async def main() -> Any:
        first = await procreg.join("g")
        second = await procreg.join("g")
        return first, second, await procreg.members("g"), await procreg.publish("g", "x")

    first, second, members, n = backend.run(main)
    assert (first, second) == (True, False)
    assert len(members) == 1
    assert n == 1


def test_join_dead_pid_raises_no_process(backend: Backend) -> None:
    async def main() -> Any:
        pid = await dead_pid()
        with pytest.raises(procreg.NoProcess):
            await procreg.join("g", pid)
        return await procreg.members("g")

    assert backend.run(main) == []


def test_unknown_group_is_empty(backend: Backend) -> None:
    async def main() -> Any:
        return (
            await procreg.members("nope"),
            await procreg.publish("nope", "x"),
            await procreg.leave("nope"),
        )

    assert backend.run(main) == ([], 0, False)


def test_a_process_leaves_all_its_groups_when_it_ends(backend: Backend) -> None:
    async def main() -> Any:
        a = procreg.spawn(worker)
        b = procreg.spawn(worker)
        for g in ("g1", "g2", "g3"):
            await procreg.join(g, a)
        await procreg.join("g2", b)
        await end_and_wait(a, "crash")
        return b, [await procreg.members(g) for g in ("g1", "g2", "g3")]

    b, members = backend.run(main)
    assert members == [[], [b], []]


def test_publish_reaches_coroutines_and_servers(backend: Backend) -> None:
    async def main() -> Any:
        me = procreg.self()
        coros = [procreg.spawn(worker) for _ in range(3)]
        servers = [Box.start() for _ in range(3)]
        for pid in coros + servers:
            await procreg.join("pool", pid)
        n = await procreg.publish("pool", ("echo", me, "hi"))
        got = set()
        for _ in range(6):
            tag, pid, text = await procreg.receive(
                timeout=2, match=lambda m: isinstance(m, tuple) and m[0] == "echoed"
            )
            assert (tag, text) == ("echoed", "hi")
            got.add(pid)
        infos = [await procreg.call(s, "infos") for s in servers]
        return n, got, set(coros + servers), infos

    n, got, expected, infos = backend.run(main)
    assert n == 6
    assert got == expected
    assert all(len(i) == 1 and i[0][0] == "echo" for i in infos)


def test_group_membership_is_per_process_and_separate_from_keys(backend: Backend) -> None:
    async def main() -> Any:
        pid = procreg.spawn(worker)
        await procreg.join("k", pid)
        return await procreg.whereis("k"), await procreg.members("k")

    found, members = backend.run(main)
    assert found is None
    assert len(members) == 1


def test_join_from_outside_a_process_needs_a_pid(backend: Backend) -> None:
    async def main() -> Any:
        async with backend.new_node():
            with pytest.raises(procreg.NotInProcess):
                await procreg.join("g")
            pid = procreg.spawn(worker)
            assert await procreg.join("g", pid) is True
            return pid, await procreg.members("g")

    pid, members = asyncio.run(main())
    assert members == [pid]


def test_members_are_sorted_by_pid_whatever_the_joining_order(backend: Backend):
    """One documented order for every backend (issue 12, item 8): sorted by pid."""

    async def idle():
        await procreg.receive()

    async def main():
        pids = [procreg.spawn(idle) for _ in range(6)]
        for pid in [pids[3], pids[0], pids[5], pids[1], pids[4], pids[2]]:
            await procreg.join("g", pid)
        await procreg.leave("g", pids[4])
        await procreg.join("g", pids[4])  # rejoining does not move it to the end
        return pids, await procreg.members("g")

    pids, members = backend.run(main)
    assert members == sorted(pids) == pids
