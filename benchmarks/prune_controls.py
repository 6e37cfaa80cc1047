"""The controls that chapter 9's pruning results need: is a pruned-and-fine-tuned network better than the same
extra training without pruning, and better than its architecture trained from scratch (Liu et al., 2019)?

It repeats ``prune_speedup.py``'s setting exactly (the "cnn" on the same 20,000 Fashion-MNIST training images,
3 epochs, Adam 2e-3, seed 0; fine-tunes of 5 epochs at 1e-3) and adds, over ``--seeds`` seeds:

* ``dense + extra epochs``: the trained dense model trained for the fine-tune's 5 epochs more, with cross-entropy
  (the budget a pruned model's fine-tune gets, spent without pruning);
* ``scratch r``: for every pruning ratio, a freshly initialized "cnn" with the pruned model's channel widths
  (read from ``prune_speedup.json``), trained for the dense model's 3 epochs plus the fine-tune's 5 with the dense
  model's recipe: the same architecture and total budget, with no pruning at all.

Runs spread over ``--workers`` single-threaded processes; every finished run is logged, so an interrupted sweep
resumes. Results go to ``benchmarks/results/prune_controls.json``.

Usage: ``python benchmarks/prune_controls.py [--seeds 3] [--workers 2] [--smoke]``
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import torch

import pairs
from kdlib import data as kdata
from kdlib import models
from kdlib.train import fit
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "prune_controls.json"
SPEEDUP = Path(__file__).parent / "results" / "prune_speedup.json"
STAGES = ("stem", "block2", "block3")  # the "cnn"'s stages: their first convolution's width is the stage width


@functools.cache
def fashion(smoke: bool) -> kdata.Dataset:
    sizes = dict(train_size=512, test_size=256) if smoke else dict(train_size=20_000)
    return kdata.load("fashion_mnist", device="cpu", **sizes)


def budget(epochs: int, smoke: bool) -> dict:
    return dict(steps=20) if smoke else dict(epochs=epochs)


def run(task: dict) -> dict:
    torch.set_num_threads(1)
    data, smoke, seed = fashion(task["smoke"]), task["smoke"], task["seed"]
    p = task["protocol"]
    if task["arm"] == "dense + extra epochs":
        model = pairs.load_model(lambda: models.create("cnn", 10), Path(task["folder"]) / "dense.pt")
        fit_kwargs = {**p["finetune_fit"], **budget(p["finetune_epochs"], smoke)}
    else:
        model = models.create("cnn", 10, seed=seed, channels=task["channels"])
        fit_kwargs = {**p["teacher_fit"], **budget(p["teacher_epochs"] + p["finetune_epochs"], smoke)}
    start = time.perf_counter()
    result = fit(model, data, seed=seed, progress=False, **fit_kwargs)
    return {k: task[k] for k in ("arm", "ratio", "seed")} | dict(
        accuracy=result.final_accuracy, curve=[h["test_accuracy"] for h in result.history],
        params=sum(q.numel() for q in model.parameters()), fit=fit_kwargs, wall_seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny data and 20 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    speedup = json.loads(SPEEDUP.read_text())
    sp = speedup["protocol"]
    protocol = dict(teacher_fit={k: v for k, v in sp["teacher_fit"].items() if k != "epochs"},
                    finetune_fit={k: v for k, v in sp["finetune_fit"].items() if k != "epochs"},
                    teacher_epochs=sp["teacher_fit"].get("epochs", 3), finetune_epochs=sp["finetune_fit"].get("epochs", 5),
                    train_size=sp["train_size"])
    started = time.perf_counter()
    log = RunLog(args.out)
    with tempfile.TemporaryDirectory() as folder:
        torch.set_num_threads(1)
        dense = models.create("cnn", 10, seed=0)  # prune_speedup.py's dense model, retrained identically
        dense_fit = fit(dense, fashion(args.smoke), seed=0, progress=False, **protocol["teacher_fit"],
                        **budget(protocol["teacher_epochs"], args.smoke))
        torch.save(dense.state_dict(), Path(folder) / "dense.pt")
        print(f"dense: {dense_fit.final_accuracy:.4f} (prune_speedup.json: {speedup['dense']['accuracy']:.4f})",
              flush=True)
        base = dict(smoke=args.smoke, folder=folder, protocol=protocol)
        tasks = [dict(base, arm="dense + extra epochs", ratio=0.0, seed=s) for s in range(args.seeds)]
        for row in speedup["pruning"]:
            channels = [row["channels_after"][f"{stage}.{'0' if stage == 'stem' else '1'}"] for stage in STAGES]
            tasks += [dict(base, arm="scratch", ratio=row["ratio"], seed=s, channels=channels)
                      for s in range(args.seeds)]
        pairs.pool_runs(run, tasks, log, ("arm", "ratio", "seed"), args.workers,
                        lambda r: f"{r['arm']} {r['ratio']} seed {r['seed']}: {r['accuracy']:.4f}")
    out = dict(machine=machine(args.workers), smoke=args.smoke, seeds=args.seeds, protocol=protocol,
               dense=dict(accuracy=dense_fit.final_accuracy), wall_seconds=time.perf_counter() - started,
               run_seconds=sum(r["wall_seconds"] for r in log.records),
               results=sorted(log.records, key=lambda r: (r["arm"], r["ratio"], r["seed"])))
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
