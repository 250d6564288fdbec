"""Griffe extension for the API reference: `>>>` examples in docstring text become code blocks.

rismvdr's docstrings carry runnable `>>>` examples in their text (the doctest habit), outside a
Google "Examples:" section. Markdown would join their lines into a paragraph; this extension
wraps each run of example lines (from a `>>>` line to the next blank line) in a `pycon` fence
when the API pages are built. The docstrings themselves are not changed.
"""
from __future__ import annotations

import griffe

_FENCE = "```"


def fence_doctests(text: str) -> str:
    """`text` with every `>>>` block (up to the next blank line) inside a ```` ```pycon ```` fence."""
    out: list[str] = []
    lines = text.splitlines()
    i, in_fence = 0, False
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(_FENCE):
            in_fence = not in_fence
        if in_fence or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        if out and out[-1].strip():
            out.append("")
        out.append(f"{indent}{_FENCE}pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}{_FENCE}")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the `>>>` examples of every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()

        def visit(obj) -> None:
            if obj.is_alias or id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None and ">>>" in obj.docstring.value:
                obj.docstring.value = fence_doctests(obj.docstring.value)
            for member in obj.members.values():
                visit(member)

        visit(pkg)
