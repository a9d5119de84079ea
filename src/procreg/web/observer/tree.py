"""The supervision tree as the observer shows it: moved to `procreg.observe.tree`;
kept here for old imports."""

from __future__ import annotations

from ...observe.tree import supervision_tree

__all__ = ["supervision_tree"]
