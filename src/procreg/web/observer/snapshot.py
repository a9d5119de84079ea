"""The observer's figures and pages of processes: moved to `procreg.observe.snapshot`
(so that nodes without a web framework can answer an observer); kept here for old
imports."""

from __future__ import annotations

from ...observe.snapshot import (
    MAX_PAGE,
    SCAN_LIMIT,
    RateMeter,
    mask_key,
    node_overview,
    parse_pid,
    pools,
    process_page,
    process_row,
    search_processes,
    tables,
)

__all__ = [
    "MAX_PAGE",
    "SCAN_LIMIT",
    "RateMeter",
    "mask_key",
    "node_overview",
    "parse_pid",
    "pools",
    "process_page",
    "process_row",
    "search_processes",
    "tables",
]
