"""Waiting on yourself through the registry raises Deadlock (issue 12, item 2).

An async ``init`` that awaits its own key (directly, through other keys, or through
the Nitrogen handler) could never be answered: it raises `procreg.Deadlock` as a
process calling itself does, and the key is left free for later callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import pytest

import procreg
from procreg import nitrogen


class SelfWaiter(procreg.Server):
    """The issue's input: its async init awaits get_or_spawn of its own key."""

    async def init(self, key):
        await asyncio.sleep(0)
        self.found = await procreg.get_or_spawn(key, SelfWaiter, key)

    def handle_call(self, request):
        return "ok"


class Fine(procreg.Server):
    def handle_call(self, request):
        return "fine"


@pytest.mark.parametrize("via", ["get_or_spawn", "spawn_unique", "nitrogen"])
def test_async_init_awaiting_its_own_key_raises_deadlock_and_frees_the_key(via):
    async def main():
        if via == "get_or_spawn":
            start = procreg.get_or_spawn("k", SelfWaiter, "k")
        elif via == "spawn_unique":
            start = procreg.spawn_unique("k", SelfWaiter, "k")
        else:

            class Nested(procreg.Server):
                async def init(self):
                    await nitrogen.get_pid("k", Nested)

            start = nitrogen.get_pid("k", Nested)
        with pytest.raises(procreg.Deadlock):
            await asyncio.wait_for(start, 2)
        # the key is not wedged: a later caller starts its process
        pid = await asyncio.wait_for(procreg.get_or_spawn("k", Fine), 2)
        return await procreg.call(pid, "x"), procreg.count()

    assert procreg.run(main) == ("fine", 1)


def test_a_cycle_through_two_keys_raises_deadlock():
    class A(procreg.Server):
        async def init(self):
            await procreg.get_or_spawn("b", B)

    class B(procreg.Server):
        async def init(self):
            await procreg.get_or_spawn("a", A)

    async def main():
        with pytest.raises(procreg.Deadlock):
            await asyncio.wait_for(procreg.get_or_spawn("a", A), 2)
        return procreg.count()

    assert procreg.run(main) == 0


def test_an_init_waiting_on_another_key_still_works():
    class Outer(procreg.Server):
        async def init(self):
            self.inner = await procreg.get_or_spawn("inner", Fine)

        def handle_call(self, request):
            return self.inner

    async def main():
        outer = await procreg.get_or_spawn("outer", Outer)
        return await procreg.call(outer, "x") == await procreg.whereis("inner")

    assert procreg.run(main)


def test_concurrent_callers_of_an_async_init_key_still_share_it():
    class Slow(procreg.Server):
        async def init(self):
            await asyncio.sleep(0.01)

    async def main():
        pids = await asyncio.gather(*(procreg.get_or_spawn("s", Slow) for _ in range(10)))
        return len(set(pids)), procreg.count()

    assert procreg.run(main) == (1, 1)


def test_nitrogen_get_pid_in_an_init_does_not_block_other_keys():
    """The default handler holds no node-wide lock while it awaits an init: an
    init that calls get_pid for another key, and other callers meanwhile, proceed."""
    gate: dict[str, Any] = {}

    class Outer(procreg.Server):
        async def init(self):
            self.inner = await nitrogen.get_pid("inner", Fine)
            await gate["open"]

    async def main():
        gate["open"] = asyncio.get_running_loop().create_future()
        outer = asyncio.ensure_future(nitrogen.get_pid("outer", Outer))
        await asyncio.sleep(0.01)
        other = await asyncio.wait_for(nitrogen.get_pid("other", Fine), 2)
        gate["open"].set_result(None)
        outer_pid = await asyncio.wait_for(outer, 2)
        return other is not None and outer_pid is not None

    assert procreg.run(main)


class Serialized(nitrogen.NprocregHandler):
    """A custom handler keeping state: its calls are serialized."""

    serialized = True

    async def spawn_pid(
        self, key: Hashable, function: Any, config: dict[str, Any], state: Any
    ) -> tuple[procreg.Pid, Any]:
        pid, state = await super().spawn_pid(key, function, config, state)
        return pid, (state or 0) + 1


def test_serialized_handler_init_calling_get_pid_raises_deadlock():
    class Nested(procreg.Server):
        async def init(self):
            await nitrogen.get_pid("other", Fine)

    async def main():
        with pytest.raises(procreg.Deadlock):
            await asyncio.wait_for(nitrogen.get_pid("k", Nested), 2)
        pid = await asyncio.wait_for(nitrogen.get_pid("k2", Fine), 2)
        return await procreg.call(pid, "x")

    assert procreg.run(main, registry_handler=Serialized()) == "fine"


def test_handler_calling_get_pid_from_its_own_callback_raises_deadlock():
    class Reentrant(nitrogen.NprocregHandler):
        serialized = True

        async def lookup_pid(self, key, config, state):
            return await nitrogen.get_pid(("again", key)), state

    async def main():
        with pytest.raises(procreg.Deadlock):
            await asyncio.wait_for(nitrogen.get_pid("k"), 2)
        return True

    assert procreg.run(main, registry_handler=Reentrant())


# -- the same kind through a start: a child's init calling whoever waits for it ---------


def test_child_init_calling_its_own_supervisor_raises_deadlock():
    class Child(procreg.Server):
        async def init(self):
            await procreg.Supervisor.which_children("mine")

    async def main():
        with pytest.raises(procreg.Deadlock):
            await asyncio.wait_for(
                procreg.Supervisor.start([procreg.child(Child, id="c")], name="mine"), 2
            )
        return procreg.current_node().process_count()

    assert procreg.run(main) == 1


def test_init_calling_the_process_that_awaits_start_ready_raises_deadlock():
    class CallsBack(procreg.Server):
        async def init(self, starter):
            await procreg.call(starter, "hello?")

    async def starter(parent):
        try:
            await CallsBack.start_ready(procreg.self())  # in the body: it cannot answer
        except procreg.Deadlock:
            procreg.send(parent, "deadlock")

    async def main():
        procreg.spawn(starter, procreg.self())
        return await procreg.receive(timeout=2)

    assert procreg.run(main) == "deadlock"


def test_a_helper_task_waiting_on_a_start_while_the_body_answers_is_no_deadlock():
    class CallsBack(procreg.Server):
        async def init(self, starter):
            self.answer = await procreg.call(starter, "hello?")

        def handle_call(self, request):
            return self.answer

    async def main():
        start = asyncio.ensure_future(CallsBack.start_ready(procreg.self()))
        msg = await procreg.receive(timeout=2)  # the body still answers calls
        procreg.reply(msg.caller, "here")
        pid = await asyncio.wait_for(start, 2)
        return await procreg.call(pid, "x")

    assert procreg.run(main) == "here"


def test_init_calling_a_busy_but_unrelated_process_still_works():
    async def answerer():
        msg = await procreg.receive()
        procreg.reply(msg.caller, "answer")

    class CallsOther(procreg.Server):
        async def init(self, other):
            self.got = await procreg.call(other, "q")

        def handle_call(self, request):
            return self.got

    async def main():
        other = procreg.spawn(answerer)
        pid = await asyncio.wait_for(CallsOther.start_ready(other), 2)
        return await procreg.call(pid, "x")

    assert procreg.run(main) == "answer"
