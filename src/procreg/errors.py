"""The exceptions procreg raises.

Every error subclasses `ProcregError`; `CallTimeout` is also a `TimeoutError`, and the
usage errors (`NotInProcess`, `Deadlock`, `NoNode`) are also `RuntimeError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyRegistered",
    "CallTimeout",
    "ClusterUnavailable",
    "Deadlock",
    "NoNode",
    "NoProcess",
    "NodeDown",
    "NotInProcess",
    "Overloaded",
    "ProcessExited",
    "ProcregError",
    "Stop",
]


class ProcregError(Exception):
    """Base class of every procreg error."""


class Stop(Exception):
    """Raise ``Stop(reason)`` in a process (a body or a handler) to end it with
    `reason`, without a crash report: Erlang's ``exit(Reason)``.

    >>> import procreg
    >>> async def main():
    ...     async def worker():
    ...         raise procreg.Stop("done")
    ...     pid, ref = procreg.spawn_monitor(worker)
    ...     return (await procreg.receive()).reason
    >>> procreg.run(main)
    'done'
    """

    def __init__(self, reason: Any = "normal") -> None:
        super().__init__(reason)
        self.reason = reason


class NoProcess(ProcregError):
    """There is no live process with that pid (or registered under that key)."""


class CallTimeout(ProcregError, TimeoutError):
    """A `call` got no reply within its timeout. A reply that comes later is dropped."""


class ProcessExited(ProcregError):
    """The callee ended before it replied; `reason` is its exit reason."""

    def __init__(self, reason: Any, pid: Any = None) -> None:
        super().__init__(f"process {pid!r} exited before replying: {reason!r}")
        self.reason = reason
        self.pid = pid


class Overloaded(ProcregError):
    """The callee's mailbox is full (it was started with a `max_mailbox` bound): the
    call was refused at once and never queued. `pid` is the callee, `bound` its
    mailbox bound. If the callee's ``overflow`` policy is ``"exit"`` it has also
    been ended with reason ``"overload"``."""

    def __init__(self, pid: Any = None, bound: int | None = None) -> None:
        super().__init__(f"the mailbox of {pid!r} is full ({bound} messages): call refused")
        self.pid = pid
        self.bound = bound

    def __reduce__(self) -> tuple[Any, ...]:  # the same error after a pickle round trip
        return (type(self), (self.pid, self.bound))


class NodeDown(ProcregError):
    """The node that runs the process is down, unknown or unreachable."""


class AlreadyRegistered(ProcregError):
    """The key is already registered; `pid` is the process that holds it."""

    def __init__(self, key: Any, pid: Any) -> None:
        super().__init__(f"key {key!r} is already registered to {pid!r}")
        self.key = key
        self.pid = pid


class ClusterUnavailable(ProcregError):
    """The cluster store could not be reached."""


class DecodeError(ProcregError, TypeError):
    """A message, call request or reply crossed the cluster but could not be
    unpickled on the receiving node (say, an instance of a class defined in the
    sender's ``__main__``, or of a module the receiver lacks). A `call` whose request
    or reply cannot be decoded raises it at once, with the receiver's reason."""


class NotInProcess(ProcregError, RuntimeError):
    """The operation needs a calling process (`receive`, `link`, `monitor`, ...)."""


class Deadlock(ProcregError, RuntimeError):
    """The operation can never complete, such as a process calling itself."""


class NoNode(ProcregError, RuntimeError):
    """No procreg node is running in this context; use `procreg.Node` or `procreg.run`."""
