"""What the multi-seed benchmark sweeps share: a resumable log of finished runs and the machine record.

Every finished run is appended to ``<out>.partial.jsonl`` as it arrives, so an interrupted sweep resumes where
it stopped; :meth:`RunLog.finish` writes the report and removes the log.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from kdlib.profile import cpu_name, quartiles  # noqa: F401  (quartiles: re-exported for the benchmarks)


class RunLog:
    """The runs finished so far (``records``), kept on disk beside the output ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.with_suffix(".partial.jsonl")
        self.records: list[dict] = (
            [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []
        )
        out.parent.mkdir(parents=True, exist_ok=True)

    def done(self, *keys: str) -> set[tuple]:
        """The ``keys`` values of every finished run, e.g. ``done("pair", "method", "seed")``."""
        return {tuple(r[k] for k in keys) for r in self.records}

    def add(self, *records: dict) -> None:
        """Record finished runs, on disk first."""
        with self.path.open("a") as log:
            log.writelines(json.dumps(r) + "\n" for r in records)
        self.records.extend(records)

    def finish(self, report: dict, text: str | None = None) -> None:
        """Write the report (as indented JSON, or ``text`` when given) to ``out`` and delete the log."""
        if text is None:
            save_json(self.out, report)
        else:
            self.out.write_text(text)
        self.path.unlink(missing_ok=True)


def save_json(out: Path, result: dict) -> None:
    """Write a benchmark's result as indented JSON, creating its folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def machine(workers: int) -> dict:
    """Where a sweep ran: CPU, one thread per run, the number of worker processes, Python and torch."""
    return dict(cpu=cpu_name(), threads_per_run=1, workers=workers, python=platform.python_version(),
                torch=torch.__version__)


