"""Chapter 12: the compression pipeline of ``recipes/fashion_mnist.toml`` over seeds, its sweep and Pareto fronts.

Protocol (CPU scale; every run is :func:`kdlib.pipeline.run` on the repository recipe with some settings changed):

1. **Teacher**: the recipe's 1.2M-parameter CNN, trained once (seed 0) on 20,000 Fashion-MNIST images with crops
   and flips; 5,000 further training images are the validation split, the 10,000 test images are read once.
2. **Student**: the 297k-parameter "cnn", distilled (KD, T = 4, alpha = 0.9) for the recipe's budget, one per
   seed; the same student trained alone on labels for the same budget is a reference point.
3. **Tuning** (seed 0, validation accuracy of the stage's own model, the same three learning rates for each
   arm): the pruning fine-tune's learning rate with KD from the unpruned student and with cross-entropy alone
   (the recipe's ratio, no quantization); then QAT's learning rate with KD from the float model and with cross-entropy,
   after the tuned KD pruning.
4. **Sweep** (seeds 0-2): prune ratio {0, 0.25, 0.4, 0.6} x {PTQ, QAT with KD}; ratio 0 is the control "the
   same fine-tuning epochs without pruning". **Recovery** (the recipe's ratio, 0.4): pruning without fine-tuning, with a
   cross-entropy fine-tune and with a KD fine-tune; PTQ, QAT with cross-entropy, QAT with KD.
   **Order** (ratio 0.4): the recipe's prune -> QAT, against QAT first, then pruning (the float weights of the
   QAT model, its BatchNorm folded) with the same KD fine-tune, then PTQ, so both orders train equally long
   and end in the same ONNX Runtime int8 engine. **Channel multiples**: the recipe again with
   ``round_to = 8`` (every pruned layer keeps a multiple of 8 channels), the learning rates tuned for the recipe.
5. **Latency**: after all training, alone in one process, one thread: every final model of seed 0 and the
   teacher and student, side by side at batch 1 and 64 (:func:`kdlib.profile.latency_side_by_side`).
6. **Default recipe time**: ``kdlib compress recipes/fashion_mnist.toml`` run alone from scratch, wall clock.

Runs go to ``--work`` (a cache folder; finished stages are reused, so an interrupted benchmark resumes) and
up to ``--workers`` seeds train at once, one thread each. Results go to ``benchmarks/results/pipeline_sweep.json``.

Usage: ``python benchmarks/pipeline_sweep.py [--workers 3] [--seeds 3] [--smoke] [--skip-default-time] [--results FILE]``
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdlib import quantize as Q
from kdlib.data import cache_dir
from kdlib.pipeline import load_recipe, run, set_value, sweep
from kdlib.pipeline import measure, runner, stages
from kdlib.pipeline.recipe import read_toml
from kdlib.pipeline.sweep import finished_stages
from kdlib.prune import fine_tune, prune_channels
from sweep import machine, save_json

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fashion_mnist.toml"
RESULTS = Path(__file__).parent / "results" / "pipeline_sweep.json"
PRUNE_LRS = [3e-4, 1e-3, 3e-3]
QAT_LRS = [3e-5, 1e-4, 3e-4]
RATIOS = [0.0, 0.25, 0.4, 0.6]
ROUND_TO = 8  # the recipe's ratio again, every pruned layer keeping a multiple of 8 channels
ONLY_TRAINING = {"export.enabled": False, "evaluate.enabled": False}


def with_settings(raw: dict, settings: dict) -> dict:
    for key, value in settings.items():
        raw = set_value(raw, key, value)
    return raw


def _job(args: tuple) -> None:
    """One sweep in a worker process with one thread (``args`` = recipe, out, axes, seeds, smoke, work)."""
    raw, out, axes, seeds, smoke, work = args
    torch.set_num_threads(1)
    sweep(raw, out, axes=axes, seeds=seeds, smoke=smoke, shared=work, log=lambda m: None)


def parallel(jobs: list[tuple], workers: int) -> None:
    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        pool.map(_job, jobs, chunksize=1)


def stage_records(folder: Path) -> dict[str, dict]:
    """kind → stage.json of every finished stage of one run."""
    out = {}
    for record in sorted(folder.glob("[0-9][0-9]_*/stage.json")):
        data = json.loads(record.read_text())
        out[data["kind"]] = data
    return out


def runs_of(work: Path, name: str) -> list[dict]:
    """Every run of the sweeps ``work/name/seed*``: settings, each stage's accuracy and seconds, the final model."""
    rows = []
    for folder in sorted((work / name).glob("seed*")):
        for row in json.loads((folder / "sweep.json").read_text())["runs"]:
            records = stage_records(folder / row["folder"])
            rows.append({**row, "folder": f"{folder.name}/{row['folder']}",
                         "stages": {k: {"val_accuracy": r.get("val_accuracy"), "test_accuracy": r.get("test_accuracy"),
                                        "seconds": r["seconds"]} for k, r in records.items() if k != "evaluate"}})
    return rows


def best(work: Path, name: str, key: str, kind: str) -> tuple[float, list[dict]]:
    """The value of ``key`` whose run's ``kind`` stage had the highest validation accuracy, and the table."""
    table = [{**{k: v for k, v in row.items() if "." in k}, "val_accuracy": row["stages"][kind]["val_accuracy"]}
             for row in runs_of(work, name)]
    return max(table, key=lambda r: r["val_accuracy"])[key], table


def reverse_order(raw: dict, seed: int, smoke: bool, work: Path) -> dict:
    """QAT first, then pruning with a KD fine-tune, then PTQ: the recipe's stages in the other order."""
    recipe = load_recipe(with_settings(raw, {"run.seed": seed}))
    recipe = runner.shrink(recipe) if smoke else recipe
    ctx = runner.make_context(recipe, lambda m: None)
    spec = {s["kind"]: s for s in recipe["stage"]}
    steps = runner.plan(recipe)
    distilled = next(s for s in steps if s.kind == "distill")
    source = finished_stages(work)[distilled.fingerprint]
    student = stages.load_stage_model(ctx, "distill", source)
    folder = work / "order" / f"seed{seed}"
    if (folder / "result.json").is_file():  # finished by an earlier, interrupted invocation
        return json.loads((folder / "result.json").read_text())
    quantize, prune = spec["quantize"], spec["prune"]
    settings = dict(seed=seed, device=ctx.device, batch_size=128, temperature=4.0, alpha=0.9)
    prepared = Q.calibrate(Q.prepare(student, Q.QuantConfig(8, 8)), ctx.train, batches=16, batch_size=64)
    fine_tune(prepared, ctx.train, copy.deepcopy(student), epochs=quantize["epochs"], lr=quantize["lr"], **settings)
    qat_float = Q.strip(prepared).eval()
    pruned = prune_channels(qat_float, ctx.example, prune["ratio"], prune["importance"]).model
    fine_tune(pruned, ctx.train, copy.deepcopy(qat_float), epochs=prune["epochs"], lr=prune["lr"], **settings)
    fp32 = Q.export_onnx(pruned.cpu().eval(), folder / "model_fp32.onnx", ctx.example.cpu())
    int8 = Q.OnnxModel(Q.quantize_onnx(fp32, folder / "model_int8.onnx", ctx.train, batches=16))
    result = {"seed": seed, **measure.score(int8, ctx.train, ctx.test), "disk_bytes": (folder / "model_int8.onnx").stat().st_size}
    (folder / "result.json").write_text(json.dumps(result))
    return result


def latency_pass(work: Path, rows: list[dict], rounded: list[dict], ratio: float, smoke: bool) -> dict:
    """Seed 0's models, timed alone side by side: the teacher, the student, the pruned student of the recipe's
    ratio (PyTorch) and every final int8 file of the main sweep (ONNX Runtime), with each file's size."""
    seed0 = [r for r in rows if r["run.seed"] == 0]
    default = next(r for r in seed0 if r["prune.ratio"] == ratio and r["quantize.mode"] == "qat")
    first = work / "main" / default["folder"]
    ctx = runner.make_context(json.loads((first / "recipe.json").read_text()), lambda m: None)
    files = {"teacher": first / "00_teacher", "student": first / "01_distill", "pruned": first / "02_prune"}
    models = {name: stages.load_stage_model(ctx, kind, files[name])
              for name, kind in (("teacher", "teacher"), ("student", "distill"), ("pruned", "prune"))}
    described = {name: measure.describe(models[name], stages.artifact(kind, files[name]))
                 for name, kind in (("teacher", "teacher"), ("student", "distill"), ("pruned", "prune"))}
    finals = {f"ratio {row['prune.ratio']:g}, {row['quantize.mode']}": work / "main" / row["folder"] for row in seed0}
    finals.update({f"ratio {row['prune.ratio']:g}, qat, round_to {ROUND_TO}": work / "round_to" / row["folder"]
                   for row in rounded if row["run.seed"] == 0})
    for name, folder in finals.items():
        models[name] = Q.OnnxModel(folder / "04_export" / "model.onnx")
        described[name] = measure.describe(models[name], models[name].path)
    torch.set_num_threads(1)
    times = measure.latency(models, {n: d["engine"] for n, d in described.items()}, ctx.test.test.x[:64],
                            batch_sizes=[1, 64], threads=[1], repeats=5 if smoke else 31)
    return {name: {**described[name], "latency": times[name]} for name in models}


def default_recipe_seconds(smoke: bool, work: Path) -> float:
    """Wall-clock seconds of ``kdlib compress`` on the recipe from scratch, alone (kept once measured)."""
    out, record = work / "default_time", work / "default_time.json"
    recipe = RECIPE.read_text()
    if record.is_file() and json.loads(record.read_text())["recipe"] == recipe:
        return json.loads(record.read_text())["seconds"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdlib", "compress", str(RECIPE), "--out", str(out), "--restart",
                    *(["--smoke"] if smoke else [])], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"recipe": recipe, "seconds": seconds}))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-default-time", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    work = args.work or cache_dir() / ("pipeline_smoke" if args.smoke else "pipeline")
    seeds = list(range(args.seeds))
    raw = read_toml(RECIPE)
    raw.pop("sweep", None)
    t0 = time.perf_counter()
    phase = lambda text: print(f"[{time.perf_counter() - t0:6.0f} s] {text}", flush=True)  # noqa: E731

    phase("teacher")
    torch.set_num_threads(2)
    run(with_settings(raw, {"distill.enabled": False, "prune.enabled": False, "quantize.enabled": False,
                            "evaluate.enabled": False}), work / "teacher", smoke=args.smoke, log=lambda m: None)
    phase("distilled students, and the student alone")
    alone = {**ONLY_TRAINING, "prune.enabled": False, "quantize.enabled": False}
    parallel([(with_settings(raw, alone), work / "students" / f"seed{s}", {"distill.method": ["kd", "student"]}, [s], args.smoke, work)
              for s in seeds], args.workers)

    phase("tuning the pruning fine-tune (seed 0, validation)")
    prune_only = {**ONLY_TRAINING, "quantize.enabled": False}
    parallel([(with_settings(raw, prune_only), work / f"tune_prune_{t}" / "seed0", {"prune.teacher": [t], "prune.lr": PRUNE_LRS},
               [0], args.smoke, work) for t in ("previous", "none")], args.workers)
    prune_lr = {t: best(work, f"tune_prune_{t}", "prune.lr", "prune") for t in ("previous", "none")}
    phase(f"tuning QAT (pruning lr {prune_lr['previous'][0]:g})")
    base = with_settings(raw, {"prune.lr": prune_lr["previous"][0], "quantize.mode": "qat"})
    parallel([(with_settings(base, ONLY_TRAINING), work / f"tune_qat_{t}" / "seed0", {"quantize.teacher": [t], "quantize.lr": QAT_LRS},
               [0], args.smoke, work) for t in ("previous", "none")], args.workers)
    qat_lr = {t: best(work, f"tune_qat_{t}", "quantize.lr", "quantize") for t in ("previous", "none")}

    phase("sweep and recovery arms over seeds")
    tuned = with_settings(raw, {"prune.lr": prune_lr["previous"][0], "quantize.lr": qat_lr["previous"][0]})
    ratio = load_recipe(tuned)["stage"][1]["ratio"]
    recovery = {"prune.ratio": [ratio], "quantize.mode": ["qat"]}
    jobs = []
    for s in seeds:
        jobs += [(tuned, work / "main" / f"seed{s}", {"prune.ratio": RATIOS, "quantize.mode": ["ptq", "qat"]}, [s], args.smoke, work),
                 (with_settings(tuned, {"prune.lr": prune_lr["none"][0]}), work / "prune_ce" / f"seed{s}",
                  {**recovery, "prune.teacher": ["none"]}, [s], args.smoke, work),
                 (with_settings(tuned, {"quantize.lr": qat_lr["none"][0]}), work / "qat_ce" / f"seed{s}",
                  {**recovery, "quantize.teacher": ["none"]}, [s], args.smoke, work),
                 (tuned, work / "prune_only" / f"seed{s}", {"prune.ratio": [ratio], "prune.epochs": [0], "quantize.mode": ["ptq"]},
                  [s], args.smoke, work),
                 (with_settings(tuned, {"prune.round_to": ROUND_TO}), work / "round_to" / f"seed{s}", recovery, [s],
                  args.smoke, work)]
    parallel(jobs, args.workers)

    phase("the other order: QAT, then pruning")
    with mp.get_context("spawn").Pool(min(args.workers, len(seeds))) as pool:
        order = pool.starmap(reverse_order_job, [(tuned, s, args.smoke, work) for s in seeds])

    phase("latency, alone")
    main_rows = runs_of(work, "main")
    rounded = runs_of(work, "round_to")
    timing = latency_pass(work, main_rows, rounded, ratio, args.smoke)
    seconds = None if args.skip_default_time else default_recipe_seconds(args.smoke, work)
    phase(f"default recipe alone: {seconds} s")
    result = {
        "machine": machine(args.workers), "smoke": args.smoke, "seeds": seeds, "recipe": load_recipe(RECIPE),
        "protocol": {"prune_lrs": PRUNE_LRS, "qat_lrs": QAT_LRS, "ratios": RATIOS, "round_to": ROUND_TO,
                     "tuned": {"prune_lr": {t: v[0] for t, v in prune_lr.items()}, "qat_lr": {t: v[0] for t, v in qat_lr.items()}}},
        "tuning": {"prune": {t: v[1] for t, v in prune_lr.items()}, "qat": {t: v[1] for t, v in qat_lr.items()}},
        "students": runs_of(work, "students"),
        "main": main_rows,
        "recovery": {"prune_ce": runs_of(work, "prune_ce"), "qat_ce": runs_of(work, "qat_ce"),
                     "prune_only": runs_of(work, "prune_only")},
        "round_to": rounded,
        "order": order,
        "latency": timing,
        "default_recipe_seconds": seconds,
        "wall_seconds": time.perf_counter() - t0,
    }
    save_json(args.results, result)
    phase(f"wrote {args.results}")


def reverse_order_job(raw: dict, seed: int, smoke: bool, work: Path) -> dict:
    torch.set_num_threads(1)
    return reverse_order(raw, seed, smoke, work)


if __name__ == "__main__":
    main()
