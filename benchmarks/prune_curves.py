"""Unstructured pruning benchmark for chapter 8: lottery tickets, Han et al.-style pruning, accuracy vs sparsity.

Three experiments, each a task per seed, run with one thread per process over ``--workers`` spawn processes:

* ``lottery`` (MNIST-1D, the "mlp" 40-100-100-10, Adam, cosine, ``LOTTERY_STEPS`` steps per training): the dense
  network; iterative magnitude pruning (IMP, global) in ``LOTTERY_ROUNDS`` rounds to 90 % sparsity, rewinding the
  survivors to their initial values before each retraining (Frankle & Carbin, 2019); and two controls at the
  final mask's per-layer sparsities: a *random* mask with the same rewinding to the same initialization, and
  the winning mask with a *fresh* initialization (reinit). Every run trains for the same number of steps.
* ``han`` (Fashion-MNIST, LeNet-300-100 = "mlp" 784-300-100-10, full 60k/10k): train dense ``HAN_EPOCHS``
  epochs; prune + retrain in ``HAN_ROUNDS`` rounds (global magnitude) to 8 % of the weights remaining; a
  control fine-tunes the dense model for the same extra epochs, so "loss vs dense" is not a budget artefact.
* ``curves`` (MNIST-1D, same MLP): from a trained dense model, prune to each sparsity and fine-tune with the
  same total budget: global one-shot CE, layer-wise one-shot CE, global iterative (3 rounds) CE, and global
  one-shot KD from the dense model (T = 4, alpha = 0.9). Accuracy right after one-shot pruning (no fine-tune)
  is recorded too.

Results go to ``benchmarks/results/prune_curves.json``; an interrupted sweep resumes from
``prune_curves.partial.jsonl``.

Usage: ``python benchmarks/prune_curves.py [--seeds 5] [--han-seeds 3] [--curve-seeds 3] [--workers 2] [--smoke]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "prune_curves.json"

LOTTERY_STEPS, LOTTERY_ROUNDS, LOTTERY_SPARSITY = 3000, 5, 0.9
HAN_EPOCHS, HAN_ROUNDS, HAN_FT_EPOCHS, HAN_SPARSITY = 10, 3, 3, 0.92
CURVE_TRAIN_STEPS, CURVE_FT_STEPS, CURVE_ROUNDS = 3000, 1200, 3
CURVE_SPARSITIES = (0.5, 0.8, 0.9, 0.95)
FT_LR = 5e-4


def settings(smoke: bool) -> dict:
    if smoke:
        return dict(lottery_steps=40, lottery_rounds=2, han_epochs=1, han_rounds=2, han_ft_epochs=1,
                    han_train_size=1000, curve_train_steps=40, curve_ft_steps=12, curve_rounds=3,
                    curve_sparsities=[0.5, 0.9])
    return dict(lottery_steps=LOTTERY_STEPS, lottery_rounds=LOTTERY_ROUNDS, han_epochs=HAN_EPOCHS,
                han_rounds=HAN_ROUNDS, han_ft_epochs=HAN_FT_EPOCHS, han_train_size=None,
                curve_train_steps=CURVE_TRAIN_STEPS, curve_ft_steps=CURVE_FT_STEPS, curve_rounds=CURVE_ROUNDS,
                curve_sparsities=list(CURVE_SPARSITIES))


def _mnist1d():
    from kdlib import data

    return data.mnist1d(device="cpu")


def run_lottery(seed: int, cfg: dict) -> dict:
    from kdlib import models
    from kdlib.prune import (
        overall_sparsity, prune_global, prune_random, rewind, round_sparsities, save_rewind_point, sparsity_report,
    )
    from kdlib.train import fit

    d = _mnist1d()
    fit_kw = dict(steps=cfg["lottery_steps"], lr=1e-3, seed=seed, progress=False)
    model = models.create("mlp", seed=seed)
    init = save_rewind_point(model)
    rounds = []
    targets = [0.0] + round_sparsities(LOTTERY_SPARSITY, cfg["lottery_rounds"])
    for r, s in enumerate(targets):
        if r > 0:  # IMP: prune the trained weights globally by magnitude, rewind the survivors to init, retrain
            prune_global(model, s)
            rewind(model, init)
        acc = fit(model, d, **fit_kw).final_accuracy
        rounds.append(dict(round=r, sparsity=overall_sparsity(model), accuracy=acc))
    layers = {row["layer"]: row["sparsity"] for row in sparsity_report(model)[:-1]}

    random = models.create("mlp", seed=seed)  # same initialization, random mask with the ticket's layer sparsities
    g = torch.Generator().manual_seed(10_000 + seed)
    for name, s in layers.items():
        prune_random(random, s, generator=g, layers=[name])
    random_acc = fit(random, d, **fit_kw).final_accuracy

    reinit = models.create("mlp", seed=seed)  # the ticket's mask, fresh initialization
    prune_global(reinit, 0.0)  # installs all-ones masks so the state dicts line up
    mask = {k: v for k, v in model.state_dict().items() if k.endswith("_mask")}
    fresh = models.create("mlp", seed=20_000 + seed)
    rewind(reinit, save_rewind_point(fresh))
    reinit.load_state_dict({**reinit.state_dict(), **mask})
    rewind(reinit, save_rewind_point(fresh))  # recompute weight = fresh * ticket mask
    reinit_acc = fit(reinit, d, **fit_kw).final_accuracy
    return dict(task="lottery", seed=seed, dense=rounds[0]["accuracy"], ticket=rounds[-1]["accuracy"],
                sparsity=rounds[-1]["sparsity"], random=random_acc, random_sparsity=overall_sparsity(random),
                reinit=reinit_acc, reinit_sparsity=overall_sparsity(reinit), layer_sparsity=layers, rounds=rounds)


def run_han(seed: int, cfg: dict) -> dict:
    from kdlib import data, models
    from kdlib.prune import copy_model, iterative, sparsity_report
    from kdlib.train import fit

    d = data.fashion_mnist(device="cpu", train_size=cfg["han_train_size"])
    model = models.create("mlp", input_shape=(1, 28, 28), hidden=(300, 100), seed=seed)
    dense = fit(model, d, epochs=cfg["han_epochs"], lr=1e-3, seed=seed, progress=False).final_accuracy
    control = copy_model(model)
    extra = cfg["han_rounds"] * cfg["han_ft_epochs"]
    dense_more = fit(control, d, epochs=extra, lr=FT_LR, seed=seed + 1, progress=False).final_accuracy
    rows = iterative(model, d, HAN_SPARSITY, steps=cfg["han_rounds"], scope="global",
                     fine_tune=dict(epochs=cfg["han_ft_epochs"], lr=FT_LR, seed=seed + 1, progress=False))
    report = sparsity_report(model)
    # pruned_no_retrain: right after the *first* pruning step (no retraining yet); the accuracy before the last
    # round's retraining is rounds[-1]["pruned_accuracy"].
    return dict(task="han", seed=seed, dense=dense, dense_more=dense_more, pruned=rows[-1]["accuracy"],
                pruned_no_retrain=rows[0]["pruned_accuracy"], sparsity=rows[-1]["sparsity"], rounds=rows,
                layer_sparsity={r["layer"]: r["sparsity"] for r in report[:-1]})


def run_curves(seed: int, cfg: dict) -> dict:
    from kdlib import models
    from kdlib.prune import copy_model, iterative, one_shot
    from kdlib.train import fit

    d = _mnist1d()
    dense = models.create("mlp", seed=seed)
    dense_acc = fit(dense, d, steps=cfg["curve_train_steps"], lr=1e-3, seed=seed, progress=False).final_accuracy
    ft = dict(steps=cfg["curve_ft_steps"], lr=FT_LR, seed=seed + 1, progress=False)
    per_round = dict(ft, steps=cfg["curve_ft_steps"] // cfg["curve_rounds"])
    points = []
    for s in cfg["curve_sparsities"]:
        arms = {
            "global one-shot": one_shot(copy_model(dense), d, s, fine_tune=ft, scope="global"),
            "layerwise one-shot": one_shot(copy_model(dense), d, s, fine_tune=ft, scope="layerwise"),
            "global iterative": iterative(copy_model(dense), d, s, steps=cfg["curve_rounds"], fine_tune=per_round,
                                          scope="global"),
            "global one-shot KD": one_shot(copy_model(dense), d, s, fine_tune=ft, scope="global", teacher="dense"),
        }
        for arm, rows in arms.items():
            points.append(dict(arm=arm, sparsity=s, accuracy=rows[-1]["accuracy"], measured=rows[-1]["sparsity"]))
        first = arms["global one-shot"][0]
        points.append(dict(arm="global, no fine-tune", sparsity=s, accuracy=first["pruned_accuracy"],
                           measured=first["sparsity"]))
    return dict(task="curves", seed=seed, dense=dense_acc, points=points)


RUNNERS = {"lottery": run_lottery, "han": run_han, "curves": run_curves}


def run_one(task: tuple) -> dict:
    name, seed, cfg = task
    torch.set_num_threads(1)
    started = time.perf_counter()
    record = RUNNERS[name](seed, cfg)
    record["seconds"] = time.perf_counter() - started
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the lottery experiment")
    parser.add_argument("--han-seeds", type=int, default=3)
    parser.add_argument("--curve-seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--smoke", action="store_true", help="a few steps and 1,000 images: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = settings(args.smoke)
    seeds = {"lottery": args.seeds, "han": args.han_seeds, "curves": args.curve_seeds}
    # Longest tasks first, so the pool does not end on one long straggler.
    tasks = [(name, seed, cfg) for name in ("lottery", "curves", "han") if name in args.tasks
             for seed in range(seeds[name])]
    started = time.perf_counter()
    log = RunLog(args.out)
    done = log.done("task", "seed")
    tasks = [t for t in tasks if (t[0], t[1]) not in done]
    results = log.records
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for record in pool.imap_unordered(run_one, tasks):
            log.add(record)
            print(f"[{len(results)}/{len(done) + len(tasks)}] {record['task']} seed {record['seed']}: "
                  f"dense {record['dense']:.4f} ({record['seconds']:.0f} s)", flush=True)
    results.sort(key=lambda r: (list(RUNNERS).index(r["task"]), r["seed"]))
    out = dict(
        machine=machine(args.workers),
        seeds=seeds, smoke=args.smoke, wall_seconds=time.perf_counter() - started,
        protocol=dict(
            settings=cfg, lottery_sparsity=LOTTERY_SPARSITY, han_sparsity=HAN_SPARSITY, fine_tune_lr=FT_LR,
            optimizer="adam", schedule="cosine", train_lr=1e-3, batch_size=128,
            lottery=dict(data="mnist1d (4,000/1,000)", model="mlp 40-100-100-10", scope="global",
                         rewind="initialization", random="layer-wise random mask at the ticket's per-layer sparsity"),
            han=dict(data="fashion_mnist (60,000/10,000)", model="mlp 784-300-100-10 (LeNet-300-100)",
                     scope="global", control="dense fine-tuned for the same extra epochs"),
            curves=dict(data="mnist1d", kd=dict(temperature=4.0, alpha=0.9),
                        iterative="fine-tune budget split evenly over the rounds"),
        ),
        results=results,
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
