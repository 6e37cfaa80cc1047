"""The committed chapters are well-formed and their outputs come from a full run of their current code.

A test here fails when a notebook's code changed after its outputs were recorded: the hash stamped by
``make notebooks`` (tools/execute_notebooks.py) no longer matches the code. The fix is always the same:
run ``make notebooks`` (or ``make notebooks NOTEBOOKS=notebooks/<chapter>.ipynb``) and commit the result.
"""

from __future__ import annotations

import ast
import json

import nbformat
import pytest
from notebook_support import NOTEBOOKS, REPO, source_sha256  # the hash is defined in tools/execute_notebooks.py

FIX = "run `make notebooks` and commit the re-executed notebook"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.fixture(params=PATHS, ids=[p.name for p in PATHS])
def notebook(request):
    path = request.param
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        pytest.fail(f"{path.name} is not valid JSON: {err}")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def test_first_code_cell_is_the_parameters_cell(notebook):
    cells = _code_cells(notebook)
    assert cells, "the notebook has no code cell"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged `parameters`"
    names = {
        target.id
        for node in ast.walk(ast.parse(first.source))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert "smoke" in names, "the parameters cell must define `smoke` (tiny settings for the tests)"
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert not injected, f"the notebook contains papermill's injected parameters: not a default run; {FIX}"


def test_kernel_metadata(notebook):
    assert notebook.metadata.get("kernelspec", {}).get("name"), "metadata.kernelspec is missing"
    assert notebook.metadata.get("language_info", {}).get("name") == "python", "metadata.language_info is missing"


def test_outputs_come_from_one_complete_run(notebook):
    # A code cell that ran has an execution count, even when it prints nothing (imports, definitions);
    # a cell without one was never run. Counts 1, 2, 3, ... mean one run from top to bottom.
    ran = [cell for cell in _code_cells(notebook) if cell.source.strip()]
    counts = [cell.execution_count for cell in ran]
    assert None not in counts, f"{counts.count(None)} code cell(s) have no recorded run; {FIX}"
    assert counts == list(range(1, len(ran) + 1)), f"execution counts {counts} are not one top-to-bottom run; {FIX}"
    errors = [o.get("ename") for cell in ran for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"recorded outputs contain errors {errors}; {FIX}"


def test_outputs_match_the_code(notebook):
    stamp = notebook.metadata.get("kdlib", {})
    assert "source_sha256" in stamp, f"the notebook has no kdlib.source_sha256 stamp; {FIX}"
    assert stamp["source_sha256"] == source_sha256(notebook), (
        f"the notebook's code changed after its outputs were recorded; {FIX}"
    )


def test_every_notebook_is_in_the_table_of_contents():
    toc = (REPO / "_toc.yml").read_text(encoding="utf-8")
    missing = [p.name for p in PATHS if f"notebooks/{p.stem}" not in toc]
    assert not missing, f"notebooks not listed in _toc.yml (the book would skip them): {missing}"
