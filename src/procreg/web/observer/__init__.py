"""The observer: Erlang's observer for procreg, in a browser.

`Observer` is an ASGI application, mountable anywhere (``app.mount("/observer",
Observer())``), read-only unless told otherwise. It shows the live nodes with their
counters (messages dropped by full mailboxes, processes ended by overload included)
and message/spawn rates (updated every second), the registry's tables with their
sizes, pools and groups, the processes (pid, registered keys, kind, mailbox length
and bound, mailbox high-water mark, messages dropped, messages handled, age) with
search and paging that stay fast with 100,000+ processes, and the supervision tree.
"""

from __future__ import annotations

from .app import TOKEN_HEADER, Observer, create_observer_app
from .snapshot import RateMeter, process_page, search_processes
from .tree import supervision_tree

__all__ = [
    "TOKEN_HEADER",
    "Observer",
    "RateMeter",
    "create_observer_app",
    "process_page",
    "search_processes",
    "supervision_tree",
]
