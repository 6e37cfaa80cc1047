"""``report.json`` and a readable ``report.md`` (with two figures) from the stage records of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kdlib.checkpoint import atomic_write, write_json

#: The comparison the summary headlines: one thread, a batch of 64.
HEADLINE = "t1_b64"


def summary(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The final model against the student it started from (and the teacher): size and speed ratios, accuracy.

    ``size_ratio`` is the student's file size over the final one; ``speedup`` maps each ``t<threads>_b<batch>``
    setting to the student's median latency over the final model's.
    """
    student = next(m for m in models if m["label"].startswith("student"))
    final = models[-1]
    out: dict[str, Any] = {
        "student": student["label"], "final": final["label"],
        "size_ratio": student["disk_bytes"] / final["disk_bytes"],
        "accuracy_drop_points": 100 * (student["test_accuracy"] - final["test_accuracy"]),
        "speedup": {k: student["latency"][k]["median_ms"] / final["latency"][k]["median_ms"]
                    for k in final.get("latency", {})},
    }
    teacher = next((m for m in models if m["label"] == "teacher"), None)
    if teacher is not None:
        out["teacher_size_ratio"] = teacher["disk_bytes"] / final["disk_bytes"]
        out["teacher_speedup"] = {k: teacher["latency"][k]["median_ms"] / final["latency"][k]["median_ms"]
                                  for k in final.get("latency", {})}
    return out


def _table(models: list[dict[str, Any]]) -> str:
    keys = list(models[0].get("latency", {}))
    head = ["model", "engine", "file", "size (kB)", "val acc. (%)", "test acc. (%)", *[f"{k} (ms)" for k in keys]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        cells = [m["label"], m["engine"], m["file"], f"{m['disk_bytes'] / 1e3:.1f}", f"{100 * m['val_accuracy']:.2f}",
                 f"{100 * m['test_accuracy']:.2f}", *[f"{m['latency'][k]['median_ms']:.3f}" for k in keys]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figures(out: Path, models: list[dict[str, Any]]) -> list[str]:
    written = []
    latency_key = HEADLINE if HEADLINE in models[0].get("latency", {}) else next(iter(models[0].get("latency", {})), None)
    axes = [("disk_bytes", "file size (bytes)", "accuracy_size.png")]
    if latency_key:
        axes.insert(0, (latency_key, f"CPU latency, {latency_key} (ms)", "accuracy_latency.png"))
    for key, xlabel, name in axes:
        fig = Figure(figsize=(6, 4), layout="constrained")  # no pyplot: saving must not change a notebook's backend
        ax = fig.subplots()
        xs = [m["latency"][key]["median_ms"] if key != "disk_bytes" else m["disk_bytes"] for m in models]
        ys = [100 * m["test_accuracy"] for m in models]
        ax.plot(xs, ys, "o-", color="C0")
        for x, y, m in zip(xs, ys, models):
            ax.annotate(m["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        fig.savefig(out / name, dpi=100)
        written.append(name)
    return written


def write_report(out: Path, recipe: dict[str, Any], records: list[tuple[str, dict[str, Any] | None]]) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``out``; return the report.

    ``records`` are the ``(folder name, stage.json)`` pairs of the run in order. Without an evaluate stage the
    report lists each stage's accuracy and seconds only.
    """
    stages = [{"stage": name, **{k: v for k, v in rec.items() if k != "spec"}} for name, rec in records if rec]
    evaluated = next((s for s in stages if s["kind"] == "evaluate"), None)
    report: dict[str, Any] = {"recipe": recipe, "stages": stages}
    lines = ["# Compression report", "", "| stage | model | val acc. (%) | test acc. (%) | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s.get('label', '')} | {100 * s.get('val_accuracy', float('nan')):.2f} | "
              f"{100 * s.get('test_accuracy', float('nan')):.2f} | {s['seconds']:.0f} |" for s in stages if s["kind"] != "evaluate"]
    if evaluated:
        models = evaluated["models"]
        report["models"] = models
        report["summary"] = summary(models)
        s = report["summary"]
        lines += ["", "## Every model, reloaded from its file", "", _table(models), "",
                  f"The final model ({s['final']}) is {s['size_ratio']:.1f}× smaller on disk than the {s['student']} it "
                  f"started from; its test accuracy is {s['accuracy_drop_points']:.2f} points lower (negative: higher)."]
        lines += [f"Speed-up over the student at {k} (threads, batch): {v:.1f}×." for k, v in s["speedup"].items()]
        lines += [""] + [f"![{name}]({name})" for name in _figures(out, models)]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "report.md", lambda f: f.write(text.encode()))
    write_json(out / "report.json", report)
    return report
