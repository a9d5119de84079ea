"""Checks of the options the runtime takes: timeouts (seconds) and mailbox bounds.
Each raises a clear `TypeError`/`ValueError` naming the option."""

from __future__ import annotations

from typing import Any

from .process import OVERFLOWS

__all__ = ["check_bound", "check_timeout"]


def check_bound(max_mailbox: Any, overflow: Any) -> None:
    """Raise a clear error for a bad ``max_mailbox`` (None, 0 or a positive int) or
    ``overflow`` (None, ``"drop"`` or ``"exit"``)."""
    if max_mailbox is not None and (
        isinstance(max_mailbox, bool) or not isinstance(max_mailbox, int) or max_mailbox < 0
    ):
        raise ValueError(
            f"max_mailbox must be None, 0 (no bound) or a positive int, got {max_mailbox!r}"
        )
    if overflow is not None and overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be 'drop' or 'exit', got {overflow!r}")


def check_timeout(timeout: Any, what: str = "timeout") -> None:
    """Raise a clear error for a timeout that is not a non-negative number (or None)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout < 0 or timeout != timeout:
        raise ValueError(f"{what} must be >= 0, got {timeout!r}")
