"""Crash isolation and crash reports."""

from __future__ import annotations

import asyncio
import logging

import pytest

import procreg
from conftest import idle


def _error_records(caplog):
    return [r for r in caplog.records if r.name == "procreg" and r.levelno >= logging.ERROR]


class Fragile(procreg.Server):
    def init(self):
        self.n = 0

    def handle_cast(self, msg):
        if msg == "poison":
            raise ZeroDivisionError("poisoned by cast")
        self.n += 1

    def handle_info(self, msg):
        if msg == "poison":
            raise KeyError("poisoned by info")
        self.n += 1

    def handle_call(self, request):
        if request == "poison":
            raise IndexError("poisoned by call")
        return self.n


class AsyncFragile(procreg.Server):
    async def handle_cast(self, msg):
        await asyncio.sleep(0)
        if msg == "poison-async":
            raise ZeroDivisionError("async poisoned")


def test_crashing_handler_ends_only_that_process(caplog):
    async def main():
        node = procreg.current_node()
        victim, ref = procreg.spawn_monitor(Fragile)
        bystander = Fragile.start()
        proc = procreg.spawn(idle)
        procreg.cast(victim, "poison")
        down = await procreg.receive(timeout=1)
        procreg.cast(bystander, "ok")
        n = await procreg.call(bystander, "get")
        return (
            down,
            ref,
            procreg.is_alive(victim),
            procreg.is_alive(bystander),
            procreg.is_alive(proc),
            n,
            node.process_count(),
        )

    with caplog.at_level(logging.ERROR, logger="procreg"):
        down, ref, v_alive, b_alive, p_alive, n, count = procreg.run(main)
    assert down.ref == ref
    assert isinstance(down.reason, ZeroDivisionError)
    assert v_alive is False
    assert b_alive is True and p_alive is True
    assert n == 1
    assert count == 3  # main, bystander, proc


def test_crash_in_a_batch_does_not_stop_other_servers_batches():
    async def main():
        a = Fragile.start()
        b = Fragile.start()
        for i in range(10):
            procreg.cast(a, "poison" if i == 0 else i)
            procreg.cast(b, i)
        await asyncio.sleep(0.01)
        return procreg.is_alive(a), await procreg.call(b, "get")

    assert procreg.run(main) == (False, 10)


def test_crashing_coroutine_process_does_not_touch_unlinked_processes():
    async def crasher():
        await asyncio.sleep(0)
        raise RuntimeError("down it goes")

    async def main():
        srv = Fragile.start()
        other = procreg.spawn(idle)
        procreg.spawn_monitor(crasher)
        down = await procreg.receive(timeout=1)
        return down, procreg.is_alive(srv), procreg.is_alive(other), await procreg.call(srv, "x")

    down, s_alive, o_alive, value = procreg.run(main)
    assert isinstance(down.reason, RuntimeError)
    assert s_alive and o_alive
    assert value == 0


def test_node_survives_many_crashes():
    async def crasher(i):
        raise ValueError(i)

    async def main():
        node = procreg.current_node()
        pids = [procreg.spawn(crasher, i) for i in range(200)]
        for _ in range(200):
            srv = Fragile.start()
            procreg.cast(srv, "poison")
        await asyncio.sleep(0.02)
        return node.process_count(), any(procreg.is_alive(p) for p in pids), node.crashed

    count, any_alive, crashed = procreg.run(main)
    assert count == 1
    assert any_alive is False
    assert crashed == 400


@pytest.mark.parametrize(
    ("kind", "exc_type", "text"),
    [
        ("cast", ZeroDivisionError, "poisoned by cast"),
        ("info", KeyError, "poisoned by info"),
    ],
)
def test_crash_report_for_a_server_has_traceback_pid_and_last_message(caplog, kind, exc_type, text):
    async def main():
        pid, _ = procreg.spawn_monitor(Fragile)
        procreg.cast(pid, 1)
        (procreg.cast if kind == "cast" else procreg.send)(pid, "poison")
        await procreg.receive(timeout=1)
        return pid

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid = procreg.run(main)
    records = _error_records(caplog)
    assert len(records) == 1
    rec = records[0]
    assert rec.exc_info is not None
    assert isinstance(rec.exc_info[1], exc_type)
    message = rec.getMessage()
    assert repr(pid) in message
    assert "'poison'" in message
    assert "Traceback" in caplog.text
    assert text in caplog.text
    assert "handle_" + kind in caplog.text  # the traceback names the handler


@pytest.mark.parametrize("mail_ahead", [False, True])
def test_crash_report_for_a_crashing_call(caplog, mail_ahead):
    async def main():
        pid = Fragile.start()
        if mail_ahead:
            procreg.cast(pid, 1)
        with pytest.raises(procreg.ProcessExited):
            await procreg.call(pid, "poison")
        return pid

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid = procreg.run(main)
    records = _error_records(caplog)
    assert len(records) == 1
    assert isinstance(records[0].exc_info[1], IndexError)
    assert repr(pid) in records[0].getMessage()
    assert "'poison'" in records[0].getMessage()
    assert "Traceback" in caplog.text


def test_crash_report_for_a_coroutine_process_has_traceback_and_pid(caplog):
    async def crasher():
        raise RuntimeError("body failed")

    async def main():
        pid, _ = procreg.spawn_monitor(crasher)
        await procreg.receive(timeout=1)
        return pid

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid = procreg.run(main)
    records = _error_records(caplog)
    assert len(records) == 1
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert repr(pid) in records[0].getMessage()
    assert "body failed" in caplog.text
    assert "Traceback" in caplog.text
    assert "crasher" in caplog.text


def test_crash_report_for_an_async_handler_has_the_last_message(caplog):
    async def main():
        pid, _ = procreg.spawn_monitor(AsyncFragile)
        procreg.cast(pid, "poison-async")
        down = await procreg.receive(timeout=1)
        return pid, down

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid, down = procreg.run(main)
    assert isinstance(down.reason, ZeroDivisionError)
    records = _error_records(caplog)
    assert len(records) == 1
    assert repr(pid) in records[0].getMessage()
    assert "Traceback" in caplog.text
    assert "poison-async" in records[0].getMessage()


def test_crash_report_for_an_async_handler_has_traceback_and_pid(caplog):
    async def main():
        pid, _ = procreg.spawn_monitor(AsyncFragile)
        procreg.cast(pid, "poison-async")
        down = await procreg.receive(timeout=1)
        return pid, down

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid, down = procreg.run(main)
    assert isinstance(down.reason, ZeroDivisionError)
    records = _error_records(caplog)
    assert len(records) == 1
    assert isinstance(records[0].exc_info[1], ZeroDivisionError)
    assert repr(pid) in records[0].getMessage()
    assert "async poisoned" in caplog.text
    assert "Traceback" in caplog.text


def test_crash_report_for_a_coroutine_process_has_the_last_message(caplog):
    async def crasher():
        msg = await procreg.receive(timeout=1)
        raise RuntimeError(f"cannot handle {len(msg)} chars")

    async def main():
        pid, _ = procreg.spawn_monitor(crasher)
        procreg.send(pid, "the-fatal-message")
        await procreg.receive(timeout=1)
        return pid

    with caplog.at_level(logging.ERROR, logger="procreg"):
        procreg.run(main)
    records = _error_records(caplog)
    assert len(records) == 1
    assert "the-fatal-message" in records[0].getMessage()


def test_crash_report_for_a_failing_async_init(caplog):
    class BadInit(procreg.Server):
        async def init(self, arg):
            await asyncio.sleep(0)
            raise ValueError("init failed")

    async def main():
        pid, _ = procreg.spawn_monitor(BadInit, "the-arg")
        down = await procreg.receive(timeout=1)
        return pid, down

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid, down = procreg.run(main)
    assert isinstance(down.reason, ValueError)
    records = _error_records(caplog)
    assert len(records) == 1
    assert repr(pid) in records[0].getMessage()
    assert "Traceback" in caplog.text


def test_main_crash_is_reraised_not_reported(caplog):
    async def main():
        raise OSError("main failed")

    with caplog.at_level(logging.ERROR, logger="procreg"), pytest.raises(OSError, match="main"):
        procreg.run(main)
    assert _error_records(caplog) == []


def test_normal_exits_and_kills_are_not_crash_reports(caplog):
    async def quick():
        return 1

    async def main():
        procreg.spawn(quick)
        srv = Fragile.start()
        procreg.exit(srv, "kill")
        other = procreg.spawn(idle)
        procreg.exit(other, "shutdown")
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="procreg"):
        procreg.run(main)
    assert _error_records(caplog) == []


def test_terminate_raising_is_logged_and_the_process_still_ends(caplog):
    class BadTerminate(procreg.Server):
        def terminate(self, reason):
            raise RuntimeError("terminate broke")

    class BadAsyncTerminate(procreg.Server):
        async def terminate(self, reason):
            await asyncio.sleep(0)
            raise RuntimeError("async terminate broke")

    async def main():
        a, _ = procreg.spawn_monitor(BadTerminate)
        b, _ = procreg.spawn_monitor(BadAsyncTerminate)
        procreg.exit(a, "stop")
        procreg.exit(b, "stop")
        downs = [await procreg.receive(timeout=1) for _ in range(2)]
        return {d.pid: d.reason for d in downs}, a, b, procreg.is_alive(a), procreg.is_alive(b)

    with caplog.at_level(logging.ERROR, logger="procreg"):
        reasons, a, b, a_alive, b_alive = procreg.run(main)
    assert reasons == {a: "stop", b: "stop"}
    assert not a_alive and not b_alive
    assert "terminate broke" in caplog.text
    assert "async terminate broke" in caplog.text
