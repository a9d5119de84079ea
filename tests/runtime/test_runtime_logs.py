"""Log records: crash reports and overload warnings carry the process's pid, node and
key as structured fields (``extra=``), and rate-limited warnings stay rate-limited."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import procreg


class Crashy(procreg.Server):
    def handle_cast(self, msg: Any) -> None:
        raise ValueError(f"bad message {msg!r}")


class Stuck(procreg.Server):
    max_mailbox = 1

    async def handle_cast(self, msg: Any) -> None:
        await asyncio.sleep(3600)


def test_a_crash_report_carries_pid_node_and_key(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> str:
        pid = Crashy.start()
        await procreg.register(("room", "lobby"), pid, table="rooms")
        procreg.cast(pid, "boom")
        for _ in range(100):
            if not procreg.is_alive(pid):
                break
            await asyncio.sleep(0.001)
        return str(pid)

    with caplog.at_level(logging.ERROR, logger="procreg"):
        pid = procreg.run(main, name="logs")
    (record,) = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert record.name == "procreg" and record.levelno == logging.ERROR
    assert record.procreg_pid == pid  # type: ignore[attr-defined]
    assert record.procreg_node == "logs"  # type: ignore[attr-defined]
    assert record.procreg_key == "rooms: room / lobby"  # type: ignore[attr-defined]
    assert record.procreg_behaviour == "server"  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_a_process_without_key_has_key_none(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        raise RuntimeError("no key here")

    async def main() -> None:
        pid = procreg.spawn(body)
        while procreg.is_alive(pid):
            await asyncio.sleep(0.001)

    with caplog.at_level(logging.ERROR, logger="procreg"):
        procreg.run(main)
    (record,) = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert record.procreg_key is None  # type: ignore[attr-defined]
    assert record.procreg_behaviour == "coroutine"  # type: ignore[attr-defined]


def test_the_mailbox_full_warning_is_logged_once_with_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> int:
        pid = Stuck.start()
        await procreg.register("stuck", pid)
        for i in range(50):
            procreg.cast(pid, i)
            await asyncio.sleep(0)
        return procreg.current_node().dropped

    with caplog.at_level(logging.WARNING, logger="procreg"):
        dropped = procreg.run(main, name="full")
    warnings = [r for r in caplog.records if "mailbox full" in r.getMessage()]
    assert dropped >= 40
    assert len(warnings) == 1  # rate-limited: the first refusal only
    assert warnings[0].procreg_key == "default: stuck"  # type: ignore[attr-defined]
    assert warnings[0].procreg_node == "full"  # type: ignore[attr-defined]


def test_dropped_frame_warnings_stay_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    from procreg.cluster.transport import Transport

    class _Store:
        def key(self, *parts: str) -> str:
            return ":".join(("procreg", *parts))

    transport = Transport(_Store(), b"k" * 32, "me", lambda *_: None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="procreg.cluster"):
        for _ in range(500):
            assert transport.receive(b"not a frame at all, not even close") is False
    records = [r for r in caplog.records if "dropped a frame" in r.getMessage()]
    assert len(records) == 1  # at most one a second
    assert transport.dropped["malformed"] == 500


class Unprintable:
    """A key whose repr raises: logging about its holder must not fail."""

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unprintable)

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_crash_ends_the_process_even_if_its_key_cannot_be_printed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> bool:
        pid = Crashy.start()
        await procreg.register(Unprintable(), pid)
        procreg.cast(pid, "boom")
        for _ in range(100):
            if not procreg.is_alive(pid):
                break
            await asyncio.sleep(0.001)
        return procreg.is_alive(pid)

    with caplog.at_level(logging.ERROR, logger="procreg"):
        alive = procreg.run(main, name="logs")
    assert alive is False
    (record,) = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert record.procreg_key == "<unprintable key>"  # type: ignore[attr-defined]
