"""What the observer shows, without the web: a node's figures, tables, groups,
processes and supervision trees as JSON-ready dicts (`snapshot`, `tree`), and the
agents through which an observer on one node sees every node of its cluster
(`agent`). Needs no web framework, so that every node of a cluster can answer an
observer, whether it serves the web or not; `procreg.web.observer` serves the page.
"""

from __future__ import annotations

from .agent import AGENTS_TABLE, ClusterView, ObserverAgent
from .snapshot import RateMeter, node_overview, process_page, process_row, search_processes
from .tree import supervision_tree

__all__ = [
    "AGENTS_TABLE",
    "ClusterView",
    "ObserverAgent",
    "RateMeter",
    "node_overview",
    "process_page",
    "process_row",
    "search_processes",
    "supervision_tree",
]
