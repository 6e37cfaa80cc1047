"""Check an executed chapter's glue: every ``{glue:text}`` key in its prose is glued by a code cell.

Prints the missing keys (a broken number in the book) and the glued keys the prose never uses (kept for the
chapter's tests, or left over). Usage: ``python tools/check_glue.py NOTEBOOK``
"""

from __future__ import annotations

import re
import sys

import nbformat


def glue_keys(nb: nbformat.NotebookNode) -> tuple[set[str], set[str]]:
    """(keys the markdown refers to, keys the code cells' outputs glue)."""
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    used = set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", prose))
    glued = {
        out["metadata"]["scrapbook"]["name"]
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.get("outputs", [])
        if out.get("metadata", {}).get("scrapbook")
    }
    return used, glued


if __name__ == "__main__":
    used, glued = glue_keys(nbformat.read(sys.argv[1], 4))
    print("missing:", sorted(used - glued))
    print("unused:", sorted(glued - used))
