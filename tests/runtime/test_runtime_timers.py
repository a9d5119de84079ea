"""Timers: send_after, send_interval, cancel, and timers dying with processes."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import idle


async def _drain(timeout=0.0):
    out = []
    while True:
        try:
            out.append(await procreg.receive(timeout=timeout))
        except TimeoutError:
            return out


def test_send_after_delivers_once():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        timer = procreg.send_after(0.02, procreg.self(), "tick")
        assert isinstance(timer, procreg.Timer)
        assert timer.active
        msg = await procreg.receive(timeout=1)
        elapsed = loop.time() - t0
        more = await _drain(0.05)
        return msg, elapsed, more, timer.active

    msg, elapsed, more, active = procreg.run(main)
    assert msg == "tick"
    assert elapsed >= 0.015
    assert more == []
    assert active is False


def test_send_after_zero_delay():
    async def main():
        procreg.send_after(0, procreg.self(), "now")
        return await procreg.receive(timeout=1)

    assert procreg.run(main) == "now"


def test_send_after_to_a_server_goes_to_handle_info():
    class S(procreg.Server):
        def init(self):
            self.got = []

        def handle_info(self, msg):
            self.got.append(msg)

        def handle_call(self, request):
            return self.got

    async def main():
        pid = S.start()
        procreg.send_after(0.01, pid, "tick")
        await asyncio.sleep(0.03)
        return await procreg.call(pid, "got")

    assert procreg.run(main) == ["tick"]


def test_timers_fire_in_deadline_order():
    async def main():
        me = procreg.self()
        for d in (0.03, 0.01, 0.02, 0.0):
            procreg.send_after(d, me, d)
        return [await procreg.receive(timeout=1) for _ in range(4)]

    assert procreg.run(main) == [0.0, 0.01, 0.02, 0.03]


def test_cancel_before_firing_prevents_delivery_and_returns_true():
    async def main():
        timer = procreg.send_after(0.02, procreg.self(), "tick")
        cancelled = timer.cancel()
        again = timer.cancel()
        more = await _drain(0.05)
        return cancelled, again, more, timer.active

    assert procreg.run(main) == (True, False, [], False)


def test_cancel_after_firing_returns_false():
    async def main():
        timer = procreg.send_after(0.005, procreg.self(), "tick")
        msg = await procreg.receive(timeout=1)
        return msg, timer.cancel()

    assert procreg.run(main) == ("tick", False)


def test_send_interval_repeats_until_cancelled():
    async def main():
        timer = procreg.send_interval(0.01, procreg.self(), "tick")
        got = [await procreg.receive(timeout=1) for _ in range(4)]
        assert timer.active
        cancelled = timer.cancel()
        await asyncio.sleep(0)
        leftover = await _drain(0)  # at most what was already delivered
        later = await _drain(0.04)
        return got, cancelled, leftover, later, timer.active

    got, cancelled, leftover, later, active = procreg.run(main)
    assert leftover in ([], ["tick"])
    assert got == ["tick"] * 4
    assert cancelled is True
    assert later == []
    assert active is False


def test_send_interval_with_first_delay():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        timer = procreg.send_interval(0.5, procreg.self(), "tick", first=0)
        msg = await procreg.receive(timeout=1)
        elapsed = loop.time() - t0
        timer.cancel()
        return msg, elapsed

    msg, elapsed = procreg.run(main)
    assert msg == "tick"
    assert elapsed < 0.4


def test_send_interval_counts_ticks():
    class Ticker(procreg.Server):
        def init(self):
            self.n = 0
            self.timer = procreg.send_interval(0.005, procreg.self(), "tick")

        def handle_info(self, msg):
            self.n += 1
            if self.n == 5:
                self.timer.cancel()

        def handle_call(self, request):
            return self.n

    async def main():
        pid = Ticker.start()
        await asyncio.sleep(0.08)
        return await procreg.call(pid, "n")

    assert procreg.run(main) == 5


def test_timers_die_with_their_owner():
    async def owner(target, parent):
        procreg.send_after(0.02, target, "from dead owner")
        t = procreg.send_interval(0.01, target, "interval from dead owner")
        procreg.send(parent, t)
        # ends here, before the timers fire

    async def main():
        _, ref = procreg.spawn_monitor(owner, procreg.self(), procreg.self())
        interval = await procreg.receive(timeout=1)
        down = await procreg.receive(timeout=1)
        assert down.ref == ref
        got = await _drain(0.05)
        return interval.active, interval.cancel(), got

    assert procreg.run(main) == (False, False, [])


def test_timers_die_with_their_target():
    async def main():
        target = procreg.spawn(idle)
        t1 = procreg.send_after(0.02, target, "x")
        t2 = procreg.send_interval(0.01, target, "y")
        procreg.send_after(0.02, procreg.self(), "still mine")
        procreg.exit(target, "kill")
        return t1.active, t2.active, t1.cancel(), t2.cancel(), await procreg.receive(timeout=1)

    assert procreg.run(main) == (False, False, False, False, "still mine")


def test_timer_to_a_server_target_dies_with_the_server():
    class Target(procreg.Server):
        pass

    async def main():
        pid = Target.start()
        t = procreg.send_interval(0.01, pid, "tick")
        procreg.exit(pid, "stop")
        await asyncio.sleep(0.03)
        return t.active, t.cancel()

    assert procreg.run(main) == (False, False)


def test_timer_set_by_a_server_dies_with_it():
    class Owner(procreg.Server):
        def init(self, target):
            self.t = procreg.send_after(0.02, target, "from server")

    async def main():
        pid = Owner.start(procreg.self())
        procreg.exit(pid, "stop")
        return await _drain(0.05)

    assert procreg.run(main) == []


def test_timer_to_a_dead_pid_is_inactive():
    async def main():
        target = procreg.spawn(idle)
        procreg.exit(target, "kill")
        t = procreg.send_after(0.01, target, "x")
        return t.active, t.cancel()

    assert procreg.run(main) == (False, False)


def test_timer_from_outside_a_process():
    async def scenario():
        async with procreg.Node():
            box = []

            async def waiter():
                box.append(await procreg.receive(timeout=1))

            pid = procreg.spawn(waiter)
            procreg.send_after(0.01, pid, "outside")
            for _ in range(100):
                if box:
                    break
                await asyncio.sleep(0.005)
            return box

    assert asyncio.run(scenario()) == ["outside"]


def test_negative_delay_raises_value_error():
    async def main():
        me = procreg.self()
        with pytest.raises(ValueError):
            procreg.send_after(-1, me, "x")
        with pytest.raises(ValueError):
            procreg.send_after(-0.001, me, "x")
        with pytest.raises(ValueError):
            procreg.send_interval(-1, me, "x")
        with pytest.raises(ValueError):
            procreg.send_interval(0.1, me, "x", first=-1)
        with pytest.raises(ValueError):
            procreg.send_interval(0, me, "x")
        return await _drain(0.02)

    assert procreg.run(main) == []


def test_non_numeric_delay_raises_type_error():
    async def main():
        me = procreg.self()
        with pytest.raises(TypeError):
            procreg.send_after("1", me, "x")
        with pytest.raises(TypeError):
            procreg.send_interval("1", me, "x")
        with pytest.raises(TypeError):
            procreg.send_after(None, me, "x")
        return "ok"

    assert procreg.run(main) == "ok"


def test_timer_to_an_unknown_node_raises_node_down():
    async def main():
        with pytest.raises(procreg.NodeDown):
            procreg.send_after(0.01, procreg.Pid("elsewhere", 1, 1), "x")
        return "ok"

    assert procreg.run(main) == "ok"


def test_timers_are_cancelled_when_the_node_stops():
    box = {}

    async def main():
        box["t"] = procreg.send_interval(0.01, procreg.self(), "tick")
        return "done"

    assert procreg.run(main) == "done"
    assert box["t"].active is False


def test_a_frozen_servers_mail_leaves_out_what_timers_delivered():
    """A handoff freezes a server and takes its mail to relay to the next incarnation.
    Timers targeting the server end with it, so what they delivered but it had not
    handled ends too (its own timer's tick, another process's timer alike); messages,
    casts and calls are taken in their order."""
    from procreg.scope import freeze, take_mail

    class S(procreg.Server):
        def init(self):
            procreg.send_interval(0.001, procreg.self(), "own-tick")

        def handle_info(self, msg):
            pass

    async def main():
        node = procreg.current_node()
        pid = procreg.spawn(S)
        await asyncio.sleep(0.01)  # its own ticks are handled meanwhile
        proc = node.local_process(pid)
        freeze(proc)  # its own timer is cancelled here
        procreg.send_after(0, pid, "other-timer")  # armed after: delivered while frozen
        procreg.send_interval(0.001, pid, "other-interval")
        procreg.send(pid, "plain")
        await asyncio.sleep(0.01)
        procreg.cast(pid, "cast")
        procreg.send(pid, "plain-2")
        mail = take_mail(proc)
        procreg.exit(pid, "kill")
        return mail

    assert procreg.run(main) == [
        ("info", "plain", None),
        ("cast", "cast", None),
        ("info", "plain-2", None),
    ]


def test_timer_messages_are_plain_messages_to_the_server_that_gets_them():
    """Tagged in the mailbox for a handoff only: handle_info gets them as sent."""

    class S(procreg.Server):
        def init(self):
            self.got = []
            procreg.send_after(0, procreg.self(), "a")
            procreg.send_interval(0.001, procreg.self(), "b", first=0.002)

        def handle_info(self, msg):
            if len(self.got) < 3:
                self.got.append(msg)

        def handle_call(self, request):
            return self.got

    async def main():
        pid = procreg.spawn(S)
        await asyncio.sleep(0.05)
        return await procreg.call(pid, "got")

    assert procreg.run(main) == ["a", "b", "b"]
