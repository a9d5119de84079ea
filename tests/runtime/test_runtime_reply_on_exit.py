"""A reply given before a process ends reaches its caller, on every path (issue 12,
item 1): OTP's ``{stop, Reason, Reply, State}`` is ``reply`` then ending the process.

Every combination of sync / async ``handle_call``, direct / scheduled dispatch, and
the ways a handler ends its process after answering.
"""

from __future__ import annotations

import asyncio

import pytest

import procreg

ENDINGS = {
    # how the handler ends the process after replying -> the exit reason it gives
    "stop_normal": "normal",
    "stop_reason": "bye_reason",
    "crash": "crash",
    "exit_self_normal": "normal",
    "exit_self_reason": "bye_reason",
    "exit_self_kill": "kill",
    "exit_self_then_return_value": "bye_reason",
}


def _end(how: str) -> object:
    """Run the ending `how` in a handler; returns what the handler returns."""
    if how == "stop_normal":
        raise procreg.Stop("normal")
    if how == "stop_reason":
        raise procreg.Stop("bye_reason")
    if how == "crash":
        raise RuntimeError("crash")
    if how == "exit_self_normal":
        procreg.exit(procreg.self(), "normal")
        return procreg.NOREPLY
    if how == "exit_self_reason":
        procreg.exit(procreg.self(), "bye_reason")
        return procreg.NOREPLY
    if how == "exit_self_kill":
        procreg.exit(procreg.self(), "kill")
        return procreg.NOREPLY
    assert how == "exit_self_then_return_value"
    procreg.exit(procreg.self(), "bye_reason")
    return "late value"  # the first answer wins, as a second gen_server:reply does


class SyncEnder(procreg.Server):
    def handle_call(self, how):
        procreg.reply(procreg.caller(), "bye")
        return _end(how)

    def handle_cast(self, msg):
        pass


class AsyncEnder(procreg.Server):
    async def handle_call(self, how):
        await asyncio.sleep(0)
        procreg.reply(procreg.caller(), "bye")
        return _end(how)

    def handle_cast(self, msg):
        pass


class AsyncReplyFirst(procreg.Server):
    """Replies before its first await."""

    async def handle_call(self, how):
        procreg.reply(procreg.caller(), "bye")
        await asyncio.sleep(0)
        return _end(how)

    def handle_cast(self, msg):
        pass


def _reason(reason: object) -> object:
    return "crash" if isinstance(reason, RuntimeError) else reason


@pytest.mark.parametrize("how", list(ENDINGS))
@pytest.mark.parametrize("dispatch", ["direct", "scheduled"])
@pytest.mark.parametrize("cls", [SyncEnder, AsyncEnder, AsyncReplyFirst])
def test_reply_then_end_reaches_the_caller(cls, dispatch, how):
    async def main():
        pid = cls.start()
        ref = procreg.monitor(pid)
        if dispatch == "scheduled":
            procreg.cast(pid, "queued first")  # mail queued: the call is scheduled
        answer = await procreg.call(pid, how, timeout=2)
        down = await procreg.receive(timeout=2)
        assert down.ref == ref
        return answer, _reason(down.reason), procreg.is_alive(pid)

    assert procreg.run(main) == ("bye", ENDINGS[how], False)


def test_the_given_input_direct_dispatch():
    """The issue's input: an idle server (direct dispatch) replies then stops."""

    class Bye(procreg.Server):
        def handle_call(self, request):
            procreg.reply(procreg.caller(), "bye")
            raise procreg.Stop("normal")

    async def main():
        return await procreg.call(Bye.start(), "stop")

    assert procreg.run(main) == "bye"


@pytest.mark.parametrize("dispatch", ["direct", "scheduled"])
def test_reply_then_return_value_first_answer_wins(dispatch):
    """A handler that replies and then also returns a value: the caller gets the
    first answer on both paths."""

    class Twice(procreg.Server):
        def handle_call(self, request):
            procreg.reply(procreg.caller(), "first")
            return "second"

        def handle_cast(self, msg):
            pass

    async def main():
        pid = Twice.start()
        if dispatch == "scheduled":
            procreg.cast(pid, "x")
        return await procreg.call(pid, "go"), await procreg.call(pid, "go")

    assert procreg.run(main) == ("first", "first")


@pytest.mark.parametrize("dispatch", ["direct", "scheduled"])
def test_no_reply_then_stop_still_raises_process_exited(dispatch):
    class Quits(procreg.Server):
        def handle_call(self, request):
            raise procreg.Stop("quit")

        def handle_cast(self, msg):
            pass

    async def main():
        pid = Quits.start()
        if dispatch == "scheduled":
            procreg.cast(pid, "x")
        with pytest.raises(procreg.ProcessExited) as info:
            await procreg.call(pid, "go")
        return info.value.reason

    assert procreg.run(main) == "quit"
