"""Build a chapter notebook from a plain-text script (how chapters 4 and later are written and reviewed).

The script is split into cells at lines that start with ``#%% md`` (markdown), ``#%% code`` or ``#%% params``
(the papermill ``parameters`` cell). The notebook gets the kernel and language metadata papermill needs, and no
outputs: run ``make notebooks`` (or ``python tools/execute_notebooks.py NOTEBOOK``) to execute and stamp it.

Usage: ``python tools/py_to_notebook.py SCRIPT NOTEBOOK``
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

KINDS = {"md", "code", "params"}


def build(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    kind, lines = None, []

    def flush() -> None:
        source = "\n".join(lines).strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        elif kind is not None:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)

    for line in text.splitlines():
        if line.startswith("#%% "):
            flush()
            kind, lines = line[4:].strip(), []
            if kind not in KINDS:
                raise ValueError(f"unknown cell kind {kind!r} in {line!r}; use one of {sorted(KINDS)}")
        else:
            lines.append(line)
    flush()
    return nb


if __name__ == "__main__":
    script, notebook = map(Path, sys.argv[1:3])
    nbformat.write(build(script.read_text()), notebook)
