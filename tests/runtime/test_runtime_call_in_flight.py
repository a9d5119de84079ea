"""A call handed to a coroutine process's waiting `receive` in the very turn the
process ends (found by the contract suite's race test on the loopback cluster): its
caller gets `ProcessExited` at once, not a `CallTimeout`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import procreg


async def echo() -> None:
    while True:
        msg = await procreg.receive()
        if isinstance(msg, procreg.Call):
            procreg.reply(msg.caller, msg.request)


@pytest.mark.parametrize("reason", ["kill", "shutdown", "boom"])
def test_a_call_handed_to_a_receive_fails_when_the_process_ends_first(reason: str) -> None:
    async def main() -> Any:
        pid = procreg.spawn(echo)
        await asyncio.sleep(0)  # the body waits in receive
        call = asyncio.ensure_future(procreg.call(pid, "x", timeout=5))
        await asyncio.sleep(0)  # the call is handed to the waiting receive...
        procreg.exit(pid, reason)  # ...and the process ends before it resumes
        try:
            return await call
        except Exception as exc:
            return exc

    result = procreg.run(main)
    assert isinstance(result, procreg.ProcessExited), result
    assert result.reason == reason
