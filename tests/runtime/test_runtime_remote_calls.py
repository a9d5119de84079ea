"""Calls from another node, as the runtime sees them (`NodeRuntime.deliver_call`): an
idle server with a sync ``handle_call`` answers before `deliver_call` returns (the
cluster's remote calls skip a loop turn that way); anything queued ahead of the call
is handled first, and crashes, ``NOREPLY`` and async handlers answer as on the
scheduled path."""

from __future__ import annotations

import asyncio
from typing import Any

import procreg


class Caller:
    """What the cluster hands the runtime for a call from another node."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, Any]] = []

    def reply(self, value: Any) -> None:
        self.answers.append(("reply", value))

    def fail(self, exc: BaseException) -> None:
        self.answers.append(("fail", exc))


class Log(procreg.Server):
    def init(self) -> None:
        self.seen: list[Any] = []
        self.kept: Any = None

    def handle_cast(self, msg: Any) -> None:
        self.seen.append(("cast", msg))

    def handle_call(self, request: Any) -> Any:
        if request == "crash":
            raise RuntimeError("crashed")
        if request == "later":
            self.kept = procreg.caller()
            return procreg.NOREPLY
        if request == "answer-kept":
            procreg.reply(self.kept, "kept answer")
            return "done"
        self.seen.append(("call", request))
        return list(self.seen)


class AsyncLog(procreg.Server):
    async def handle_call(self, request: Any) -> Any:
        await asyncio.sleep(0)
        return ("async", request)


def test_an_idle_server_answers_before_deliver_call_returns() -> None:
    async def main() -> None:
        node = procreg.current_node()
        pid = Log.start()
        caller = Caller()
        assert node.runtime.deliver_call(pid, caller, "first")
        assert caller.answers == [("reply", [("call", "first")])]
        # and it is idle again: the next one too
        again = Caller()
        assert node.runtime.deliver_call(pid, again, "second")
        assert again.answers == [("reply", [("call", "first"), ("call", "second")])]
        await asyncio.sleep(0.01)  # the drain scheduled meanwhile finds nothing to do
        assert caller.answers == [("reply", [("call", "first")])]

    procreg.run(main)


def test_mail_queued_ahead_of_the_call_is_handled_first() -> None:
    async def main() -> None:
        node = procreg.current_node()
        pid = Log.start()
        procreg.cast(pid, "queued")  # in the mailbox, not handled yet
        caller = Caller()
        assert node.runtime.deliver_call(pid, caller, "after")
        assert caller.answers == []  # not handled ahead of the cast
        await procreg.call(pid, "sync")  # the mailbox has been run
        assert caller.answers == [("reply", [("cast", "queued"), ("call", "after")])]

    procreg.run(main)


def test_crash_noreply_and_async_handlers_answer_as_scheduled() -> None:
    async def main() -> None:
        node = procreg.current_node()
        pid = Log.start()
        kept = Caller()
        assert node.runtime.deliver_call(pid, kept, "later")
        assert kept.answers == []  # NOREPLY: owed, answered later
        done = Caller()
        assert node.runtime.deliver_call(pid, done, "answer-kept")
        assert kept.answers == [("reply", "kept answer")]
        assert done.answers == [("reply", "done")]
        crash = Caller()
        ref = procreg.monitor(pid)
        assert node.runtime.deliver_call(pid, crash, "crash")
        down = await procreg.receive(timeout=1)
        assert isinstance(down, procreg.Down) and down.ref == ref
        assert [kind for kind, _ in crash.answers] == ["fail"]
        assert isinstance(crash.answers[0][1], procreg.ProcessExited)
        assert not node.runtime.deliver_call(pid, Caller(), "gone")
        apid = AsyncLog.start()
        slow = Caller()
        assert node.runtime.deliver_call(apid, slow, "x")
        assert slow.answers == []  # an async handler runs in its own task
        for _ in range(100):
            if slow.answers:
                break
            await asyncio.sleep(0.001)
        assert slow.answers == [("reply", ("async", "x"))]

    procreg.run(main)
