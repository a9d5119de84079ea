"""A console tour of procreg (about two seconds): processes, calls, the registry,
groups, links, monitors and timers on the embedded single-machine node.

    python examples/console_demo.py     # the same as: procreg demo --console

The tour's source is `procreg.console_demo` (src/procreg/console_demo.py): it ships
inside the package so that ``procreg demo --console`` works from an installed wheel.
"""

from __future__ import annotations

from procreg.console_demo import run

if __name__ == "__main__":
    run()
