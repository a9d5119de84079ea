"""A Markdown extension for ``make docs``: doctest examples in docstrings (``>>>``
lines, their ``...`` continuations and their output) become ``pycon`` code blocks
instead of nested block quotes. Enabled in mkdocs.yml as ``tools.mkdocs_doctest``
(``python -m mkdocs`` runs from the repository root, so ``tools`` is importable)."""

from __future__ import annotations

from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor


class DoctestBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence = False  # inside a ``` block of the page itself: leave it alone
        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.lstrip()
            if stripped.startswith("```"):
                fence = not fence
            if fence or not stripped.startswith(">>>"):
                out.append(line)
                i += 1
                continue
            indent = line[: len(line) - len(stripped)]
            if out and out[-1].strip():
                out.append("")
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            out.append("")
        return out


class DoctestExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(DoctestBlocks(md), "procreg_doctest", 40)


def makeExtension(**kwargs: Any) -> DoctestExtension:
    return DoctestExtension(**kwargs)
