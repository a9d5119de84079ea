"""``python -m bench``: the same as ``procreg bench`` (run from the repository root)."""

from bench.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
