"""Links: spawn(link=True), link/unlink, exit signals, trap_exits, kill."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import idle


async def _wait_forever():
    while True:
        await procreg.receive(timeout=5)


class Crash(Exception):
    pass


def test_child_crash_kills_non_trapping_parent_with_the_same_reason():
    async def child():
        await asyncio.sleep(0.005)
        raise Crash("child")

    async def parent():
        procreg.spawn(child, link=True)
        await procreg.receive(timeout=2)
        return "survived"

    async def main():
        _, ref = procreg.spawn_monitor(parent)
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason

    same_ref, reason = procreg.run(main)
    assert same_ref
    assert isinstance(reason, Crash) and str(reason) == "child"


def test_parent_crash_kills_linked_child_with_the_same_reason():
    async def parent(main_pid):
        child = procreg.spawn(idle, link=True)
        procreg.send(main_pid, child)
        await procreg.receive(timeout=1, match=lambda m: m == "go")
        raise Crash("parent")

    async def main():
        p = procreg.spawn(parent, procreg.self())
        child = await procreg.receive(timeout=1)
        ref = procreg.monitor(child)
        procreg.send(p, "go")
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason

    same_ref, reason = procreg.run(main)
    assert same_ref
    assert isinstance(reason, Crash) and str(reason) == "parent"


@pytest.mark.parametrize("direction", ["a_dies", "b_dies"])
def test_link_works_both_ways(direction):
    async def a_body(b, parent):
        procreg.link(b)
        procreg.send(parent, "linked")
        await idle()

    async def main():
        b = procreg.spawn(idle)
        a = procreg.spawn(a_body, b, procreg.self())
        assert await procreg.receive(timeout=1) == "linked"
        ra = procreg.monitor(a)
        rb = procreg.monitor(b)
        dying = a if direction == "a_dies" else b
        procreg.exit(dying, "boom")
        downs = [await procreg.receive(timeout=1) for _ in range(2)]
        return {d.ref: d.reason for d in downs}, ra, rb

    reasons, ra, rb = procreg.run(main)
    assert reasons == {ra: "boom", rb: "boom"}


def test_link_from_a_server_handler_works_both_ways():
    class Linker(procreg.Server):
        def handle_call(self, pid):
            procreg.link(pid)
            return "linked"

    async def main():
        srv = Linker.start()
        proc = procreg.spawn(idle)
        assert await procreg.call(srv, proc) == "linked"
        rs = procreg.monitor(srv)
        rp = procreg.monitor(proc)
        procreg.exit(proc, "gone")
        downs = [await procreg.receive(timeout=1) for _ in range(2)]
        return {d.ref: d.reason for d in downs}, rs, rp

    reasons, rs, rp = procreg.run(main)
    assert reasons == {rs: "gone", rp: "gone"}


def test_server_crash_kills_linked_process():
    class Bomb(procreg.Server):
        def handle_cast(self, msg):
            raise Crash("server")

    async def body(parent):
        srv = Bomb.start(link=True)
        procreg.send(parent, srv)
        await idle()

    async def main():
        _, ref = procreg.spawn_monitor(body, procreg.self())
        srv = await procreg.receive(timeout=1)
        procreg.cast(srv, "boom")
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason

    same, reason = procreg.run(main)
    assert same and isinstance(reason, Crash)


def test_normal_exit_does_not_kill_a_linked_process():
    async def quick():
        await asyncio.sleep(0)
        return "done"

    async def parent(main_pid):
        procreg.spawn(quick, link=True)
        await asyncio.sleep(0.02)
        procreg.send(main_pid, "still alive")
        await idle()

    async def main():
        pid = procreg.spawn(parent, procreg.self())
        msg = await procreg.receive(timeout=1)
        return msg, procreg.is_alive(pid)

    assert procreg.run(main) == ("still alive", True)


def test_trap_exits_turns_signals_into_exit_messages():
    async def crasher():
        await asyncio.sleep(0)
        raise Crash("c")

    async def quick():
        return None

    async def trapper(main_pid):
        c = procreg.spawn(crasher, link=True)
        q = procreg.spawn(quick, link=True)
        msgs = [await procreg.receive(timeout=1) for _ in range(2)]
        procreg.send(main_pid, (c, q, msgs))
        await idle()

    async def main():
        t = procreg.spawn(trapper, procreg.self(), trap_exits=True)
        c, q, msgs = await procreg.receive(timeout=1)
        return c, q, msgs, procreg.is_alive(t)

    c, q, msgs, alive = procreg.run(main)
    assert alive is True
    assert all(type(m) is procreg.Exit for m in msgs)
    by_pid = {m.pid: m.reason for m in msgs}
    assert by_pid[q] == "normal"
    assert isinstance(by_pid[c], Crash)


def test_trapping_server_gets_exit_in_handle_info():
    class Trapper(procreg.Server):
        def init(self):
            self.got = []

        def handle_info(self, msg):
            self.got.append(msg)

        def handle_call(self, request):
            if request == "got":
                return self.got
            procreg.link(request)
            return "ok"

    async def main():
        srv = Trapper.start(trap_exits=True)
        p = procreg.spawn(idle)
        await procreg.call(srv, p)
        procreg.exit(p, "bye")
        await asyncio.sleep(0.01)
        return p, await procreg.call(srv, "got"), procreg.is_alive(srv)

    p, got, alive = procreg.run(main)
    assert got == [procreg.Exit(p, "bye")]
    assert alive


def test_unlink_stops_propagation():
    async def body(other, parent):
        procreg.link(other)
        procreg.unlink(other)
        procreg.send(parent, "ready")
        await idle()

    async def main():
        other = procreg.spawn(idle)
        a = procreg.spawn(body, other, procreg.self())
        await procreg.receive(timeout=1)
        procreg.exit(other, "boom")
        await asyncio.sleep(0.01)
        return procreg.is_alive(a)

    assert procreg.run(main) is True


def test_unlink_from_the_other_side_stops_propagation_both_ways():
    async def a_body(parent):
        msg = await procreg.receive(timeout=1)
        procreg.link(msg)
        procreg.send(parent, "linked")
        msg = await procreg.receive(timeout=1)
        procreg.send(parent, "a alive")
        await idle()

    async def b_body(parent):
        a = await procreg.receive(timeout=1)
        procreg.unlink(a)
        procreg.send(parent, "unlinked")
        await idle()

    async def main():
        me = procreg.self()
        a = procreg.spawn(a_body, me)
        b = procreg.spawn(b_body, me)
        procreg.send(a, b)
        assert await procreg.receive(timeout=1) == "linked"
        procreg.send(b, a)
        assert await procreg.receive(timeout=1) == "unlinked"
        procreg.exit(b, "boom")
        await asyncio.sleep(0.01)
        a_alive = procreg.is_alive(a)
        procreg.send(a, "ping")
        return a_alive, await procreg.receive(timeout=1)

    assert procreg.run(main) == (True, "a alive")


def test_unlink_of_an_unlinked_or_dead_pid_is_harmless():
    async def main():
        p = procreg.spawn(idle)
        procreg.unlink(p)
        procreg.exit(p, "kill")
        procreg.unlink(p)
        return "ok"

    assert procreg.run(main) == "ok"


def test_link_to_self_is_a_no_op():
    async def body(parent):
        procreg.link(procreg.self())
        procreg.send(parent, "ok")
        await idle()

    async def main():
        pid = procreg.spawn(body, procreg.self())
        msg = await procreg.receive(timeout=1)
        return msg, procreg.is_alive(pid)

    assert procreg.run(main) == ("ok", True)


def test_link_twice_delivers_one_signal():
    async def trapper(other, parent):
        procreg.link(other)
        procreg.link(other)
        procreg.send(parent, "ready")
        first = await procreg.receive(timeout=1)
        try:
            second = await procreg.receive(timeout=0.03)
        except TimeoutError:
            second = None
        procreg.send(parent, (first, second))

    async def main():
        other = procreg.spawn(idle)
        procreg.spawn(trapper, other, procreg.self(), trap_exits=True)
        await procreg.receive(timeout=1)
        procreg.exit(other, "x")
        return other, await procreg.receive(timeout=1)

    other, (first, second) = procreg.run(main)
    assert first == procreg.Exit(other, "x")
    assert second is None


def test_exit_kill_is_untrappable_even_for_a_linked_trapping_process():
    async def trapper(parent):
        procreg.send(parent, "ready")
        await _wait_forever()

    async def main():
        t = procreg.spawn(trapper, procreg.self(), trap_exits=True)
        await procreg.receive(timeout=1)
        ref = procreg.monitor(t)
        procreg.exit(t, "kill")
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason, procreg.is_alive(t)

    assert procreg.run(main) == (True, "kill", False)


def test_killed_process_propagates_kill_as_a_trappable_signal():
    async def trapper(victim, parent):
        procreg.link(victim)
        procreg.send(parent, "ready")
        msg = await procreg.receive(timeout=1)
        procreg.send(parent, ("trapped", msg))
        await idle()

    async def plain(victim, parent):
        procreg.link(victim)
        procreg.send(parent, "ready")
        await idle()

    async def main():
        me = procreg.self()
        victim = procreg.spawn(idle)
        t = procreg.spawn(trapper, victim, me, trap_exits=True)
        p = procreg.spawn(plain, victim, me)
        await procreg.receive(timeout=1)
        await procreg.receive(timeout=1)
        rp = procreg.monitor(p)
        procreg.exit(victim, "kill")
        trapped = await procreg.receive(timeout=1, match=lambda m: m[0] == "trapped")
        down = await procreg.receive(timeout=1, match=lambda m: isinstance(m, procreg.Down))
        await asyncio.sleep(0.01)
        return victim, trapped, procreg.is_alive(t), down.ref == rp, down.reason

    victim, trapped, t_alive, same_ref, p_reason = procreg.run(main)
    assert trapped == ("trapped", procreg.Exit(victim, "kill"))
    assert t_alive is True
    assert same_ref
    assert p_reason == "kill"


def test_link_to_a_dead_pid_raises_no_process():
    async def quick():
        return None

    async def main():
        p = procreg.spawn(quick)
        await asyncio.sleep(0.01)
        with pytest.raises(procreg.NoProcess):
            procreg.link(p)
        node = procreg.current_node()
        with pytest.raises(procreg.NoProcess):
            procreg.link(procreg.Pid(node.name, node.creation, 999_999))
        return "ok"

    assert procreg.run(main) == "ok"


def test_link_to_a_dead_pid_while_trapping_delivers_noproc_exit():
    async def quick():
        return None

    async def trapper(dead, parent):
        procreg.link(dead)
        procreg.send(parent, await procreg.receive(timeout=1))

    async def main():
        dead = procreg.spawn(quick)
        await asyncio.sleep(0.01)
        procreg.spawn(trapper, dead, procreg.self(), trap_exits=True)
        return dead, await procreg.receive(timeout=1)

    dead, msg = procreg.run(main)
    assert msg == procreg.Exit(dead, "noproc")
    assert type(msg) is procreg.Exit


def test_long_link_chain_dies_without_recursion_error():
    n = 5000

    async def link_node(remaining, parent):
        if remaining:
            procreg.spawn(link_node, remaining - 1, parent, link=True)
        else:
            procreg.send(parent, procreg.self())
        await idle()

    async def main():
        node = procreg.current_node()
        head = procreg.spawn(link_node, n - 1, procreg.self())
        tail = await procreg.receive(timeout=5)
        count_before = node.process_count()
        ref = procreg.monitor(tail)
        procreg.exit(head, "chain")
        down = await procreg.receive(timeout=5)
        await asyncio.sleep(0)
        return count_before, down.ref == ref, down.reason, node.process_count()

    before, same_ref, reason, after = procreg.run(main)
    assert before == n + 1
    assert same_ref
    assert reason == "chain"
    assert after == 1


def test_long_link_chain_of_servers_dies_without_recursion_error():
    n = 5000

    class Bystander(procreg.Server):
        pass

    class Chain(procreg.Server):
        def init(self, prev):
            if prev is not None:
                procreg.link(prev)  # from inside the new server's init

    async def main():
        node = procreg.current_node()
        pids = [Bystander.start() for _ in range(n)]
        prev = None
        chain = []
        for _ in range(n):
            prev = Chain.start(prev)
            chain.append(prev)
        ref = procreg.monitor(chain[-1])
        before = node.process_count()
        procreg.exit(chain[0], "chain")
        down = await procreg.receive(timeout=5)
        return before, down.ref == ref, down.reason, node.process_count(), len(pids)

    before, same_ref, reason, after, n_plain = procreg.run(main)
    assert before == 2 * n + 1
    assert same_ref and reason == "chain"
    assert after == n + 1
    assert n_plain == n


def test_spawn_link_outside_a_process_raises_not_in_process():
    async def scenario():
        async with procreg.Node() as node:
            with pytest.raises(procreg.NotInProcess):
                procreg.spawn(idle, link=True)
            with pytest.raises(procreg.NotInProcess):
                procreg.Server.start(link=True)
            return node.process_count()

    assert asyncio.run(scenario()) == 0


def test_link_outside_a_process_raises_not_in_process():
    async def scenario():
        async with procreg.Node():
            p = procreg.spawn(idle)
            with pytest.raises(procreg.NotInProcess):
                procreg.link(p)
            with pytest.raises(procreg.NotInProcess):
                procreg.unlink(p)
            return procreg.is_alive(p)

    assert asyncio.run(scenario()) is True
