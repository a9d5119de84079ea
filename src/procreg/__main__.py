"""``python -m procreg``: the ``procreg`` command (see `procreg.cli`)."""

from __future__ import annotations

if __name__ == "__main__":
    from .cli import main

    raise SystemExit(main())
