"""``make dist-check``: the packages build cleanly and the wheel works on its own.

1. ``python -m build`` makes the sdist and the wheel (from the sdist) into a temporary
   directory; any line of its output that mentions a warning fails the check.
2. ``twine check --strict`` passes on both.
3. The wheel holds the package (``py.typed``, the console demo, the web demo's
   assets) and the licence, and nothing of the checkout (``bench/``, ``tests/``); the
   sdist holds what ``make test`` and ``procreg bench`` need.
4. In a fresh venv with only the wheel installed (no extras), outside the checkout:
   ``procreg demo --console`` runs the tour, ``procreg demo`` says that the web extra
   is missing, and ``procreg bench`` says that the suite lives in the repository.

Run from the repository root with the dev venv's Python; prints one line per step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step(title: str) -> float:
    print(f"dist-check: {title} ...", flush=True)
    return time.monotonic()


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def fail(message: str, output: str = "") -> None:
    print(f"dist-check: FAILED: {message}", file=sys.stderr)
    if output:
        print(output, file=sys.stderr)
    raise SystemExit(1)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="procreg-dist-") as tmp:
        out = Path(tmp) / "dist"
        t = step("python -m build (sdist, then the wheel from it)")
        built = run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
        text = built.stdout + built.stderr
        if built.returncode != 0:
            fail("python -m build failed", text)
        warnings = [
            line
            for line in text.splitlines()
            if "warning" in line.lower()
            # PYTHONDONTWRITEBYTECODE in the environment, not a packaging problem
            and "byte-compiling is disabled" not in line
        ]
        if warnings:
            fail("the build printed warnings", "\n".join(warnings))
        sdists = sorted(out.glob("*.tar.gz"))
        wheels = sorted(out.glob("*.whl"))
        if len(sdists) != 1 or len(wheels) != 1:
            fail(f"expected one sdist and one wheel, got {sorted(p.name for p in out.iterdir())}")
        print(f"  {sdists[0].name}, {wheels[0].name} ({time.monotonic() - t:.1f} s)")

        step("twine check --strict")
        checked = run(
            [sys.executable, "-m", "twine", "check", "--strict", *map(str, [*sdists, *wheels])]
        )
        if checked.returncode != 0:
            fail("twine check failed", checked.stdout + checked.stderr)

        step("contents")
        names = zipfile.ZipFile(wheels[0]).namelist()
        for needed in (
            "procreg/py.typed",
            "procreg/console_demo.py",
            "procreg/typed.py",
            "procreg/web/demo/assets.py",
        ):
            if needed not in names:
                fail(f"the wheel lacks {needed}")
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            fail("the wheel lacks its licence file (PEP 639: .dist-info/licenses/LICENSE)")
        stray = [n for n in names if n.split("/")[0] in ("bench", "tests", "examples", "tools")]
        if stray:
            fail(f"the wheel carries files of the checkout: {stray[:5]}")
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zipfile.ZipFile(wheels[0]).read(metadata).decode()
        if "License-Expression: MIT" not in meta or "License :: OSI Approved" in meta:
            fail("the wheel's metadata should carry License-Expression: MIT, no licence classifier")
        with tarfile.open(sdists[0]) as sdist:
            members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
        for needed in (
            "LICENSE",
            "bench/harness.py",
            "Makefile",
            "mkdocs.yml",
            "tests/test_examples.py",
        ):
            if needed not in members:
                fail(f"the sdist lacks {needed}")

        t = step("a fresh venv with only the wheel: procreg demo --console, demo, bench")
        venv = Path(tmp) / "venv"
        made = run([sys.executable, "-m", "venv", str(venv)])
        if made.returncode != 0:
            fail("python -m venv failed", made.stdout + made.stderr)
        bindir = venv / ("Scripts" if os.name == "nt" else "bin")
        pip = [str(bindir / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
        installed = run([*pip, "--disable-pip-version-check", str(wheels[0])])
        if installed.returncode != 0:
            fail("pip install of the wheel failed", installed.stdout + installed.stderr)
        procreg = str(bindir / "procreg")
        away = Path(tmp) / "elsewhere"  # not a checkout: nothing to find bench/ in
        away.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROCREG_CLUSTER")}
        tour = run([procreg, "demo", "--console"], cwd=away, env=env, timeout=120)
        if tour.returncode != 0 or "processes alive" not in tour.stdout:
            fail("procreg demo --console failed from the wheel", tour.stdout + tour.stderr)
        web = run([procreg, "demo"], cwd=away, env=env, timeout=60)
        if web.returncode != 2 or "pip install 'procreg[web]'" not in web.stderr:
            fail("procreg demo without the web extra should say what to install", web.stderr)
        bench = run([procreg, "bench", "--quick"], cwd=away, env=env, timeout=60)
        if bench.returncode != 2 or "not part of the installed package" not in bench.stderr:
            fail("procreg bench from a wheel should say where the suite is", bench.stderr)
        print(f"  ok ({time.monotonic() - t:.1f} s)")
    print("dist-check: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
