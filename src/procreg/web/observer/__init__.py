"""The observer: Erlang's observer for procreg, in a browser.

`Observer` is an ASGI application, mountable anywhere (``app.mount("/observer",
Observer())``), read-only unless told otherwise. It shows every live node of the
cluster (or the one embedded node) with its counters (messages dropped by full
mailboxes, processes ended by overload included) and message/spawn rates (updated
every second, charted per node), the registry's tables and pools counted over all
nodes, recent cluster events (nodes up and down, fences, rejoins, failovers), any
node's processes (pid, behaviour, readable registered keys, mailbox length and bound,
high-water mark, messages dropped and handled, age) with search and paging that stay
fast with 100,000+ processes, fetched from that node on demand, and each node's
supervision trees. The data comes from `procreg.observe`.
"""

from __future__ import annotations

from ...observe.snapshot import RateMeter, process_page, search_processes
from ...observe.tree import supervision_tree
from .app import TOKEN_HEADER, Observer, create_observer_app

__all__ = [
    "TOKEN_HEADER",
    "Observer",
    "RateMeter",
    "create_observer_app",
    "process_page",
    "search_processes",
    "supervision_tree",
]
