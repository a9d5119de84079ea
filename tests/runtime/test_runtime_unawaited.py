"""No coroutine is left un-awaited when a process ends with async handlers pending
(issue 12, item 7). ``RuntimeWarning`` is an error here, and so is a warning raised
in a finalizer (pyproject turns ``PytestUnraisableExceptionWarning`` into errors)."""

from __future__ import annotations

import asyncio
import gc

import pytest

import procreg

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


class Slow(procreg.Server):
    async def handle_call(self, request):
        await asyncio.sleep(0.01)
        return request

    async def handle_cast(self, msg):
        await asyncio.sleep(0.01)

    async def handle_info(self, msg):
        await asyncio.sleep(0.01)

    async def terminate(self, reason):
        await asyncio.sleep(0.001)


class SlowInit(procreg.Server):
    async def init(self):
        await asyncio.sleep(0.01)


ENDS = ["kill", "shutdown", "crash_reason", "node_stop"]


async def _end(pid, how):
    if how == "node_stop":
        return  # left for Node.stop
    procreg.exit(pid, "crash_reason" if how == "crash_reason" else how)


@pytest.mark.parametrize("how", ENDS)
@pytest.mark.parametrize("what", ["call", "cast", "info"])
@pytest.mark.parametrize("when", ["before_start", "while_running"])
def test_ending_with_async_handlers_pending_leaves_no_coroutine(what, how, when):
    async def caller(pid):
        try:
            await procreg.call(pid, "req", timeout=1)
        except procreg.ProcregError:
            pass

    async def main():
        pids = []
        for _ in range(3):
            pid = Slow.start()
            pids.append(pid)
            for _ in range(3):
                if what == "call":
                    procreg.spawn(caller, pid)
                elif what == "cast":
                    procreg.cast(pid, "m")
                else:
                    procreg.send(pid, "m")
        if when == "while_running":
            await asyncio.sleep(0.002)  # the first handlers have started
        else:
            await asyncio.sleep(0)  # callers have sent; handlers not started yet
        for pid in pids:
            await _end(pid, how)
            if how == "shutdown":
                procreg.exit(pid, "kill")  # cuts the async terminate short too
        await asyncio.sleep(0)
        gc.collect()

    procreg.run(main)
    gc.collect()


@pytest.mark.parametrize("how", ["kill", "shutdown", "node_stop"])
def test_ending_during_an_async_init_leaves_no_coroutine_and_fails_the_starter(how):
    async def main():
        loop = asyncio.get_running_loop()
        task = loop.create_task(SlowInit.start_ready())
        await asyncio.sleep(0)
        pid = procreg.current_node().processes()[-1]
        await _end(pid, how)
        if how == "node_stop":
            return None
        try:
            await asyncio.wait_for(task, 1)
        except procreg.ProcessExited as exc:
            return exc.reason
        return "started"

    assert procreg.run(main) in (None, "kill", "shutdown")
    gc.collect()


def test_kill_right_after_exit_finishes_a_server_with_async_terminate():
    """ "kill" in the same turn as the exit that started the async terminate: the
    terminate task never ran, and the process must still end (Down delivered)."""

    async def main():
        pid = Slow.start()
        ref = procreg.monitor(pid)
        procreg.exit(pid, "shutdown")
        procreg.exit(pid, "kill")
        down = await procreg.receive(timeout=1)
        return down.ref == ref, down.reason, procreg.is_alive(pid)

    assert procreg.run(main) == (True, "kill", False)
