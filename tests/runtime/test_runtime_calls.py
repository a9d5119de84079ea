"""call: replies, NoProcess, ProcessExited, CallTimeout, Deadlock, Call messages."""

from __future__ import annotations

import asyncio

import pytest

import procreg


class Echo(procreg.Server):
    def handle_call(self, request):
        if request == "crash":
            raise RuntimeError("crashed while handling")
        return ("echo", request)


class Hold(procreg.Server):
    """Never answers: keeps callers forever."""

    def init(self):
        self.kept = []

    def handle_call(self, request):
        self.kept.append(procreg.caller())
        return procreg.NOREPLY


class AsyncBusy(procreg.Server):
    async def handle_call(self, request):
        if request == "crash":
            await asyncio.sleep(0)
            raise RuntimeError("async crash")
        await asyncio.sleep(10)
        return "never"


def _elapsed(loop, t0):
    return loop.time() - t0


def test_call_returns_the_reply():
    async def main():
        pid = Echo.start()
        return [await procreg.call(pid, i) for i in range(3)]

    assert procreg.run(main) == [("echo", 0), ("echo", 1), ("echo", 2)]


def test_call_with_timeout_none_waits():
    async def main():
        pid = Echo.start()
        return await procreg.call(pid, "x", timeout=None)

    assert procreg.run(main) == ("echo", "x")


def test_call_with_int_timeout():
    async def main():
        pid = Echo.start()
        return await procreg.call(pid, "x", timeout=1)

    assert procreg.run(main) == ("echo", "x")


@pytest.mark.parametrize("kind", ["server", "process"])
def test_call_to_a_dead_pid_raises_no_process_at_once(kind):
    async def short():
        return None

    async def main():
        loop = asyncio.get_running_loop()
        if kind == "server":
            pid = Echo.start()
            procreg.exit(pid, "kill")
        else:
            pid = procreg.spawn(short)
            await asyncio.sleep(0.01)
        assert not procreg.is_alive(pid)
        t0 = loop.time()
        with pytest.raises(procreg.NoProcess):
            await procreg.call(pid, "x", timeout=5)
        return _elapsed(loop, t0)

    assert procreg.run(main) < 1.0


def test_call_to_a_never_existing_local_pid_raises_no_process_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        node = procreg.current_node()
        ghost = procreg.Pid(node.name, node.creation, 123_456_789)
        t0 = loop.time()
        with pytest.raises(procreg.NoProcess):
            await procreg.call(ghost, "x", timeout=5)
        return _elapsed(loop, t0)

    assert procreg.run(main) < 1.0


def test_no_process_is_a_procreg_error():
    assert issubclass(procreg.NoProcess, procreg.ProcregError)
    assert issubclass(procreg.ProcessExited, procreg.ProcregError)
    assert issubclass(procreg.CallTimeout, procreg.ProcregError)
    assert issubclass(procreg.CallTimeout, TimeoutError)
    assert issubclass(procreg.NodeDown, procreg.ProcregError)
    assert issubclass(procreg.Deadlock, procreg.ProcregError)


@pytest.mark.parametrize("mail_ahead", [False, True])
def test_process_exited_when_sync_callee_crashes_while_handling(mail_ahead):
    async def main():
        pid = Echo.start()
        if mail_ahead:  # the call is queued behind a message, not run at once
            procreg.send(pid, "ignored")
        with pytest.raises(procreg.ProcessExited) as info:
            await procreg.call(pid, "crash", timeout=5)
        return info.value, procreg.is_alive(pid), pid

    err, alive, pid = procreg.run(main)
    assert isinstance(err.reason, RuntimeError)
    assert str(err.reason) == "crashed while handling"
    assert err.pid == pid
    assert alive is False


def test_process_exited_when_async_callee_crashes_while_handling():
    async def main():
        pid = AsyncBusy.start()
        with pytest.raises(procreg.ProcessExited) as info:
            await procreg.call(pid, "crash", timeout=5)
        return info.value.reason, procreg.is_alive(pid)

    reason, alive = procreg.run(main)
    assert isinstance(reason, RuntimeError) and str(reason) == "async crash"
    assert alive is False


def test_process_exited_when_coroutine_callee_crashes_after_receiving_the_call():
    async def body():
        await procreg.receive(timeout=1)
        raise LookupError("gone")

    async def main():
        pid = procreg.spawn(body)
        with pytest.raises(procreg.ProcessExited) as info:
            await procreg.call(pid, "x", timeout=5)
        return info.value.reason

    reason = procreg.run(main)
    assert isinstance(reason, LookupError)


def test_process_exited_for_calls_queued_behind_a_busy_server():
    async def caller(pid, parent, tag):
        try:
            await procreg.call(pid, tag, timeout=5)
            procreg.send(parent, (tag, "answered"))
        except procreg.ProcessExited as e:
            procreg.send(parent, (tag, e.reason))

    async def main():
        pid = AsyncBusy.start()
        me = procreg.self()
        procreg.spawn(caller, pid, me, "running")
        await asyncio.sleep(0.01)  # the first call is being handled (async, asleep)
        procreg.spawn(caller, pid, me, "queued1")
        procreg.spawn(caller, pid, me, "queued2")
        await asyncio.sleep(0.01)  # both queued in the mailbox
        procreg.exit(pid, "boom")
        got = {}
        for _ in range(3):
            tag, reason = await procreg.receive(timeout=1)
            got[tag] = reason
        return got

    assert procreg.run(main) == {"running": "boom", "queued1": "boom", "queued2": "boom"}


def test_process_exited_for_calls_queued_in_a_coroutine_process_mailbox():
    async def deaf(parent):
        await procreg.receive(timeout=1, match=lambda m: m == "stop")

    async def main():
        pid = procreg.spawn(deaf, procreg.self())
        task = asyncio.ensure_future(procreg.call(pid, "never read", timeout=5))
        await asyncio.sleep(0.01)
        assert not task.done()
        procreg.send(pid, "stop")
        with pytest.raises(procreg.ProcessExited) as info:
            await task
        return info.value.reason

    assert procreg.run(main) == "normal"


def test_process_exited_when_coroutine_process_ends_without_replying():
    async def rude():
        msg = await procreg.receive(timeout=1)
        assert isinstance(msg, procreg.Call)
        # ends without replying

    async def main():
        pid = procreg.spawn(rude)
        with pytest.raises(procreg.ProcessExited) as info:
            await procreg.call(pid, "hello", timeout=5)
        return info.value.reason

    assert procreg.run(main) == "normal"


def test_process_exited_when_server_dies_holding_a_noreply_caller():
    async def main():
        pid = Hold.start()
        task = asyncio.ensure_future(procreg.call(pid, "x", timeout=5))
        await asyncio.sleep(0.01)
        procreg.exit(pid, "shutdown")
        with pytest.raises(procreg.ProcessExited) as info:
            await task
        return info.value.reason

    assert procreg.run(main) == "shutdown"


def test_call_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        pid = Hold.start()
        t0 = loop.time()
        with pytest.raises(procreg.CallTimeout) as info:
            await procreg.call(pid, "x", timeout=0.05)
        return info.value, _elapsed(loop, t0), procreg.is_alive(pid)

    err, elapsed, alive = procreg.run(main)
    assert isinstance(err, TimeoutError)
    assert isinstance(err, procreg.ProcregError)
    assert elapsed >= 0.04
    assert alive is True


def test_call_timeout_can_be_caught_as_timeout_error():
    async def main():
        pid = Hold.start()
        try:
            await procreg.call(pid, "x", timeout=0.01)
        except TimeoutError:
            return "caught"
        return "not caught"

    assert procreg.run(main) == "caught"


def test_call_timeouts_fire_in_deadline_order():
    async def one(pid, timeout, parent):
        try:
            await procreg.call(pid, timeout, timeout=timeout)
        except procreg.CallTimeout:
            procreg.send(parent, timeout)

    async def main():
        pid = Hold.start()
        me = procreg.self()
        for t in (0.06, 0.02, 0.04, 0.02, 0.06):
            procreg.spawn(one, pid, t, me)
        return [await procreg.receive(timeout=1) for _ in range(5)]

    assert procreg.run(main) == [0.02, 0.02, 0.04, 0.06, 0.06]


def test_many_pending_calls_some_answered_rest_time_out():
    class Half(procreg.Server):
        def init(self):
            self.kept = []

        def handle_call(self, request):
            if request % 2:
                return request
            self.kept.append(procreg.caller())
            return procreg.NOREPLY

    async def main():
        pid = Half.start()
        tasks = [asyncio.ensure_future(procreg.call(pid, i, timeout=0.25)) for i in range(2000)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = procreg.run(main)
    for i, r in enumerate(results):
        if i % 2:
            assert r == i
        else:
            assert isinstance(r, procreg.CallTimeout)


def test_calling_oneself_from_a_coroutine_process_raises_deadlock_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(procreg.Deadlock):
            await procreg.call(procreg.self(), "me", timeout=5)
        return _elapsed(loop, t0)

    assert procreg.run(main) < 1.0


def test_calling_oneself_from_a_spawned_process_raises_deadlock():
    async def body(parent):
        try:
            await procreg.call(procreg.self(), "me", timeout=5)
        except procreg.Deadlock as e:
            procreg.send(parent, ("deadlock", isinstance(e, RuntimeError)))

    async def main():
        procreg.spawn(body, procreg.self())
        return await procreg.receive(timeout=1)

    assert procreg.run(main) == ("deadlock", True)


def test_calling_oneself_from_an_async_server_handler_raises_deadlock():
    class Selfish(procreg.Server):
        async def handle_call(self, request):
            if request == "outer":
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                try:
                    await procreg.call(procreg.self(), "inner", timeout=5)
                except procreg.Deadlock:
                    return ("deadlock", loop.time() - t0)
                return ("no deadlock", None)
            return "inner answered"

    async def main():
        pid = Selfish.start()
        return await procreg.call(pid, "outer", timeout=10), procreg.is_alive(pid)

    (outcome, elapsed), alive = procreg.run(main)
    assert outcome == "deadlock"
    assert elapsed < 1.0
    assert alive is True


def test_call_to_a_coroutine_process_arrives_as_call_message():
    async def server():
        msg = await procreg.receive(timeout=1)
        procreg.reply(msg.caller, ("got", type(msg).__name__, msg.request))

    async def main():
        pid = procreg.spawn(server)
        return await procreg.call(pid, {"q": 1}, timeout=1)

    assert procreg.run(main) == ("got", "Call", {"q": 1})


def test_coroutine_process_can_reply_out_of_order():
    async def server():
        a = await procreg.receive(timeout=1)
        b = await procreg.receive(timeout=1)
        assert isinstance(a, procreg.Call) and isinstance(b, procreg.Call)
        procreg.reply(b.caller, b.request * 10)
        procreg.reply(a.caller, a.request * 10)
        procreg.reply(a.caller, "ignored second reply")

    async def main():
        pid = procreg.spawn(server)
        t1 = asyncio.ensure_future(procreg.call(pid, 1, timeout=1))
        t2 = asyncio.ensure_future(procreg.call(pid, 2, timeout=1))
        return await t1, await t2

    assert procreg.run(main) == (10, 20)


def test_call_between_servers_via_async_handler():
    class Front(procreg.Server):
        def init(self, back):
            self.back = back

        async def handle_call(self, request):
            return await procreg.call(self.back, request)

    async def main():
        back = Echo.start()
        front = Front.start(back)
        return await procreg.call(front, "hi")

    assert procreg.run(main) == ("echo", "hi")


def test_a_crashing_call_does_not_affect_the_caller_or_other_servers():
    async def main():
        a = Echo.start()
        b = Echo.start()
        with pytest.raises(procreg.ProcessExited):
            await procreg.call(a, "crash")
        return await procreg.call(b, "still here"), procreg.is_alive(b)

    assert procreg.run(main) == (("echo", "still here"), True)


@pytest.mark.parametrize("mail_ahead", [False, True])
def test_linked_caller_dies_with_a_server_that_crashes_on_its_call(mail_ahead):
    """A caller linked to the server dies with the crash reason like any linked process:
    it does not go on running code after the server crashed."""

    class Bomb(procreg.Server):
        def handle_call(self, request):
            raise ValueError("bomb")

        def handle_info(self, msg):
            pass

    async def caller(parent):
        srv = Bomb.start(link=True)
        if mail_ahead:
            procreg.send(srv, "queued first")
        try:
            await procreg.call(srv, "x", timeout=1)
        except procreg.ProcessExited:
            procreg.send(parent, "caller went on after the crash")
        await asyncio.sleep(0.05)
        procreg.send(parent, "caller still alive")

    async def main():
        _, ref = procreg.spawn_monitor(caller, procreg.self())
        msgs = [await procreg.receive(timeout=1)]
        while True:  # anything the caller sends after its death would show up here
            try:
                msgs.append(await procreg.receive(timeout=0.1))
            except TimeoutError:
                break
        return ref, msgs

    ref, msgs = procreg.run(main)
    assert len(msgs) == 1, msgs
    assert msgs[0].ref == ref
    assert isinstance(msgs[0].reason, ValueError)


def test_a_server_that_stops_itself_in_handle_call_still_answers_it():
    class OneShot(procreg.Server):
        def handle_call(self, request):
            procreg.exit(procreg.self(), "normal")
            return "last answer"

    async def main():
        pid, ref = procreg.spawn_monitor(OneShot)
        answer = await procreg.call(pid, "x")
        down = await procreg.receive(timeout=1)
        return answer, down.ref == ref, down.reason

    assert procreg.run(main) == ("last answer", True, "normal")


def test_message_a_server_sends_itself_during_a_call_is_handled_after_it():
    class SelfSend(procreg.Server):
        def init(self):
            self.log = []

        def handle_call(self, request):
            if request == "log":
                return self.log
            procreg.send(procreg.self(), ("after", request))
            self.log.append(("call", request))
            return "ok"

        def handle_info(self, msg):
            self.log.append(msg)

    async def main():
        pid = SelfSend.start()
        await procreg.call(pid, 1)
        await procreg.call(pid, 2)
        await asyncio.sleep(0)
        return await procreg.call(pid, "log")

    assert procreg.run(main) == [("call", 1), ("after", 1), ("call", 2), ("after", 2)]


def test_a_process_calling_in_a_tight_loop_does_not_starve_others():
    ticks = {"n": 0}

    class Fast(procreg.Server):
        def handle_call(self, request):
            return request

    async def ticker():
        while True:
            ticks["n"] += 1
            await asyncio.sleep(0)

    async def main():
        procreg.spawn(ticker)
        pid = Fast.start()
        await asyncio.sleep(0)
        start = ticks["n"]
        for i in range(2000):
            assert await procreg.call(pid, i) == i
        return ticks["n"] - start

    assert procreg.run(main) >= 5
