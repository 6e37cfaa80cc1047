"""The pipeline end to end on scikit-learn's digits: artifacts, reloading, resuming, conflicts, sweeps, the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlib.pipeline import OutputConflict, load_recipe, run, set_value, sweep
from kdlib.pipeline import runner, stages
from kdlib.prune.structured import channels
from kdlib.train import evaluate
from test_pipeline_recipe import RAW

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    lines: list[str] = []
    report = run(RAW, out, log=lines.append)
    return out, report, lines


def test_every_stage_leaves_its_model_and_the_run_its_report(finished):
    out, report, _ = finished
    names = ["00_teacher", "01_distill", "02_prune", "03_quantize", "04_export", "05_evaluate"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    assert (out / "02_prune" / "pruned.pt").is_file() and (out / "04_export" / "model.onnx").is_file()
    assert not list(out.glob("*/train_state.pt"))  # resumable training state is removed once a stage is done
    for name in ("report.md", "report.json", "run.json", "recipe.json", "accuracy_latency.png", "accuracy_size.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["stage"][1]["ratio"] == 0.5 and record["seed"] == 0 and "torch" in record
    labels = [m["label"] for m in report["models"]]
    assert labels == ["teacher", "student (kd)", "pruned 50%", "int8 PTQ"]  # the export is the int8 file, timed once
    assert report["summary"]["size_ratio"] > 1 and set(report["summary"]["speedup"]) == {"t1_b1", "t1_b64"}
    assert report["models"][1]["test_accuracy"] > 0.5  # the distilled student learned something


def test_a_pruned_stage_reloads_with_its_new_shapes_and_the_same_outputs(finished):
    out, report, _ = finished
    ctx = runner.make_context(load_recipe(RAW), quiet)
    pruned = stages.load_stage_model(ctx, "prune", out / "02_prune")
    widths = channels(pruned)
    assert widths["stem.0"] == 4 and widths["block3.4"] == 8  # half of 8 and of 16
    recorded = next(m for m in report["models"] if m["label"] == "pruned 50%")
    assert evaluate(pruned, ctx.test)["accuracy"] == pytest.approx(recorded["test_accuracy"])
    int8 = stages.load_stage_model(ctx, "quantize", out / "03_quantize")
    assert evaluate(int8, ctx.test)["accuracy"] == pytest.approx(report["models"][-1]["test_accuracy"])


def test_a_run_killed_during_a_stage_resumes_after_the_last_finished_one(tmp_path, monkeypatch):
    out = tmp_path / "killed"
    recipe = set_value(RAW, "evaluate.enabled", False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.RUNNERS, "quantize", killed)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out, log=quiet)
    assert (out / "02_prune" / "stage.json").is_file() and (out / "03_quantize.partial").is_dir()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("0[0-2]_*/*")}
    monkeypatch.undo()
    lines: list[str] = []
    report = run(recipe, out, log=lines.append)
    assert [line for line in lines if "kept" in line] == [f"[{n}] finished earlier, kept"
                                                          for n in ("00_teacher", "01_distill", "02_prune")]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished stages untouched
    assert (out / "03_quantize" / "model_int8.onnx").is_file() and not (out / "03_quantize.partial").exists()
    assert [s["stage"] for s in report["stages"]] == ["00_teacher", "01_distill", "02_prune", "03_quantize", "04_export"]


def test_a_pt2e_stage_saves_an_exported_program_that_reloads_with_the_same_predictions(tmp_path):
    recipe = set_value(set_value(RAW, "quantize.backend", "pt2e"), "export.enabled", False)
    recipe = set_value(recipe, "evaluate.enabled", False)
    report = run(recipe, tmp_path / "pt2e", smoke=True, log=quiet)
    folder = tmp_path / "pt2e" / "03_quantize"
    assert (folder / "model_int8.pt2").is_file() and report["stages"][-1]["artifact"] == "model_int8.pt2"
    ctx = runner.make_context(runner.shrink(load_recipe(recipe)), quiet)
    program = stages.load_stage_model(ctx, "quantize", folder)
    assert evaluate(program, ctx.test)["accuracy"] == pytest.approx(report["stages"][-1]["test_accuracy"])


def test_an_output_folder_of_another_recipe_is_refused_untouched_unless_restarted(finished, tmp_path):
    out = tmp_path / "conflict"
    recipe = set_value(RAW, "evaluate.enabled", False)
    run(set_value(recipe, "export.enabled", False), out, log=quiet, smoke=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    other = set_value(set_value(recipe, "export.enabled", False), "prune.ratio", 0.25)
    with pytest.raises(OutputConflict, match="02_prune holds a prune stage of a different recipe"):
        run(other, out, log=quiet, smoke=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    lines: list[str] = []
    run(other, out, log=lines.append, smoke=True, restart=True)
    assert "[01_distill] finished earlier, kept" in lines and "[02_prune] running" in lines
    assert json.loads((out / "02_prune" / "stage.json").read_text())["spec"]["ratio"] == 0.25


def test_a_missing_data_set_or_checkpoint_stops_before_anything_is_written(tmp_path):
    out = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="apt-get install|download"):
        run(set_value(set_value(RAW, "data.name", "mnist"), "data.root", str(tmp_path / "empty")), out, log=quiet)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        run(set_value(RAW, "student.checkpoint", str(tmp_path / "missing.pt")), out, log=quiet)
    assert not out.exists()


def test_a_sweep_shares_the_stages_its_runs_have_in_common_and_finds_the_fronts(tmp_path):
    recipe = set_value(RAW, "export.enabled", False)
    result = sweep(recipe, tmp_path / "sweep", axes={"prune.ratio": [0.0, 0.5]}, seeds=[0, 1], smoke=True, log=quiet)
    assert len(result["runs"]) == 4 and len(result["points"]) == 2
    assert {p["seeds"] for p in result["points"]} == {2}
    assert set(result["references"]) == {"teacher", "student (kd)"}
    assert set(result["fronts"]) == {"latency_t1_b1", "latency_t1_b64", "disk_bytes"}
    folders = sorted((tmp_path / "sweep").glob("prune.ratio=*"))
    teachers = {(f / "00_teacher" / "model.pt").stat().st_ino for f in folders}
    students = {(f / "01_distill" / "model.pt").stat().st_ino for f in folders}
    assert len(teachers) == 1 and len(students) == 2  # one teacher; one distilled student per seed
    for name in ("sweep.json", "pareto_disk_bytes.png", "pareto_latency_t1_b64.png"):
        assert (tmp_path / "sweep" / name).is_file()


def _command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDLIB_PROGRESS": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "kdlib", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_command_runs_a_repository_recipe_and_a_users_own_model(tmp_path):
    done = _command("compress", str(ROOT / "recipes" / "fashion_mnist.toml"), "--smoke", "--out", "fashion",
                    "--set", "data.name=digits", "--set", "data.augment=false", "--set",
                    "teacher.kwargs={input_size = 8, channels = [8, 16, 16]}", "--set", "student.kwargs={input_size = 8}",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fashion" / "report.md").is_file()
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n\n"
        "def tiny(num_classes=10, width=32):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))\n")
    recipe = tmp_path / "mine.toml"
    recipe.write_text(
        '[data]\nname = "digits"\naugment = false\nvalidation = 100\n\n'
        '[student]\nmodel = "mymodels:tiny"\nkwargs = { width = 16 }\n\n'
        '[[stage]]\nkind = "distill"\nmethod = "student"\nepochs = 3\n\n'
        '[[stage]]\nkind = "prune"\nratio = 0.5\n\n[[stage]]\nkind = "quantize"\n\n'
        '[[stage]]\nkind = "evaluate"\nrepeats = 3\n')
    done = _command("compress", "mine.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "runs" / "mine" / "report.json").read_text())
    assert [m["label"] for m in report["models"]] == ["student (alone)", "pruned 50%", "int8 PTQ"]
    assert report["models"][0]["params"] == 64 * 16 + 16 + 16 * 10 + 10


def test_the_command_prints_one_line_for_a_bad_recipe_and_the_console_script_exists(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[student]\nmodel = "cnn"\n[[stage]]\nkind = "prune"\nratoi = 0.5\n')
    done = _command("compress", str(bad), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "ratoi" in done.stderr and "did you mean 'ratio'" in done.stderr
    script = Path(sys.executable).with_name("kdlib")
    assert script.is_file(), "pip install -e . installs the kdlib console script"
    assert subprocess.run([str(script), "--version"], capture_output=True, text=True).stdout.startswith("kdlib ")
    assert torch.__version__  # the command ran in the same environment
