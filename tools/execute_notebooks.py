"""Execute the book's notebooks in place and stamp them (``make notebooks``).

Usage::

    python tools/execute_notebooks.py [NOTEBOOK ...]     # default: every notebooks/*.ipynb

Each notebook runs with papermill at its default parameters (nothing is injected), kernel ``python3``, with
the notebook's own folder as working directory. Only when every cell succeeded is the notebook written back,
with papermill's timing metadata removed (it would change on every run) and ``metadata["kdlib"]`` set to::

    source_sha256   sha256 of the notebook's code, see source_sha256() below
    kdlib_version   version of the kdlib that produced the outputs
    torch_version   version of torch
    machine         the machine the outputs were produced on (CPU, cores, GPU if one was visible)

``tests/test_notebook_freshness.py`` recomputes ``source_sha256`` with the function in this file, so a
notebook whose code changed after its outputs were recorded fails the tests until it is re-executed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
KERNEL = "python3"

# Environment of every notebook kernel (here, in the tests and in `make book`): no progress bars in the
# outputs, and matplotlib's inline backend so that figures are recorded. (MPLBACKEND=Agg, fine for scripts,
# would silently drop every figure from a notebook.)
NOTEBOOK_ENV = {"KDLIB_PROGRESS": "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def canonical_source(nb: nbformat.NotebookNode) -> str:
    """The notebook's code as one string, in a form that does not depend on how the file was saved.

    Every code cell, in order, becomes a line ``# %%`` followed by its source with line endings normalised
    to ``\\n`` and trailing white space at the end of the cell removed, then one ``\\n``. Markdown and raw
    cells, outputs, execution counts and all metadata are ignored: they do not change what the code computes.
    """
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        source = source.replace("\r\n", "\n").replace("\r", "\n").rstrip()
        parts.append(f"# %%\n{source}\n")
    return "".join(parts)


def source_sha256(nb: nbformat.NotebookNode) -> str:
    """Hex SHA-256 of the UTF-8 encoding of :func:`canonical_source`."""
    return hashlib.sha256(canonical_source(nb).encode("utf-8")).hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """One line describing where the outputs were produced, e.g. ``Linux x86_64, AMD EPYC ..., 2 cores, no GPU``."""
    import torch  # imported here so that importing this module (as the tests do) stays cheap

    from kdlib.profile import cpu_name

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    elif torch.backends.mps.is_available():
        gpu = "Apple MPS"
    else:
        gpu = "no GPU"
    return f"{platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, {gpu}"


def _strip_run_metadata(nb: nbformat.NotebookNode) -> None:
    """Drop metadata that papermill adds and that changes on every run (timings, status)."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]


def execute(path: Path, stamp: dict[str, str]) -> float:
    """Execute ``path`` in place at its default parameters; return the seconds it took."""
    import papermill as pm

    path = path.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        start = time.perf_counter()
        # parameters=None: papermill injects nothing, so the run uses the notebook's own defaults.
        # On an error papermill raises PapermillExecutionError and the committed notebook stays untouched.
        pm.execute_notebook(
            str(path), str(out), parameters=None, kernel_name=KERNEL, cwd=str(path.parent), progress_bar=False
        )
        seconds = time.perf_counter() - start
        nb = nbformat.read(out, as_version=4)
    _strip_run_metadata(nb)
    nb.metadata["kdlib"] = {"source_sha256": source_sha256(nb), **stamp}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks to execute", file=sys.stderr)
        return 1
    os.environ.update(NOTEBOOK_ENV)  # the kernels inherit our environment
    stamp = {"kdlib_version": _version("kdlib"), "torch_version": _version("torch"), "machine": machine()}
    print(f"executing {len(paths)} notebook(s) on {stamp['machine']}", flush=True)
    failed = []
    for path in paths:
        print(f"{path}: running", flush=True)
        try:
            seconds = execute(path, stamp)
        except Exception as err:  # report every failing notebook, then fail
            print(f"{path}: FAILED\n{err}", flush=True)
            failed.append(path)
        else:
            print(f"{path}: done in {seconds:.0f} s", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed and were left unchanged: {', '.join(map(str, failed))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
