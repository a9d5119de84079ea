"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import idle

ELSEWHERE = procreg.Pid("elsewhere", 1, 1)


def _sync_body():
    return None


async def _async_gen():
    yield 1


class NotAServer:
    pass


@pytest.mark.parametrize(
    "fn",
    [_sync_body, lambda: None, NotAServer, None, "text", _async_gen, print],
    ids=["sync-def", "lambda", "plain-class", "None", "str", "async-generator", "builtin"],
)
def test_spawn_of_a_non_coroutine_function_raises_type_error(fn):
    async def main():
        node = procreg.current_node()
        with pytest.raises(TypeError):
            procreg.spawn(fn)
        return node.process_count()

    assert procreg.run(main) == 1


def test_spawn_of_a_coroutine_object_raises_type_error():
    async def main():
        coro = idle()
        try:
            with pytest.raises(TypeError):
                procreg.spawn(coro)
        finally:
            coro.close()
        return procreg.current_node().process_count()

    assert procreg.run(main) == 1


def test_run_of_a_non_coroutine_function_raises_type_error():
    with pytest.raises(TypeError):
        procreg.run(_sync_body)


@pytest.mark.parametrize("bad", [-1, -0.5, float("-inf")])
def test_negative_timeout_raises_value_error(bad):
    async def main():
        srv = procreg.Server.start()
        with pytest.raises(ValueError):
            await procreg.call(srv, "x", timeout=bad)
        with pytest.raises(ValueError):
            await procreg.receive(timeout=bad)
        return procreg.is_alive(srv)

    assert procreg.run(main) is True


@pytest.mark.parametrize("bad", ["1", b"1", [1], True, object()])
def test_non_numeric_timeout_raises_type_error(bad):
    async def main():
        srv = procreg.Server.start()
        with pytest.raises(TypeError):
            await procreg.call(srv, "x", timeout=bad)
        with pytest.raises(TypeError):
            await procreg.receive(timeout=bad)
        return procreg.is_alive(srv)

    assert procreg.run(main) is True


def test_nan_timeout_of_receive_raises_value_error():
    async def main():
        with pytest.raises(ValueError):
            await procreg.receive(timeout=float("nan"))
        return "ok"

    assert procreg.run(main) == "ok"


def test_nan_timeout_of_call_raises_value_error():
    class Never(procreg.Server):
        def handle_call(self, request):
            return procreg.NOREPLY

    async def main():
        srv = Never.start()
        with pytest.raises(ValueError):
            await procreg.call(srv, "x", timeout=float("nan"))
        return "ok"

    assert procreg.run(main) == "ok"


def test_receive_outside_any_node_raises_not_in_process():
    async def scenario():
        with pytest.raises(procreg.NotInProcess):
            await procreg.receive(timeout=0)
        return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_receive_in_a_node_but_outside_a_process_raises_not_in_process():
    async def scenario():
        async with procreg.Node():
            with pytest.raises(procreg.NotInProcess):
                await procreg.receive(timeout=0)
            with pytest.raises(procreg.NotInProcess):
                await procreg.receive()
            return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_receive_inside_a_server_handler_raises_not_in_process():
    class S(procreg.Server):
        async def handle_call(self, request):
            try:
                await procreg.receive(timeout=0)
            except procreg.NotInProcess:
                return "not in process"
            return "received"

    async def main():
        return await procreg.call(S.start(), "x")

    assert procreg.run(main) == "not in process"


def test_not_in_process_is_a_runtime_error():
    assert issubclass(procreg.NotInProcess, RuntimeError)
    assert issubclass(procreg.NotInProcess, procreg.ProcregError)
    assert issubclass(procreg.NoNode, RuntimeError)
    assert issubclass(procreg.Deadlock, RuntimeError)


def test_self_outside_a_process_raises_not_in_process():
    async def scenario():
        async with procreg.Node():
            with pytest.raises(procreg.NotInProcess):
                procreg.self()
            return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_self_with_no_node_raises():
    async def scenario():
        with pytest.raises((procreg.NoNode, procreg.NotInProcess)):
            procreg.self()
        return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_current_node_with_no_node_running_raises_no_node():
    with pytest.raises(procreg.NoNode):
        procreg.current_node()

    async def scenario():
        with pytest.raises(procreg.NoNode):
            procreg.current_node()
        return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_current_node_after_the_node_stopped_raises_no_node():
    async def scenario():
        async with procreg.Node() as node:
            assert procreg.current_node() is node
        with pytest.raises(procreg.NoNode):
            procreg.current_node()
        return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_runtime_functions_with_no_node_raise_no_node():
    pid = procreg.Pid("local", 1, 1)

    async def scenario():
        with pytest.raises(procreg.NoNode):
            procreg.send(pid, "x")
        with pytest.raises(procreg.NoNode):
            procreg.cast(pid, "x")
        with pytest.raises(procreg.NoNode):
            await procreg.call(pid, "x")
        with pytest.raises(procreg.NoNode):
            procreg.spawn(idle)
        with pytest.raises(procreg.NoNode):
            procreg.send_after(1, pid, "x")
        with pytest.raises(procreg.NoNode):
            procreg.Server.start()
        with pytest.raises(procreg.NoNode):
            procreg.exit(pid, "kill")
        return "ok"

    assert asyncio.run(scenario()) == "ok"


def test_unknown_node_raises_node_down():
    async def main():
        raised = []
        for name, fn in [
            ("send", lambda: procreg.send(ELSEWHERE, "x")),
            ("cast", lambda: procreg.cast(ELSEWHERE, "x")),
            ("link", lambda: procreg.link(ELSEWHERE)),
            ("monitor", lambda: procreg.monitor(ELSEWHERE)),
            ("exit", lambda: procreg.exit(ELSEWHERE, "x")),
        ]:
            try:
                fn()
            except procreg.NodeDown:
                raised.append(name)
        try:
            await procreg.call(ELSEWHERE, "x", timeout=5)
        except procreg.NodeDown:
            raised.append("call")
        return raised

    assert procreg.run(main) == ["send", "cast", "link", "monitor", "exit", "call"]


def test_call_to_an_unknown_node_raises_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(procreg.NodeDown):
            await procreg.call(ELSEWHERE, "x", timeout=5)
        return loop.time() - t0

    assert procreg.run(main) < 1.0


@pytest.mark.parametrize("bad", ["abc", 42, None, 1.5, object()], ids=repr)
def test_non_pid_raises_type_error(bad):
    async def main():
        raised = []
        for name, fn in [
            ("send", lambda: procreg.send(bad, "x")),
            ("cast", lambda: procreg.cast(bad, "x")),
            ("link", lambda: procreg.link(bad)),
            ("monitor", lambda: procreg.monitor(bad)),
            ("exit", lambda: procreg.exit(bad, "x")),
        ]:
            try:
                fn()
            except TypeError:
                raised.append(name)
        try:
            await procreg.call(bad, "x", timeout=1)
        except TypeError:
            raised.append("call")
        return raised

    assert procreg.run(main) == ["send", "cast", "link", "monitor", "exit", "call"]


def test_unhashable_non_pid_raises_type_error():
    async def main():
        with pytest.raises(TypeError):
            await procreg.call(["not", "a", "pid"], "x")
        with pytest.raises(TypeError):
            procreg.send({"a": 1}, "x")
        with pytest.raises(TypeError):
            procreg.monitor([1])
        return "ok"

    assert procreg.run(main) == "ok"


def test_plain_tuple_is_not_a_pid():
    class Echo(procreg.Server):
        def handle_call(self, request):
            return request

    async def main():
        pid = Echo.start()
        fake = (pid.node, pid.creation, pid.serial)
        raised = []
        try:
            await procreg.call(fake, "x", timeout=1)
        except TypeError:
            raised.append("call")
        try:
            procreg.link(fake)
        except TypeError:
            raised.append("link")
        try:
            procreg.monitor(fake)
        except TypeError:
            raised.append("monitor")
        return raised

    assert procreg.run(main) == ["call", "link", "monitor"]


def test_node_rejects_bad_options():
    with pytest.raises(ValueError):
        procreg.Node("")
    with pytest.raises(ValueError):
        procreg.Node(batch=0)
    with pytest.raises(ValueError):
        procreg.Node(123)  # type: ignore[arg-type]


def test_bad_input_loses_nothing():
    """After every kind of bad input the process and its mailbox are intact."""

    async def main():
        me = procreg.self()
        procreg.send(me, "keep me")
        for bad in (lambda: procreg.spawn(_sync_body), lambda: procreg.send("x", 1)):
            with pytest.raises(TypeError):
                bad()
        with pytest.raises(ValueError):
            await procreg.receive(timeout=-1)
        with pytest.raises(procreg.NodeDown):
            procreg.send(ELSEWHERE, 1)
        with pytest.raises(procreg.Deadlock):
            await procreg.call(me, "x")
        return await procreg.receive(timeout=0)

    assert procreg.run(main) == "keep me"
