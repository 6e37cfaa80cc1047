"""Bookkeeping for the book's chapters: hand numbers to the prose, read benchmark results.

The chapters quote their numbers through myst-nb's ``glue`` (``{glue:text}`name:.2f``` in the prose), so no
number is typed by hand. These helpers keep that bookkeeping short, in cells the book hides from the HTML, and
make a chapter that reads a benchmark's committed results say how to regenerate them when they are missing.
Nothing else in kdlib depends on this module; using kdlib in your own code never needs it.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["glue_comparison", "glue_numbers", "load_results"]


def glue_numbers(prefix: str = "", /, **values: Any) -> None:
    """Glue every keyword as ``prefix + name``: numbers as plain floats, strings as they are.

    Floats (not NumPy or torch scalars, not ints) let the prose choose the format (``{glue:text}`acc:.1f```).
    Nothing is displayed in the notebook.

    Raises:
        TypeError: for a value that is neither a real number nor a string (a tensor, a list...): glue its
            ``float(...)`` or a formatted string instead.
    """
    from myst_nb import glue  # imported here: myst-nb is a book dependency, not one of kdlib's

    for name, value in values.items():
        if isinstance(value, str):
            glue(prefix + name, value, display=False)
        elif isinstance(value, numbers.Real) or (hasattr(value, "__float__") and getattr(value, "ndim", 0) == 0):
            glue(prefix + name, float(value), display=False)
        else:
            raise TypeError(
                f"glue_numbers({prefix + name}=...): got {type(value).__name__}; pass a number or a string "
                "(for a one-element tensor or array, pass float(value))"
            )


def glue_comparison(
    prefix: str, table: pd.DataFrame, *, fields: Sequence[str] = ("diff", "low", "high", "verdict"), means: bool = True
) -> None:
    """Glue a :func:`kdlib.protocol.compare` (or ``contrasts``) table, arm by arm.

    Each arm's name becomes an identifier (``"KD, lr 1e-3"`` → ``KD_lr_1e_3``); its ``mean`` is glued as
    ``<prefix><arm>_mean`` (unless ``means=False``) and, for every arm compared with the baseline (a verdict other
    than ``"—"``), each of ``fields`` as ``<prefix><arm>_<field>``.
    """
    for arm, row in table.iterrows():
        key = prefix + re.sub(r"\W+", "_", str(arm)).strip("_") + "_"
        if means:
            glue_numbers(key, mean=row["mean"])
        if row["verdict"] != "—":
            glue_numbers(key, **{field: row[field] for field in fields})


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a benchmark's JSON results; when the file is missing, say which script writes it.

    The book's chapters read ``benchmarks/results/<name>.json``, written by ``benchmarks/<name>.py`` from the
    repository root. A chapter downloaded on its own does not have the file: the error says how to get it.
    """
    path = Path(path)
    if not path.is_file():
        script = path.parent.parent / f"{path.stem}.py"  # benchmarks/results/x.json is written by benchmarks/x.py
        if script.is_file():
            regenerate = (f"To regenerate it, run `python benchmarks/{script.name}` from the repository root "
                          "(its docstring gives the run time and options).")
        elif script.parent.is_dir():
            regenerate = "No script in benchmarks/ writes it: it is committed as it is; restore it from the repository."
        else:
            regenerate = "In a clone, the benchmark script of the same name in benchmarks/ writes each such file."
        raise FileNotFoundError(
            f"{path} not found. This chapter reads results committed with the book: run it from the notebooks/ "
            f"folder of a clone of the book's repository, where the file is in benchmarks/results/. {regenerate}"
        )
    return json.loads(path.read_text(encoding="utf-8"))
