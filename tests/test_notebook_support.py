"""The chapter tests' own check of the cells tagged for nbval agrees with nbval itself, on a tiny notebook."""

from __future__ import annotations

import nbformat
import pytest
from notebook_support import checked_output_mismatches, nbval_smoke, run_smoke


def _notebook() -> nbformat.NotebookNode:
    """A parameters cell, two checked cells that print the same in smoke mode, one checked cell that does not,
    and an unchecked one whose committed output is wrong (nbval --nbval-lax ignores it)."""
    v4 = nbformat.v4
    out = lambda text: [v4.new_output("stream", name="stdout", text=text)]  # noqa: E731
    cells = [
        v4.new_code_cell("smoke = False", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("print('a')\nprint('b')  # two writes, one stream\n# NBVAL_CHECK_OUTPUT", outputs=out("a\nb\n")),
        v4.new_code_cell("6 * 7", metadata={"tags": ["nbval-check-output"]},
                         outputs=[v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1)]),
        v4.new_code_cell("print('smoke' if smoke else 'full')", metadata={"tags": ["nbval-check-output"]},
                         outputs=out("full\n")),
        v4.new_code_cell("print(3)", outputs=out("4\n")),
    ]
    for count, cell in enumerate(cells, 1):
        cell.execution_count = count  # nbval refuses outputs of a cell that never ran
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def test_checked_outputs_agree_with_nbval(tmp_path):
    path = tmp_path / "tiny.ipynb"
    nbformat.write(_notebook(), path)
    code, output = nbval_smoke(path, tmp_path)
    assert code != 0 and "1 failed," in output and "smoke" in output.split("1 failed,")[0], output[-3000:]
    with pytest.raises(AssertionError) as failure:
        run_smoke(path, tmp_path)
    assert "cell 3 (\"print('smoke' if smoke else 'full')\")" in str(failure.value)
    assert "'full\\n'" in str(failure.value) and "'smoke\\n'" in str(failure.value)


def test_a_notebook_with_other_cells_is_reported():
    nb = _notebook()
    fewer = nbformat.v4.new_notebook(cells=nb.cells[:2])
    assert checked_output_mismatches(nb, fewer) == ["the executed notebook has 2 cells, the committed one 5"]
