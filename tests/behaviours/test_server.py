"""Server processes: sync and async handlers, scheduling, NOREPLY, init."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import procreg


class Counter(procreg.Server):
    def init(self, start=0):
        self.n = start

    def handle_call(self, request):
        if request == "get":
            return self.n
        if request == "incr":
            self.n += 1
            return self.n
        raise ValueError(request)

    def handle_cast(self, msg):
        self.n += msg

    def handle_info(self, msg):
        self.n += 100 * msg


class AsyncCounter(procreg.Server):
    async def init(self, start=0):
        await asyncio.sleep(0)
        self.n = start

    async def handle_call(self, request):
        await asyncio.sleep(0)
        if request == "get":
            return self.n
        raise ValueError(request)

    async def handle_cast(self, msg):
        await asyncio.sleep(0)
        self.n += msg

    async def handle_info(self, msg):
        await asyncio.sleep(0)
        self.n += 100 * msg


@pytest.mark.parametrize("cls", [Counter, AsyncCounter])
def test_handlers_sync_and_async(cls):
    async def main():
        pid = cls.start(5)
        procreg.cast(pid, 1)
        procreg.send(pid, 2)
        return await procreg.call(pid, "get")

    assert procreg.run(main) == 5 + 1 + 200


def test_mixed_sync_and_async_handlers():
    class Mixed(procreg.Server):
        def init(self):
            self.log = []

        async def handle_cast(self, msg):
            await asyncio.sleep(0.001)
            self.log.append(("cast", msg))

        def handle_info(self, msg):
            self.log.append(("info", msg))

        def handle_call(self, request):
            return list(self.log)

    async def main():
        pid = Mixed.start()
        for i in range(20):
            if i % 2:
                procreg.cast(pid, i)
            else:
                procreg.send(pid, i)
        return await procreg.call(pid, "log")

    log = procreg.run(main)
    assert log == [("cast" if i % 2 else "info", i) for i in range(20)]


def test_spawn_of_a_server_subclass_with_args():
    async def main():
        pid = procreg.spawn(Counter, 10)
        procreg.cast(pid, 3)
        return await procreg.call(pid, "get")

    assert procreg.run(main) == 13


def test_server_start_returns_a_live_pid():
    async def main():
        pid = Counter.start()
        return pid, procreg.is_alive(pid), procreg.current_node().process_count()

    pid, alive, count = procreg.run(main)
    assert isinstance(pid, procreg.Pid)
    assert alive is True
    assert count == 2


def test_self_inside_init_and_handlers_is_the_server():
    class Who(procreg.Server):
        def init(self):
            self.at_init = procreg.self()

        def handle_call(self, request):
            return self.at_init, procreg.self()

    class AsyncWho(procreg.Server):
        async def init(self):
            self.at_init = procreg.self()

        async def handle_call(self, request):
            await asyncio.sleep(0)
            return self.at_init, procreg.self()

    async def main():
        a = Who.start()
        b = AsyncWho.start()
        return a, await procreg.call(a, "x"), b, await procreg.call(b, "x")

    a, ra, b, rb = procreg.run(main)
    assert ra == (a, a)
    assert rb == (b, b)


def test_async_handler_suspends_only_that_process():
    class Blocker(procreg.Server):
        def init(self, event):
            self.event = event
            self.casts = []

        async def handle_call(self, request):
            await self.event.wait()
            return ("released", request)

        def handle_cast(self, msg):
            self.casts.append(msg)

    async def caller(pid, parent):
        procreg.send(parent, ("result", await procreg.call(pid, "slow", timeout=5)))

    async def main():
        event = asyncio.Event()
        blocker = Blocker.start(event)
        other = Counter.start()
        procreg.spawn(caller, blocker, procreg.self())
        await asyncio.sleep(0.01)  # the blocker is now inside its async handler
        answers = []
        for _ in range(50):
            answers.append(await procreg.call(other, "incr", timeout=1))
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0)  # the slow call is still pending
        procreg.cast(blocker, "queued")
        event.set()
        result = await procreg.receive(timeout=1)
        return answers, result

    answers, result = procreg.run(main)
    assert answers == list(range(1, 51))
    assert result == ("result", ("released", "slow"))


def test_mail_waits_while_async_handler_runs_and_order_holds():
    class Slow(procreg.Server):
        def init(self):
            self.log = []
            self.busy = False
            self.overlaps = 0

        async def handle_cast(self, msg):
            if self.busy:
                self.overlaps += 1
            self.busy = True
            await asyncio.sleep(0.001 if msg % 7 == 0 else 0)
            self.log.append(msg)
            self.busy = False

        def handle_info(self, msg):
            if self.busy:
                self.overlaps += 1
            self.log.append(msg)

        def handle_call(self, request):
            if self.busy:
                self.overlaps += 1
            return self.log, self.overlaps

    async def main():
        pid = Slow.start()
        for i in range(300):
            if i % 3 == 0:
                procreg.send(pid, i)
            else:
                procreg.cast(pid, i)
            if i % 50 == 0:
                await asyncio.sleep(0)
        return await procreg.call(pid, "log")

    log, overlaps = procreg.run(main)
    assert log == list(range(300))
    assert overlaps == 0


def test_noreply_then_reply_later_sync():
    class Deferred(procreg.Server):
        def init(self):
            self.waiting = []

        def handle_call(self, request):
            if request == "wait":
                self.waiting.append(procreg.caller())
                return procreg.NOREPLY
            return len(self.waiting)

        def handle_cast(self, value):
            for c in self.waiting:
                procreg.reply(c, value)
            self.waiting.clear()

    async def waiter(pid, parent):
        procreg.send(parent, await procreg.call(pid, "wait", timeout=2))

    async def main():
        pid = Deferred.start()
        me = procreg.self()
        for _ in range(3):
            procreg.spawn(waiter, pid, me)
        await asyncio.sleep(0.01)
        pending = await procreg.call(pid, "count")
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0)
        procreg.cast(pid, "go")
        got = [await procreg.receive(timeout=1) for _ in range(3)]
        return pending, got

    pending, got = procreg.run(main)
    assert pending == 3
    assert got == ["go", "go", "go"]


def test_noreply_then_reply_later_async():
    class AsyncDeferred(procreg.Server):
        def init(self):
            self.waiting = None

        async def handle_call(self, request):
            await asyncio.sleep(0)
            if request == "wait":
                self.waiting = procreg.caller()
                return procreg.NOREPLY
            return "other"

        def handle_cast(self, value):
            procreg.reply(self.waiting, value)

    async def waiter(pid, parent):
        procreg.send(parent, await procreg.call(pid, "wait", timeout=2))

    async def main():
        pid = AsyncDeferred.start()
        procreg.spawn(waiter, pid, procreg.self())
        await asyncio.sleep(0.01)
        assert await procreg.call(pid, "x") == "other"  # the server is not stuck
        procreg.cast(pid, 42)
        return await procreg.receive(timeout=1)

    assert procreg.run(main) == 42


def test_reply_from_another_process():
    class Forwarder(procreg.Server):
        def init(self, worker):
            self.worker = worker

        def handle_call(self, request):
            procreg.send(self.worker, (procreg.caller(), request))
            return procreg.NOREPLY

    async def worker():
        while True:
            c, request = await procreg.receive(timeout=2)
            procreg.reply(c, request * 2)

    async def main():
        pid = Forwarder.start(procreg.spawn(worker))
        return [await procreg.call(pid, i) for i in range(5)]

    assert procreg.run(main) == [0, 2, 4, 6, 8]


def test_reply_to_a_caller_that_timed_out_is_ignored():
    class Late(procreg.Server):
        def init(self):
            self.kept = None
            self.replied = False

        def handle_call(self, request):
            if request == "late":
                self.kept = procreg.caller()
                return procreg.NOREPLY
            return ("state", self.replied, procreg.answered(self.kept))

        def handle_cast(self, msg):
            procreg.reply(self.kept, "too late")
            procreg.reply(self.kept, "twice")
            self.replied = True

    async def main():
        pid = Late.start()
        with pytest.raises(procreg.CallTimeout):
            await procreg.call(pid, "late", timeout=0.03)
        procreg.cast(pid, "reply now")
        await asyncio.sleep(0.01)
        state = await procreg.call(pid, "state")
        alive = procreg.is_alive(pid)
        leftover = []
        try:
            leftover.append(await procreg.receive(timeout=0.02))
        except TimeoutError:
            pass
        return state, alive, leftover

    state, alive, leftover = procreg.run(main)
    assert state == ("state", True, True)
    assert alive is True
    assert leftover == []


def test_reply_to_a_coroutine_caller_after_timeout_is_ignored():
    async def sleepy():
        msg = await procreg.receive(timeout=2)
        await asyncio.sleep(0.05)
        procreg.reply(msg.caller, "late")
        return "done"

    async def main():
        pid, _ = procreg.spawn_monitor(sleepy)
        with pytest.raises(procreg.CallTimeout):
            await procreg.call(pid, "q", timeout=0.01)
        return await procreg.receive(timeout=1)

    down = procreg.run(main)
    assert isinstance(down, procreg.Down)
    assert down.reason == "normal"


def test_batch_fairness_flooded_server_does_not_starve_another_call():
    handled = {"n": 0}

    class Sink(procreg.Server):
        def handle_cast(self, msg):
            handled["n"] += 1

    async def main():
        flooded = Sink.start()
        other = Counter.start()
        for i in range(10_000):
            procreg.cast(flooded, i)
        procreg.cast(other, 1)  # give it mail so the call is queued behind it
        value = await procreg.call(other, "get", timeout=2)
        at_reply = handled["n"]
        while handled["n"] < 10_000:
            await asyncio.sleep(0)
        return value, at_reply

    value, at_reply = procreg.run(main)
    assert value == 1
    assert at_reply < 10_000


def test_batch_fairness_with_a_caller_spawned_during_the_flood():
    handled = {"n": 0}

    class Sink(procreg.Server):
        def handle_cast(self, msg):
            handled["n"] += 1

    async def caller(pid, parent):
        value = await procreg.call(pid, "get", timeout=2)
        procreg.send(parent, (value, handled["n"]))

    async def main():
        flooded = Sink.start()
        other = Counter.start(7)
        for i in range(10_000):
            procreg.cast(flooded, i)
        procreg.spawn(caller, other, procreg.self())
        result = await procreg.receive(timeout=2)
        while handled["n"] < 10_000:
            await asyncio.sleep(0)
        return result

    value, at_reply = procreg.run(main)
    assert value == 7
    assert at_reply < 10_000


def test_batch_fairness_between_two_flooded_servers():
    order = []

    class Tagged(procreg.Server):
        def init(self, tag):
            self.tag = tag

        def handle_cast(self, msg):
            order.append(self.tag)

    async def main():
        a = Tagged.start("a")
        b = Tagged.start("b")
        for i in range(5_000):
            procreg.cast(a, i)
        for i in range(5_000):
            procreg.cast(b, i)
        while len(order) < 10_000:
            await asyncio.sleep(0)

    procreg.run(main)
    first_b = order.index("b")
    assert first_b < 5_000  # b got a turn before a's flood was done
    assert order.count("a") == order.count("b") == 5_000


def test_async_init_with_start_ready():
    class Slow(procreg.Server):
        async def init(self, value):
            await asyncio.sleep(0.01)
            self.value = value

        def handle_call(self, request):
            return self.value

    async def main():
        pid = await Slow.start_ready("ready")
        return await procreg.call(pid, "get")

    assert procreg.run(main) == "ready"


def test_async_init_mail_waits_for_init():
    class Slow(procreg.Server):
        async def init(self):
            self.log = ["init-start"]
            await asyncio.sleep(0.01)
            self.log.append("init-end")

        def handle_cast(self, msg):
            self.log.append(msg)

        def handle_call(self, request):
            return self.log

    async def main():
        pid = Slow.start()
        procreg.cast(pid, "c1")
        return await procreg.call(pid, "log", timeout=1)

    assert procreg.run(main) == ["init-start", "init-end", "c1"]


def test_start_ready_with_sync_init():
    async def main():
        pid = await Counter.start_ready(4)
        return await procreg.call(pid, "get")

    assert procreg.run(main) == 4


def test_async_init_failing_makes_start_ready_raise_and_leaves_no_process():
    class Bad(procreg.Server):
        async def init(self):
            await asyncio.sleep(0)
            raise KeyError("nope")

    async def main():
        node = procreg.current_node()
        before = node.process_count()
        with pytest.raises(KeyError, match="nope"):
            await Bad.start_ready()
        await asyncio.sleep(0)
        return before, node.process_count()

    before, after = procreg.run(main)
    assert after == before


def test_sync_init_failing_makes_start_raise_and_leaves_no_process():
    class Bad(procreg.Server):
        def init(self, x):
            raise ValueError(f"bad {x}")

    async def main():
        node = procreg.current_node()
        before = node.process_count()
        procs_before = set(node.processes())
        with pytest.raises(ValueError, match="bad 1"):
            Bad.start(1)
        with pytest.raises(ValueError, match="bad 2"):
            procreg.spawn(Bad, 2)
        return before, node.process_count(), procs_before == set(node.processes())

    before, after, same = procreg.run(main)
    assert after == before
    assert same


def test_sync_init_failing_with_link_does_not_kill_the_parent():
    class Bad(procreg.Server):
        def init(self):
            raise ValueError("bad")

    async def main():
        with pytest.raises(ValueError):
            Bad.start(link=True)
        await asyncio.sleep(0.01)
        return "alive"

    assert procreg.run(main) == "alive"


def test_server_subclass_defining_dunder_init_raises_type_error():
    with pytest.raises(TypeError, match="init"):

        class Bad(procreg.Server):
            def __init__(self):
                pass


def test_default_init_rejects_arguments():
    class Plain(procreg.Server):
        pass

    async def main():
        with pytest.raises(TypeError):
            Plain.start(1)
        return procreg.is_alive(Plain.start())

    assert procreg.run(main) is True


def test_default_handle_call_crashes_the_caller_gets_process_exited():
    class NoCalls(procreg.Server):
        pass

    async def main():
        pid = NoCalls.start()
        with pytest.raises(procreg.ProcessExited) as info:
            await procreg.call(pid, "x", timeout=1)
        return info.value.reason, procreg.is_alive(pid)

    reason, alive = procreg.run(main)
    assert isinstance(reason, NotImplementedError)
    assert alive is False


def test_default_handle_cast_and_info_ignore_and_log(caplog):
    class Quiet(procreg.Server):
        def handle_call(self, request):
            return "ok"

    async def main():
        pid = Quiet.start()
        procreg.cast(pid, "stray-cast")
        procreg.send(pid, "stray-info")
        return await procreg.call(pid, "x")

    with caplog.at_level("WARNING", logger="procreg"):
        assert procreg.run(main) == "ok"
    assert "stray-cast" in caplog.text
    assert "stray-info" in caplog.text


def test_caller_outside_handle_call_raises_not_in_process():
    async def main():
        with pytest.raises(procreg.NotInProcess):
            procreg.caller()
        return True

    assert procreg.run(main)


def test_caller_in_handle_cast_after_a_call_raises_not_in_process():
    class S(procreg.Server):
        def init(self):
            self.outcome = None

        def handle_call(self, request):
            if request == "outcome":
                return self.outcome
            return "ok"

        def handle_cast(self, msg):
            try:
                procreg.caller()
                self.outcome = "returned a caller"
            except procreg.NotInProcess:
                self.outcome = "raised"

    async def main():
        pid = S.start()
        await procreg.call(pid, "first")
        procreg.cast(pid, "now")
        return await procreg.call(pid, "outcome")

    assert procreg.run(main) == "raised"


def test_server_alive_property_and_is_alive():
    class Stopper(procreg.Server):
        def handle_cast(self, msg):
            procreg.exit(procreg.self(), "normal")

        def handle_call(self, request):
            return "ok"

    async def main():
        pid, _ = procreg.spawn_monitor(Stopper)
        procreg.cast(pid, "stop")
        down = await procreg.receive(timeout=1)
        return down, procreg.is_alive(pid)

    down, alive = procreg.run(main)
    assert down.reason == "normal"
    assert alive is False


def test_server_can_message_itself_from_a_handler():
    class Looper(procreg.Server):
        def init(self, parent):
            self.parent = parent

        def handle_info(self, n):
            if n < 100:
                procreg.send(procreg.self(), n + 1)
            else:
                procreg.send(self.parent, "reached")

    async def main():
        pid = Looper.start(procreg.self())
        procreg.send(pid, 0)
        return await procreg.receive(timeout=1)

    assert procreg.run(main) == "reached"


def test_node_batch_bounds_how_many_messages_a_server_handles_per_turn():
    order = []

    class Tagged(procreg.Server):
        def init(self, tag):
            self.tag = tag

        def handle_cast(self, msg):
            order.append(self.tag)

    async def main():
        a = Tagged.start("a")
        b = Tagged.start("b")
        for i in range(400):
            procreg.cast(a, i)
            procreg.cast(b, i)
        while len(order) < 800:
            await asyncio.sleep(0)

    procreg.run(main, batch=4)
    longest = run = 1
    for prev, cur in itertools.pairwise(order):
        run = run + 1 if cur == prev else 1
        longest = max(longest, run)
    assert longest <= 4
    assert order.count("a") == order.count("b") == 400


@pytest.mark.parametrize("mail_ahead", [False, True])
def test_reply_inside_handle_call_then_noreply(mail_ahead):
    class Eager(procreg.Server):
        def handle_call(self, request):
            procreg.reply(procreg.caller(), ("early", request))
            return procreg.NOREPLY

        def handle_info(self, msg):
            pass

    async def main():
        pid = Eager.start()
        if mail_ahead:
            procreg.send(pid, "queued first")
        return await procreg.call(pid, 1, timeout=1)

    assert procreg.run(main) == ("early", 1)


def test_calls_queued_during_async_init_fail_when_it_is_killed():
    class SlowInit(procreg.Server):
        async def init(self):
            await asyncio.sleep(10)

        def handle_call(self, request):
            return "never"

    async def main():
        pid = SlowInit.start()
        task = asyncio.ensure_future(procreg.call(pid, "x", timeout=2))
        await asyncio.sleep(0.01)
        procreg.exit(pid, "boom")
        with pytest.raises(procreg.ProcessExited) as info:
            await task
        return info.value.reason, procreg.is_alive(pid)

    assert procreg.run(main) == ("boom", False)


def test_start_ready_of_a_server_killed_during_init_raises_process_exited():
    class SlowInit(procreg.Server):
        async def init(self):
            await asyncio.sleep(10)

    async def starter(parent):
        try:
            await SlowInit.start_ready()
        except Exception as e:
            procreg.send(parent, e)

    async def main():
        node = procreg.current_node()
        procreg.spawn(starter, procreg.self())
        await asyncio.sleep(0.01)
        victim = node.processes()[-1]
        procreg.exit(victim, "boom")
        err = await procreg.receive(timeout=1)
        return type(err).__name__, getattr(err, "reason", None)

    assert procreg.run(main) == ("ProcessExited", "boom")


def test_start_ready_with_link_and_failing_async_init_raises_in_the_caller():
    class Bad(procreg.Server):
        async def init(self):
            await asyncio.sleep(0)
            raise KeyError("init failed")

    async def starter(parent):
        try:
            await Bad.start_ready(link=True)
        except KeyError:
            procreg.send(parent, "caught")
        await asyncio.sleep(0.02)
        procreg.send(parent, "alive")

    async def main():
        procreg.spawn(starter, procreg.self())
        got = []
        for _ in range(2):
            try:
                got.append(await procreg.receive(timeout=0.2))
            except TimeoutError:
                got.append("nothing")
        return got

    assert procreg.run(main) == ["caught", "alive"]


def test_async_handlers_of_two_servers_run_concurrently():
    class Half(procreg.Server):
        def init(self, mine, theirs):
            self.mine = mine
            self.theirs = theirs

        async def handle_call(self, request):
            self.theirs.set()  # lets the other server's handler go on
            await self.mine.wait()  # needs the other server's handler to have started
            return request

    async def caller(pid, request, parent):
        procreg.send(parent, await procreg.call(pid, request, timeout=1))

    async def main():
        ev_a, ev_b = asyncio.Event(), asyncio.Event()
        a = Half.start(ev_a, ev_b)
        b = Half.start(ev_b, ev_a)
        me = procreg.self()
        procreg.spawn(caller, a, "a", me)
        procreg.spawn(caller, b, "b", me)
        return sorted([await procreg.receive(timeout=2) for _ in range(2)])

    assert procreg.run(main) == ["a", "b"]
