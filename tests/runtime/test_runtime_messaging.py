"""send / cast / call / receive: ordering per pair, selective receive, timeouts."""

from __future__ import annotations

import asyncio

import pytest

import procreg

N = 3000


class Recorder(procreg.Server):
    """Records every message it gets, tagged with how it arrived."""

    def init(self):
        self.log = []

    def handle_info(self, msg):
        self.log.append(("info", msg))

    def handle_cast(self, msg):
        self.log.append(("cast", msg))

    def handle_call(self, request):
        if request == "log":
            return list(self.log)
        self.log.append(("call", request))
        return request


def _kind(i):
    return ("info", "cast", "call")[i % 3]


def test_send_cast_call_interleaving_keeps_order_to_a_server():
    async def main():
        pid = Recorder.start()
        expected = []
        for i in range(N):
            kind = _kind(i)
            if kind == "info":
                procreg.send(pid, i)
            elif kind == "cast":
                procreg.cast(pid, i)
            else:
                assert await procreg.call(pid, i) == i
            expected.append((kind, i))
        return expected, await procreg.call(pid, "log")

    expected, log = procreg.run(main)
    assert len(log) == N
    assert log == expected


def test_ordering_with_unawaited_calls_to_a_server():
    """Calls issued concurrently (as tasks of one process) stay in order with the
    sends and casts made between them."""

    async def main():
        pid = Recorder.start()
        expected = []
        calls = []
        for i in range(N):
            kind = _kind(i)
            if kind == "info":
                procreg.send(pid, i)
            elif kind == "cast":
                procreg.cast(pid, i)
            else:
                calls.append(asyncio.ensure_future(procreg.call(pid, i)))
                await asyncio.sleep(0)  # let the call task send its request now
            expected.append((kind, i))
        replies = await asyncio.gather(*calls)
        return expected, replies, await procreg.call(pid, "log")

    expected, replies, log = procreg.run(main)
    assert replies == [i for i in range(N) if _kind(i) == "call"]
    assert log == expected


def test_two_senders_each_keep_their_order_to_a_server():
    async def sender(pid, tag, parent):
        for i in range(N):
            if i % 2:
                procreg.cast(pid, (tag, i))
            else:
                procreg.send(pid, (tag, i))
            if i % 100 == 0:
                await asyncio.sleep(0)
        await procreg.call(pid, (tag, "done"))
        procreg.send(parent, tag)

    async def main():
        pid = Recorder.start()
        me = procreg.self()
        procreg.spawn(sender, pid, "a", me)
        procreg.spawn(sender, pid, "b", me)
        done = {await procreg.receive(timeout=5), await procreg.receive(timeout=5)}
        return done, await procreg.call(pid, "log")

    done, log = procreg.run(main)
    assert done == {"a", "b"}
    for tag in ("a", "b"):
        seq = [m[1][1] for m in log if m[1][0] == tag and m[1][1] != "done"]
        assert seq == list(range(N))
    tags = [m[1][0] for m in log[: 2 * N]]
    assert "a" in tags and "b" in tags


def test_send_cast_call_interleaving_keeps_order_to_a_coroutine_process():
    async def receiver():
        seen = []
        while True:
            msg = await procreg.receive(timeout=5)
            if isinstance(msg, procreg.Call):
                if msg.request == "log":
                    procreg.reply(msg.caller, seen)
                    return
                seen.append(("call", msg.request))
                procreg.reply(msg.caller, msg.request)
            else:
                seen.append(("msg", msg))

    async def main():
        pid = procreg.spawn(receiver)
        expected = []
        for i in range(N):
            kind = _kind(i)
            if kind == "call":
                assert await procreg.call(pid, i) == i
                expected.append(("call", i))
            else:
                (procreg.send if kind == "info" else procreg.cast)(pid, i)
                expected.append(("msg", i))
        return expected, await procreg.call(pid, "log")

    expected, log = procreg.run(main)
    assert log == expected


def test_selective_receive_leaves_other_messages_in_order():
    async def main():
        me = procreg.self()
        for i in range(10):
            procreg.send(me, ("a", i) if i % 3 else ("b", i))
        first_b = await procreg.receive(timeout=1, match=lambda m: m[0] == "b")
        second_b = await procreg.receive(timeout=1, match=lambda m: m[0] == "b")
        rest = []
        while True:
            try:
                rest.append(await procreg.receive(timeout=0))
            except TimeoutError:
                break
        return first_b, second_b, rest

    first_b, second_b, rest = procreg.run(main)
    assert first_b == ("b", 0)
    assert second_b == ("b", 3)
    assert rest == [("a", 1), ("a", 2), ("a", 4), ("a", 5), ("b", 6), ("a", 7), ("a", 8), ("b", 9)]


def test_selective_receive_waits_for_a_matching_message():
    async def feeder(target):
        for i in range(5):
            procreg.send(target, ("noise", i))
            await asyncio.sleep(0)
        procreg.send(target, ("wanted", 99))
        procreg.send(target, ("noise", 5))

    async def main():
        procreg.spawn(feeder, procreg.self())
        wanted = await procreg.receive(timeout=1, match=lambda m: m[0] == "wanted")
        await asyncio.sleep(0.01)
        rest = []
        while True:
            try:
                rest.append(await procreg.receive(timeout=0))
            except TimeoutError:
                break
        return wanted, rest

    wanted, rest = procreg.run(main)
    assert wanted == ("wanted", 99)
    assert rest == [("noise", i) for i in range(6)]


def test_selective_receive_timeout_keeps_mailbox():
    async def main():
        me = procreg.self()
        procreg.send(me, 1)
        procreg.send(me, 2)
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0.02, match=lambda m: m == 3)
        return [await procreg.receive(timeout=0), await procreg.receive(timeout=0)]

    assert procreg.run(main) == [1, 2]


def test_receive_timeout_raises_timeout_error():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0.05)
        return loop.time() - t0

    elapsed = procreg.run(main)
    assert elapsed >= 0.04


def test_receive_timeout_zero_polls():
    async def main():
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0)
        procreg.send(procreg.self(), "here")
        got = await procreg.receive(timeout=0)
        with pytest.raises(TimeoutError):
            await procreg.receive(timeout=0)
        return got

    assert procreg.run(main) == "here"


def test_receive_without_timeout_waits_for_a_message():
    async def later(target):
        await asyncio.sleep(0.02)
        procreg.send(target, "late")

    async def main():
        procreg.spawn(later, procreg.self())
        return await procreg.receive()

    assert procreg.run(main) == "late"


def test_receive_gets_message_sent_before_waiting():
    async def main():
        procreg.send(procreg.self(), "early")
        await asyncio.sleep(0.01)
        return await procreg.receive(timeout=0)

    assert procreg.run(main) == "early"


def test_send_to_a_dead_pid_is_silently_dropped():
    async def short():
        return None

    async def main():
        pid = procreg.spawn(short)
        await asyncio.sleep(0.01)
        assert not procreg.is_alive(pid)
        procreg.send(pid, "hello")
        procreg.cast(pid, "hello")
        srv = Recorder.start()
        procreg.exit(srv, "kill")
        procreg.send(srv, "x")
        procreg.cast(srv, "x")
        return procreg.current_node().process_count()

    assert procreg.run(main) == 1


def test_send_to_a_never_existing_local_pid_is_dropped():
    async def main():
        node = procreg.current_node()
        ghost = procreg.Pid(node.name, node.creation, 10**9)
        procreg.send(ghost, "x")
        procreg.cast(ghost, "x")
        return procreg.is_alive(ghost)

    assert procreg.run(main) is False


def test_messages_are_not_copied():
    class Keeper(procreg.Server):
        def init(self):
            self.got = None

        def handle_info(self, msg):
            self.got = msg

        def handle_call(self, request):
            return self.got

    async def main():
        pid = Keeper.start()
        payload = {"k": [1, 2]}
        procreg.send(pid, payload)
        got = await procreg.call(pid, "get")
        return got is payload

    assert procreg.run(main) is True


def test_server_handle_info_gets_sends_and_handle_cast_gets_casts():
    async def main():
        pid = Recorder.start()
        procreg.send(pid, "s")
        procreg.cast(pid, "c")
        return await procreg.call(pid, "log")

    assert procreg.run(main) == [("info", "s"), ("cast", "c")]


def test_coroutine_process_sees_sends_and_casts_as_plain_messages():
    async def main():
        me = procreg.self()
        procreg.send(me, "s")
        procreg.cast(me, "c")
        return [await procreg.receive(timeout=0), await procreg.receive(timeout=0)]

    assert procreg.run(main) == ["s", "c"]


def test_many_processes_exchange_messages():
    async def relay(nxt):
        msg = await procreg.receive(timeout=5)
        procreg.send(nxt, msg + 1)

    async def main():
        nxt = procreg.self()
        for _ in range(1000):
            nxt = procreg.spawn(relay, nxt)
        procreg.send(nxt, 0)
        return await procreg.receive(timeout=5)

    assert procreg.run(main) == 1000


def test_a_message_arriving_as_receive_times_out_is_not_lost():
    async def main():
        me = procreg.self()
        got = []
        for i in range(20):
            procreg.send_after(0.002, me, i)
            try:
                got.append(await procreg.receive(timeout=0.002))
            except TimeoutError:
                got.append(await procreg.receive(timeout=1))
        return got

    assert procreg.run(main) == list(range(20))


def test_a_failing_match_predicate_raises_in_the_receiver_and_keeps_the_message():
    def picky(msg):
        if msg == "bad":
            raise ValueError("predicate failed")
        return msg == "wanted"

    async def feeder(target):
        await asyncio.sleep(0.01)
        procreg.send(target, "bad")

    async def main():
        me = procreg.self()
        procreg.send(me, "bad")
        with pytest.raises(ValueError, match="predicate"):
            await procreg.receive(timeout=1, match=picky)
        first = await procreg.receive(timeout=0)
        procreg.spawn(feeder, me)
        with pytest.raises(ValueError, match="predicate"):
            await procreg.receive(timeout=1, match=picky)
        second = await procreg.receive(timeout=0)
        return first, second

    assert procreg.run(main) == ("bad", "bad")
