"""Print a chapter's markdown with its glued values filled in, to proof-read claims against the numbers.

Usage: ``python tools/render_prose.py NOTEBOOK``
"""

from __future__ import annotations

import ast
import re
import sys

import nbformat


def glued(nb: nbformat.NotebookNode) -> dict[str, object]:
    values = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                raw = out.get("data", {}).get("application/papermill.record/text/plain", "")
                try:
                    values[name] = ast.literal_eval(raw)
                except (ValueError, SyntaxError):
                    values[name] = raw
    return values


def render(nb: nbformat.NotebookNode) -> str:
    values = glued(nb)

    def sub(match: re.Match) -> str:
        key, _, fmt = match.group(1).partition(":")
        value = values.get(key, f"<{key}?>")
        try:
            return format(value, fmt) if fmt else str(value)
        except (TypeError, ValueError):
            return str(value)

    text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return re.sub(r"\{glue:text\}`([^`]+)`", sub, text)


if __name__ == "__main__":
    print(render(nbformat.read(sys.argv[1], 4)))
