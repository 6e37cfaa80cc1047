"""Helpers for the chapter tests: run a notebook in smoke mode, read its glued values, check its checked cells.

A chapter test typically reads::

    from notebook_support import NOTEBOOKS, run_smoke

    def test_soft_targets_smoke(tmp_path):
        nb, glued = run_smoke(NOTEBOOKS / "02_soft_targets.ipynb", tmp_path)
        assert 0.0 <= glued["student_accuracy"] <= 1.0

``run_smoke`` also fails when a cell tagged ``nbval-check-output`` prints something other than the committed
notebook shows, the check ``pytest --nbval-lax`` makes (``nbval_smoke`` runs nbval itself).

(``tests/`` is put on ``sys.path`` by pytest, so ``notebook_support`` imports as a top-level module.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

# One definition of the kernel, its environment and the code hash, shared with `make notebooks`.
sys.path.insert(0, str(REPO / "tools"))
from execute_notebooks import KERNEL, NOTEBOOK_ENV, source_sha256  # noqa: E402,F401

# myst_nb.glue(name, value, display=False) displays the value's mimebundle with every mime type prefixed by
# GLUE_PREFIX and puts {"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}} in the output's metadata
# (with display=True the prefix is ""). This is what myst-nb 1.4 reads back when it builds the book.
GLUE_PREFIX = "application/papermill.record/"


@contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the kernel (it inherits ours), restoring them afterwards."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def glued_values(nb: nbformat.NotebookNode) -> dict[str, object]:
    """Every value the notebook glued with ``myst_nb.glue``, by name.

    The value is rebuilt from its ``text/plain`` representation with :func:`ast.literal_eval` (numbers,
    strings, lists, dicts, ...); anything that is not a Python literal (a figure, a DataFrame) is returned as
    that text. A name glued twice keeps its last value, as in the book.
    """
    values: dict[str, object] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if not record:
                continue
            prefix = record.get("mime_prefix", "")
            text = output.get("data", {}).get(prefix + "text/plain")
            if text is None:
                values[record["name"]] = None
                continue
            text = text if isinstance(text, str) else "".join(text)
            try:
                values[record["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                values[record["name"]] = text
    return values


def run_smoke(
    notebook_path: str | Path, tmp_path: Path, **extra_params: object
) -> tuple[nbformat.NotebookNode, dict[str, object]]:
    """Execute a notebook with papermill with ``smoke=True`` (plus ``extra_params``); return it and its glued values.

    The run uses kernel ``python3``, the notebook's folder as working directory and ``KDLIB_PROGRESS=0``. The
    executed copy is written to ``tmp_path`` (the committed notebook is not touched). A failing cell raises
    ``papermill.PapermillExecutionError`` naming the cell and the exception; a cell tagged ``nbval-check-output``
    whose outputs differ from the committed ones raises ``AssertionError`` (:func:`checked_output_mismatches`).
    """
    import papermill as pm

    notebook_path = Path(notebook_path).resolve()
    out = Path(tmp_path) / f"smoke_{notebook_path.name}"
    with _environment(NOTEBOOK_ENV):
        nb = pm.execute_notebook(
            str(notebook_path),
            str(out),
            parameters={"smoke": True, **extra_params},
            kernel_name=KERNEL,
            cwd=str(notebook_path.parent),
            progress_bar=False,
        )
    mismatches = checked_output_mismatches(nbformat.read(notebook_path, as_version=4), nb)
    assert not mismatches, "\n\n".join(mismatches)
    return nb, glued_values(nb)


def _checked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval --nbval-lax compares this cell's outputs (tag ``nbval-check-output`` or the comment)."""
    from nbval.plugin import find_comment_markers, find_metadata_tags

    markers = dict(find_comment_markers(cell.source))
    markers.update(find_metadata_tags(cell.metadata))
    return bool(markers.get("check"))


def _comparable(outputs: list) -> dict[str, list]:
    """Outputs as nbval compares them: streams coalesced, keyed by stream name or MIME type, images and
    metadata left out."""
    from nbval.plugin import coalesce_streams, transform_streams_for_comparison

    skip = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
            "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}
    flat: dict[str, list] = {}
    for output in transform_streams_for_comparison(coalesce_streams([nbformat.from_dict(o) for o in outputs])):
        for key, value in output.items():
            for k, v in (value.items() if key == "data" else [(key, value)]):
                if k not in skip:
                    flat.setdefault(k, []).append(v)
    return flat


def checked_output_mismatches(committed: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> list[str]:
    """The cells marked for nbval (``nbval-check-output``) whose outputs in ``executed`` (a papermill run of
    ``committed``) differ from the committed ones, each described with both outputs.

    This is the comparison ``pytest --nbval-lax`` makes (nbval's own marker, stream and skip rules; the test
    ``test_checked_outputs_agree_with_nbval`` holds the two together), done on the smoke run the chapter test
    already made: running nbval as well would execute every chapter a second time in CI.
    """
    ran = [c for c in executed.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    if len(ran) != len(committed.cells):
        return [f"the executed notebook has {len(ran)} cells, the committed one {len(committed.cells)}"]
    mismatches = []
    for index, (ref, test) in enumerate(zip(committed.cells, ran)):
        if ref.cell_type == "code" and _checked(ref):
            want, got = _comparable(ref.outputs), _comparable(test.outputs)
            if want != got:
                mismatches.append(f"cell {index} ({ref.source.splitlines()[0]!r}): committed {want!r}\nbut got {got!r}")
    return mismatches


def nbval_smoke(notebook_path: str | Path, tmp_path: Path) -> tuple[int, str]:
    """Run ``pytest --nbval-lax`` on the committed notebook with ``smoke=True`` injected; return (exit code, output).

    The copy keeps the committed outputs (those of the full run), and nbval compares only the cells tagged
    ``nbval-check-output``, so those cells must print the same thing whatever the parameters: shapes,
    parameter counts, a loss on a fixed tensor. Every other cell only has to run without error.
    """
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook_path = Path(notebook_path).resolve()
    nb = load_notebook_node(str(notebook_path))  # nbformat.read plus the metadata papermill expects
    nb = parameterize_notebook(nb, {"smoke": True}, kernel_name=KERNEL)
    # nbval starts the kernel in the copy's folder; move it to the notebook's own folder first, so that the
    # notebook sees the same working directory as under run_smoke, `make notebooks` and `make book`.
    chdir = nbformat.v4.new_code_cell(f"import os\nos.chdir({str(notebook_path.parent)!r})")
    nb.cells.insert(0, chdir)
    copy = Path(tmp_path) / f"nbval_{notebook_path.name}"
    nbformat.write(nb, copy)
    command = [
        sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-kernel-name", KERNEL,
        "--nbval-cell-timeout", "600", "-p", "no:cacheprovider", "-q", "--color=no", str(copy),
    ]  # fmt: skip
    env = {**os.environ, **NOTEBOOK_ENV}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr
