"""procreg.nitrogen: the ProcessRegistryHandler behaviour, NprocregHandler over the
node registry, procreg.nitrogen.get_pid and custom handlers installed on a Node."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import pytest

import procreg
from conftest import wait_down
from procreg import nitrogen
from procreg.nitrogen import NprocregHandler, ProcessRegistryHandler


async def pool() -> None:
    while True:
        msg = await procreg.receive()
        if isinstance(msg, procreg.Call):
            procreg.reply(msg.caller, ("pool", msg.request))


class Room(procreg.Server):
    def init(self) -> None:
        self.n = 0

    def handle_call(self, request: Any) -> Any:
        self.n += 1
        return self.n


class SlowRoom(procreg.Server):
    inits = 0

    async def init(self) -> None:
        SlowRoom.inits += 1
        await asyncio.sleep(0)


# -- NprocregHandler --------------------------------------------------------------


def test_nprocreg_get_pid_3_then_4_then_3() -> None:
    async def main() -> Any:
        h = NprocregHandler()
        missing, s1 = await h.get_pid("k", {}, "state")
        spawned, s2 = await h.get_pid("k", pool, {}, s1)
        found, s3 = await h.get_pid("k", {}, s2)
        again, s4 = await h.get_pid("k", Room, {}, s3)
        return (
            missing,
            spawned,
            found,
            again,
            (s1, s2, s3, s4),
            await procreg.whereis("k"),
            await procreg.call(spawned, "x", 2),
        )

    missing, spawned, found, again, states, registered, reply = procreg.run(main)
    assert missing is None
    assert isinstance(spawned, procreg.Pid)
    assert found == again == registered == spawned
    assert states == ("state",) * 4
    assert reply == ("pool", "x")


def test_nprocreg_spawns_a_server_class() -> None:
    async def main() -> Any:
        h = NprocregHandler()
        pid, _ = await h.get_pid("room", Room, {}, None)
        return await procreg.call(pid, "hit"), await procreg.call(pid, "hit")

    assert procreg.run(main) == (1, 2)


def test_nprocreg_uses_its_table() -> None:
    async def main() -> Any:
        h = NprocregHandler(table="nitro")
        pid, _ = await h.get_pid("k", pool, {}, None)
        return (
            pid,
            procreg.entries("nitro"),
            await procreg.whereis("k"),
            (await h.get_pid("k", {}, None))[0],
        )

    pid, entries, in_default, found = procreg.run(main)
    assert entries == [("k", pid)]
    assert in_default is None
    assert found == pid


def test_nprocreg_respawns_after_death() -> None:
    async def main() -> Any:
        h = NprocregHandler()
        first, _ = await h.get_pid("k", pool, {}, None)
        ref = procreg.monitor(first)
        procreg.exit(first, "kill")
        await wait_down(ref)
        gone, _ = await h.get_pid("k", {}, None)
        second, _ = await h.get_pid("k", pool, {}, None)
        return first, gone, second, procreg.is_alive(second)

    first, gone, second, alive = procreg.run(main)
    assert gone is None
    assert second != first
    assert alive


def test_nprocreg_concurrent_get_pid_4_starts_one() -> None:
    SlowRoom.inits = 0

    async def main() -> Any:
        h = NprocregHandler()
        results = await asyncio.gather(*(h.get_pid("k", SlowRoom, {}, None) for _ in range(50)))
        return {pid for pid, _ in results}, SlowRoom.inits

    pids, inits = procreg.run(main)
    assert len(pids) == 1
    assert inits == 1


@pytest.mark.parametrize("nargs", [0, 1, 4, 5])
def test_get_pid_wrong_argument_count_is_type_error(nargs: int) -> None:
    async def main() -> Any:
        h = NprocregHandler()
        with pytest.raises(TypeError):
            await h.get_pid("k", *([{}] * nargs))
        return procreg.count(), await procreg.whereis("k")

    assert procreg.run(main) == (0, None)


def test_nprocreg_bad_function_and_bad_key() -> None:
    def not_async() -> None:
        pass

    async def main() -> Any:
        h = NprocregHandler()
        with pytest.raises(TypeError):
            await h.get_pid("k", not_async, {}, None)
        with pytest.raises(TypeError, match="list"):
            await h.get_pid(["k"], pool, {}, None)
        with pytest.raises(TypeError, match="dict"):
            await h.get_pid({"k": 1}, {}, None)
        return procreg.count(), procreg.current_node().process_count()

    count, processes = procreg.run(main)
    assert count == 0
    assert processes == 1  # main only


def test_base_handler_callbacks() -> None:
    async def main() -> Any:
        h = ProcessRegistryHandler()
        init = await h.init({"c": 1}, "s0")
        finish = await h.finish({"c": 1}, "s1")
        with pytest.raises(NotImplementedError):
            await h.get_pid("k", {}, None)
        with pytest.raises(NotImplementedError):
            await h.get_pid("k", pool, {}, None)
        return init, finish

    assert procreg.run(main) == ("s0", "s1")


# -- the dispatch on arity ---------------------------------------------------------


class Recorder(ProcessRegistryHandler):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def lookup_pid(
        self, key: Hashable, config: dict[str, Any], state: Any
    ) -> tuple[procreg.Pid | None, Any]:
        self.calls.append(("lookup", key, config, state))
        return None, "after-lookup"

    async def spawn_pid(
        self, key: Hashable, function: Any, config: dict[str, Any], state: Any
    ) -> tuple[procreg.Pid, Any]:
        self.calls.append(("spawn", key, function, config, state))
        return procreg.Pid("local", 0, 0), "after-spawn"


def test_get_pid_dispatches_on_3_and_4_arguments() -> None:
    async def main() -> Any:
        h = Recorder()
        r3 = await h.get_pid("k", {"c": 3}, "s3")
        r4 = await h.get_pid("k", pool, {"c": 4}, "s4")
        return h.calls, r3, r4

    calls, r3, r4 = procreg.run(main)
    assert calls == [
        ("lookup", "k", {"c": 3}, "s3"),
        ("spawn", "k", pool, {"c": 4}, "s4"),
    ]
    assert r3 == (None, "after-lookup")
    assert r4 == (procreg.Pid("local", 0, 0), "after-spawn")


# -- procreg.nitrogen.get_pid on the node's handler ---------------------------------


def test_module_get_pid_default_handler() -> None:
    async def main() -> Any:
        missing = await nitrogen.get_pid("pool:lobby")
        pid = await nitrogen.get_pid("pool:lobby", pool)
        found = await nitrogen.get_pid("pool:lobby")
        again = await nitrogen.get_pid("pool:lobby", Room)
        return (
            missing,
            pid,
            found,
            again,
            await procreg.whereis("pool:lobby"),
            type(procreg.current_node().handler),
        )

    missing, pid, found, again, registered, handler_type = procreg.run(main)
    assert missing is None
    assert pid == found == again == registered
    assert handler_type is NprocregHandler


def test_module_get_pid_bad_function_registers_nothing() -> None:
    async def main() -> Any:
        with pytest.raises(TypeError):
            await nitrogen.get_pid("k", lambda: None)
        return await nitrogen.get_pid("k"), procreg.count()

    assert procreg.run(main) == (None, 0)


class CountingHandler(ProcessRegistryHandler):
    """Keeps its state in a dict of counters and logs init/finish; spawns in the
    table named by its config, under a prefixed key."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], Any]] = []

    async def init(self, config: dict[str, Any], state: Any) -> Any:
        self.events.append(("init", dict(config), state))
        return {"lookups": 0, "spawns": 0}

    async def finish(self, config: dict[str, Any], state: Any) -> Any:
        self.events.append(("finish", dict(config), dict(state)))
        return None

    async def lookup_pid(
        self, key: Hashable, config: dict[str, Any], state: Any
    ) -> tuple[procreg.Pid | None, Any]:
        pid = await procreg.whereis((config["prefix"], key), table=config["table"])
        return pid, {**state, "lookups": state["lookups"] + 1}

    async def spawn_pid(
        self, key: Hashable, function: Any, config: dict[str, Any], state: Any
    ) -> tuple[procreg.Pid, Any]:
        pid = await procreg.get_or_spawn((config["prefix"], key), function, table=config["table"])
        return pid, {**state, "spawns": state["spawns"] + 1}


CONFIG = {"table": "custom", "prefix": "app"}


def test_custom_handler_via_procreg_run() -> None:
    handler = CountingHandler()

    async def main() -> Any:
        node = procreg.current_node()
        assert node.handler is handler
        assert node.handler_config == CONFIG
        seen = [handler.events[:]]
        missing = await nitrogen.get_pid("a")
        pid = await nitrogen.get_pid("a", pool)
        found = await nitrogen.get_pid("a")
        again = await nitrogen.get_pid("a", pool)
        await nitrogen.get_pid("b")
        return seen, missing, pid, found, again, procreg.entries("custom"), procreg.entries()

    seen, missing, pid, found, again, custom, default = procreg.run(
        main, registry_handler=handler, handler_config=CONFIG
    )
    assert seen == [[("init", CONFIG, None)]]
    assert missing is None
    assert pid == found == again
    assert custom == [(("app", "a"), pid)]
    assert default == []
    # finish ran on node stop, with the state threaded through every get_pid
    assert handler.events == [
        ("init", CONFIG, None),
        ("finish", CONFIG, {"lookups": 3, "spawns": 2}),
    ]


def test_custom_handler_with_async_with_node() -> None:
    handler = CountingHandler()

    async def main() -> Any:
        async with procreg.Node(registry_handler=handler, handler_config=CONFIG) as node:
            assert handler.events == [("init", CONFIG, None)]
            assert node.handler is handler
            pid = await nitrogen.get_pid("x", Room)
            assert await nitrogen.get_pid("x") == pid
            assert await procreg.whereis(("app", "x"), table="custom") == pid
            assert handler.events == [("init", CONFIG, None)]  # no finish yet
            return pid

    asyncio.run(main())
    assert handler.events[-1] == ("finish", CONFIG, {"lookups": 1, "spawns": 1})
    assert len(handler.events) == 2


def test_handler_config_defaults_to_empty_dict_and_is_a_copy() -> None:
    handler = CountingHandler()
    config = {"table": "t", "prefix": "p"}

    async def main() -> Any:
        async with procreg.Node(registry_handler=handler, handler_config=config) as node:
            config["table"] = "changed"
            return dict(node.handler_config)

    assert asyncio.run(main()) == {"table": "t", "prefix": "p"}

    seen: list[Any] = []

    class Plain(NprocregHandler):
        async def init(self, config: dict[str, Any], state: Any) -> Any:
            seen.append(config)
            return state

    async def main2() -> None:
        async with procreg.Node(registry_handler=Plain()):
            pass

    asyncio.run(main2())
    assert seen == [{}]


def test_custom_handler_overriding_get_pid_directly() -> None:
    """A handler written Nitrogen-style: one get_pid that switches on arity."""

    class Direct(ProcessRegistryHandler):
        async def get_pid(self, key: Hashable, *args: Any) -> tuple[procreg.Pid | None, Any]:
            *rest, _config, state = args
            state = [*state, len(args) + 1]
            if rest:
                return await procreg.get_or_spawn(key, rest[0]), state
            return await procreg.whereis(key), state

        async def init(self, config: dict[str, Any], state: Any) -> Any:
            return []

        async def finish(self, config: dict[str, Any], state: Any) -> Any:
            finished.append(state)
            return state

    finished: list[Any] = []

    async def main() -> Any:
        pid = await nitrogen.get_pid("k", pool)
        found = await nitrogen.get_pid("k")
        return pid, found

    pid, found = procreg.run(main, registry_handler=Direct())
    assert pid == found
    assert finished == [[4, 3]]


def test_concurrent_get_pid_does_not_lose_handler_state() -> None:
    class Yielding(CountingHandler):
        async def lookup_pid(
            self, key: Hashable, config: dict[str, Any], state: Any
        ) -> tuple[procreg.Pid | None, Any]:
            await asyncio.sleep(0)
            return await super().lookup_pid(key, config, state)

    handler = Yielding()

    async def main() -> None:
        await asyncio.gather(*(nitrogen.get_pid(i) for i in range(20)))

    procreg.run(main, registry_handler=handler, handler_config=CONFIG)
    assert handler.events[-1] == ("finish", CONFIG, {"lookups": 20, "spawns": 0})
