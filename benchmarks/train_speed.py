"""Speed of kdlib's training loop against minimal hand-written loops, side by side in one process.

Three sections, each alternating its variants (the order flips every repeat, so drift on a shared machine
hits both alike), after one discarded warm-up run of each, with a fixed number of threads; every ratio is
taken per repeat (kdlib / reference on the same repeat) and the median and range are reported:

1. ``cpu_fit``: Fashion-MNIST, LeNet-300-100 (``mlp``, 784-300-100-10, the chapters' MLP), one epoch, batch
   128, Adam 1e-3, cosine schedule. kdlib's :func:`kdlib.train.fit` against the minimal loop (``randperm``
   order, index the batch, forward, cross-entropy, zero_grad, backward, step, scheduler step; nothing else).
   kdlib is timed by ``FitResult.train_seconds`` and by the wall clock of the call minus its evaluation;
   the goal compares the training steps only: ``train_seconds / minimal <= 1.05``.
2. ``cpu_distill``: the same student and a frozen small CNN teacher with cached logits;
   :func:`kdlib.distill.distill` (``fidelity=False``) against a hand loop that looks the precomputed teacher
   log-probabilities up by index and adds :func:`kdlib.losses.kd_loss_from_log_probs`.
3. ``gpu`` (only with CUDA): CIFAR-100 resnet32x4 -> resnet8x4, batch 64, one augmented KD epoch with a live
   teacher; kdlib (``cifar100(augment=True, device="cuda")`` + ``distill``) against the RepDistiller-style
   peer loop of ``/work/shared/gpu/peer_loop.py`` (re-implemented in :func:`peer_epoch`: DataLoader workers,
   torchvision crop/flip/normalize on PIL images), goal ``kdlib / peer <= 0.7``; and kdlib fp32 against
   ``amp="bf16"`` at batch 256, goal ``fp32 / bf16 >= 1.3``. Without ``--cifar-root`` (or with a folder
   that has no ``cifar-100-python``) it writes random files in the real format, as
   ``/work/shared/gpu/fake_cifar100.py`` does. Without CUDA it records ``{"ran": false, ...}``.

``--fit-kw key=value`` (repeatable; values are Python literals) is forwarded to every kdlib ``fit``/``distill``
call, e.g. ``--fit-kw compile=True --fit-kw channels_last=True``; an option ``fit`` does not accept is
dropped and recorded with its error under ``fit_kw_rejected``, and a variant that fails records its error.

Results go to ``benchmarks/results/train_speed.json``.

Usage: ``python benchmarks/train_speed.py [--repeats 5] [--threads 1] [--train-size N] [--sections ...]
[--cifar-root DIR] [--fit-kw k=v ...] [--smoke]``
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import math
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import kdlib.train
from kdlib import data as kdata
from kdlib import models
from kdlib.checkpoint import write_json
from kdlib.distill import cached_teacher_logits, distill, frozen
from kdlib.losses import kd_loss_from_log_probs, teacher_log_probs
from kdlib.profile import cpu_name
from kdlib.train import fit

RESULTS = Path(__file__).parent / "results" / "train_speed.json"
SECTIONS = ("cpu_fit", "cpu_distill", "gpu")
GOALS = {"cpu_fit": ("train_seconds / minimal", "<=", 1.05), "gpu_vs_peer": ("kdlib / peer", "<=", 0.7),
         "gpu_bf16": ("fp32 / bf16", ">=", 1.3)}
MLP = {"input_shape": (1, 28, 28), "hidden": (300, 100)}  # LeNet-300-100, the chapters' Fashion-MNIST MLP
TEACHER_CNN = {"channels": (8, 16, 32)}  # small: its one-off cache costs ~2 s for 60k images on one core
# Where fit evaluates, in kdlib today and after the loop's rewrite (its _evaluate helper, kdlib.evaluation).
EVALUATION_HOOKS = {"kdlib.train": ("evaluate", "_evaluate", "loss_and_accuracy"),
                    "kdlib.evaluation": ("evaluate", "loss_and_accuracy")}
CIFAR_MEAN_STD = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))  # peer_loop.py's normalization


# ------------------------------------------------------------------------------------------------ helpers


def parse_fit_kw(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"--fit-kw expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word, e.g. amp=bf16
    return out


def accepted_fit_kw(fit_kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The options kdlib.train.fit takes, and an error string for each it does not take (yet)."""
    params = inspect.signature(fit).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    ok, rejected = {}, {}
    for key, value in fit_kw.items():
        if key in params or takes_any:
            ok[key] = value
        else:
            rejected[key] = f"TypeError: fit() got an unexpected keyword argument {key!r} (value {value!r})"
    return ok, rejected


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


def spread(values: list[float]) -> dict[str, float]:
    """Median, range and interquartile range of per-repeat values."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "iqr": q3 - q1}


def ratios(num: list[float], den: list[float]) -> dict[str, Any]:
    per = [a / b for a, b in zip(num, den)]
    return {**spread(per), "per_repeat": per}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timed_evaluation(device: torch.device):
    """Time the evaluations ``fit`` makes: the functions of :data:`EVALUATION_HOOKS` that exist are wrapped
    for the block (kdlib itself is unchanged; nested calls count once)."""
    spent, depth, patched = [0.0], [0], []

    def wrap(original):
        def evaluate(*args, **kwargs):
            depth[0] += 1
            if depth[0] == 1:
                sync(device)
                start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    sync(device)
                    spent[0] += time.perf_counter() - start
        return evaluate

    for module_name, names in EVALUATION_HOOKS.items():
        module = sys.modules.get(module_name)
        for name in names:
            if module is not None and callable(getattr(module, name, None)):
                patched.append((module, name, getattr(module, name)))
                setattr(module, name, wrap(getattr(module, name)))
    try:
        yield spent
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def kdlib_source() -> dict[str, Any]:
    """Which kdlib was measured: its folder and, where it is a git checkout, the commit and whether kdlib/ differs."""
    folder = Path(kdlib.train.__file__).resolve().parent
    out: dict[str, Any] = {"path": str(folder)}
    try:
        git = ["git", "-C", str(folder)]
        out["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True).stdout.strip()
        out["uncommitted_changes"] = bool(subprocess.run([*git, "status", "--porcelain", "."], capture_output=True,
                                                         text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        marker = folder.parent / "COMMIT"  # an exported copy (git archive) may carry its commit in this file
        out["commit"] = marker.read_text().strip() if marker.exists() else "unknown (not a git checkout)"
    return out


def run_kdlib(call: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Run one kdlib fit/distill call; its ``train_seconds``, wall clock, evaluation time and the difference."""
    with timed_evaluation(device) as eval_seconds:
        sync(device)
        start = time.perf_counter()
        result = call()
        sync(device)
        wall = time.perf_counter() - start
    return {"train_seconds": result.train_seconds, "wall": wall, "eval": eval_seconds[0],
            "wall_minus_eval": wall - eval_seconds[0], "steps": result.steps}


def alternate(variants: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, list[dict]]:
    """One discarded warm-up run of each variant, then ``repeats`` rounds in alternating order."""
    names = list(variants)
    for name in names:
        variants[name]()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(variants[name]())
    return runs


def cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))  # as kdlib's


# ------------------------------------------------------------------------------------------- CPU sections


def minimal_epoch(model, x, y, *, batch_size: int, lr: float, seed: int, kd=None) -> dict[str, float]:
    """The minimal loop: randperm order, index, forward, loss, zero_grad, backward, step, scheduler step.

    ``kd=(teacher_log_probs, temperature, alpha)`` adds the KD term looked up by index (the hand KD loop).
    """
    n = x.shape[0]
    total = math.ceil(n / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(total))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        index = order[i : i + batch_size]
        logits = model(x[index])
        if kd is None:
            loss = F.cross_entropy(logits, y[index])
        else:
            log_p, t, alpha = kd
            loss = (1 - alpha) * F.cross_entropy(logits, y[index]) + alpha * kd_loss_from_log_probs(
                logits, log_p[index], t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "wall": seconds, "eval": 0.0, "wall_minus_eval": seconds, "steps": total}


def summarize(runs: dict[str, list[dict]], kdlib_name: str, ref_name: str) -> dict[str, Any]:
    ref = [r["train_seconds"] for r in runs[ref_name]]
    kd_train = [r["train_seconds"] for r in runs[kdlib_name]]
    kd_wall = [r["wall_minus_eval"] for r in runs[kdlib_name]]
    steps = runs[ref_name][0]["steps"]
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("train_seconds", "wall", "eval", "wall_minus_eval")}
           for n, rs in runs.items()}
    return {
        "steps_per_epoch": steps,
        "seconds": med,
        "us_per_step": {ref_name: med[ref_name]["train_seconds"] / steps * 1e6,
                        f"{kdlib_name} (train_seconds)": med[kdlib_name]["train_seconds"] / steps * 1e6,
                        f"{kdlib_name} (wall - eval)": med[kdlib_name]["wall_minus_eval"] / steps * 1e6},
        "ratio_train_seconds": ratios(kd_train, ref),
        "ratio_wall_minus_eval": ratios(kd_wall, ref),
        "runs": runs,
    }


def cpu_fit_section(dataset, args, fit_kw) -> dict[str, Any]:
    x, y = dataset.train.x, dataset.train.y

    def new_model():
        return models.create("mlp", dataset.num_classes, seed=0, **MLP)

    def kdlib_run():
        model = new_model()
        return run_kdlib(lambda: fit(model, dataset, epochs=1, batch_size=args.batch_size, lr=args.lr,
                                     optimizer="adam", schedule="cosine", seed=0, progress=False, **fit_kw),
                         torch.device("cpu"))

    def minimal_run():
        return minimal_epoch(new_model(), x, y, batch_size=args.batch_size, lr=args.lr, seed=0)

    runs = alternate({"kdlib": kdlib_run, "minimal": minimal_run}, args.repeats)
    out = summarize(runs, "kdlib", "minimal")
    goal = GOALS["cpu_fit"][2]
    out["goal"] = f"kdlib train_seconds / minimal <= {goal}"
    out["goal_met"] = out["ratio_train_seconds"]["median"] <= goal
    return out


def cpu_distill_section(dataset, args, fit_kw) -> dict[str, Any]:
    teacher = models.create("cnn", dataset.num_classes, seed=1, **TEACHER_CNN)
    if args.teacher_steps:  # throughput does not depend on accuracy; a few steps make it a non-random teacher
        fit(teacher, dataset, steps=args.teacher_steps, batch_size=args.batch_size, progress=False, eval_every=10**9)
    temperature, alpha = 4.0, 0.9  # distill's defaults
    with frozen(teacher):
        start = time.perf_counter()
        log_p = teacher_log_probs(cached_teacher_logits(teacher, dataset), temperature)
        cache_seconds = time.perf_counter() - start
    x, y = dataset.train.x, dataset.train.y

    def new_model():
        return models.create("mlp", dataset.num_classes, seed=0, **MLP)

    def kdlib_run():
        model = new_model()
        return run_kdlib(lambda: distill(model, teacher, dataset, epochs=1, batch_size=args.batch_size, lr=args.lr,
                                         temperature=temperature, alpha=alpha, fidelity=False, seed=0,
                                         progress=False, **fit_kw),
                         torch.device("cpu"))

    def hand_run():
        return minimal_epoch(new_model(), x, y, batch_size=args.batch_size, lr=args.lr, seed=0,
                             kd=(log_p, temperature, alpha))

    runs = alternate({"kdlib_distill": kdlib_run, "hand_kd": hand_run}, args.repeats)
    out = summarize(runs, "kdlib_distill", "hand_kd")
    out.update(teacher=f"cnn{TEACHER_CNN}, {args.teacher_steps} training steps", cache_build_seconds=cache_seconds,
               temperature=temperature, alpha=alpha,
               note="kdlib's wall - eval includes building the teacher cache inside distill(); train_seconds does not")
    return out


# ------------------------------------------------------------------------------------------------- GPU


def fake_cifar100(root: Path, n_train: int, n_test: int) -> None:
    """Random CIFAR-100 files in the real on-disk format (what /work/shared/gpu/fake_cifar100.py writes)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    import numpy as np

    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": rng.integers(0, 20, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=4)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f, protocol=4)


class PeerLoop:
    """The RepDistiller-style KD epoch of /work/shared/gpu/peer_loop.py: a DataLoader with ``workers`` processes,
    torchvision RandomCrop(32, 4) + flip + ToTensor + Normalize on PIL images, live resnet32x4 teacher, resnet8x4
    student, batch 64, SGD 0.05 (momentum 0.9, wd 5e-4), 0.1 CE + 0.9 KD at T=4. Models and loader are built
    once (persistent workers, as there); each call times one epoch."""

    def __init__(self, root: Path, device: torch.device, batch_size: int, workers: int) -> None:
        import numpy as np
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset
        from torchvision import transforms

        with open(root / "cifar-100-python" / "train", "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.array(d[b"fine_labels"])
        tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(*CIFAR_MEAN_STD)])

        class DS(Dataset):
            def __len__(self):
                return len(y)

            def __getitem__(self, i):
                return tf(Image.fromarray(x[i])), int(y[i])

        self.loader = DataLoader(DS(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.device = device
        self.teacher = models.create("resnet32x4", 100, seed=1).to(device).eval()
        self.student = models.create("resnet8x4", 100, seed=0).to(device)
        self.opt = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def __call__(self) -> dict[str, float]:
        s, t, opt, dev = self.student, self.teacher, self.opt, self.device
        s.train()
        sync(dev)
        start = time.perf_counter()
        steps = 0
        for xb, yb in self.loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            with torch.no_grad():
                tl = t(xb)
            sl = s(xb)
            kd = F.kl_div(F.log_softmax(sl / 4, 1), F.softmax(tl / 4, 1), reduction="batchmean") * 16
            loss = 0.1 * F.cross_entropy(sl, yb) + 0.9 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        sync(dev)
        seconds = time.perf_counter() - start
        return {"train_seconds": seconds, "wall": seconds, "eval": 0.0, "wall_minus_eval": seconds, "steps": steps}


def gpu_section(args, fit_kw) -> dict[str, Any]:
    device = torch.device(args.gpu_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"ran": False, "why": "no CUDA device on this machine"}
    out: dict[str, Any] = {"ran": True, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                           else str(device)}
    with contextlib.ExitStack() as stack:
        root = Path(args.cifar_root) if args.cifar_root else None
        if root is None or not (root / "cifar-100-python" / "train").exists():
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="train_speed_cifar")))
            n_train, n_test = (256, 128) if args.smoke else (50_000, 10_000)
            fake_cifar100(root, n_train, n_test)
            out["data"] = f"random CIFAR-100 files in the real format ({n_train} train / {n_test} test)"
        else:
            out["data"] = f"CIFAR-100 files under {root}"
        dataset = kdata.cifar100(root=root, augment=True, device=device)
        teacher = models.create("resnet32x4", 100, seed=1).to(device)
        sgd = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"}

        def kdlib_run(batch_size: int, **extra):
            def run():
                student = models.create("resnet8x4", 100, seed=0).to(device)
                kw = {**sgd, **fit_kw, **extra}
                return run_kdlib(lambda: distill(student, teacher, dataset, epochs=1, batch_size=batch_size,
                                                 cache_teacher=False, fidelity=False, seed=0, progress=False, **kw),
                                 device)
            return run

        try:
            peer = PeerLoop(root, device, batch_size=64, workers=args.peer_workers)
            runs = alternate({"kdlib": kdlib_run(64), "peer": peer}, args.gpu_repeats)
            vs = summarize(runs, "kdlib", "peer")
            vs.update(goal=f"kdlib / peer <= {GOALS['gpu_vs_peer'][2]}", batch_size=64, peer_workers=args.peer_workers,
                      goal_met=vs["ratio_wall_minus_eval"]["median"] <= GOALS["gpu_vs_peer"][2],
                      note="goal judged on wall - eval (train_seconds in ratio_train_seconds); warm-up epochs excluded")
            out["vs_peer"] = vs
        except Exception as err:  # noqa: BLE001 (recorded)  e.g. a --fit-kw option kdlib accepts in its signature but fails on
            out["vs_peer"] = {"error": error_text(err)}
        try:
            runs = alternate({"fp32": kdlib_run(256, amp=None), "bf16": kdlib_run(256, amp="bf16")}, args.gpu_repeats)
            bf = {"batch_size": 256, "seconds": {n: statistics.median(r["wall_minus_eval"] for r in rs)
                                                 for n, rs in runs.items()},
                  "train_seconds": {n: statistics.median(r["train_seconds"] for r in rs) for n, rs in runs.items()},
                  "speedup_wall_minus_eval": ratios([r["wall_minus_eval"] for r in runs["fp32"]],
                                                    [r["wall_minus_eval"] for r in runs["bf16"]]),
                  "speedup_train_seconds": ratios([r["train_seconds"] for r in runs["fp32"]],
                                                  [r["train_seconds"] for r in runs["bf16"]]),
                  "runs": runs}
            bf.update(goal=f"fp32 / bf16 >= {GOALS['gpu_bf16'][2]}",
                      goal_met=bf["speedup_wall_minus_eval"]["median"] >= GOALS["gpu_bf16"][2])
            out["bf16"] = bf
        except Exception as err:  # noqa: BLE001 (recorded in the report)
            out["bf16"] = {"error": error_text(err)}
    return out


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per CPU comparison (>= 5)")
    parser.add_argument("--gpu-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=None, help="Fashion-MNIST training subset (default all 60k)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--teacher-steps", type=int, default=100, help="training steps of the CPU teacher")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--cifar-root", default=None, help="folder with cifar-100-python/ (else random files)")
    parser.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # "cpu" runs the code path
    parser.add_argument("--peer-workers", type=int, default=8, help="DataLoader workers of the peer loop")
    parser.add_argument("--fit-kw", action="append", default=[], metavar="KEY=VALUE",
                        help="forwarded to kdlib fit/distill (Python literal), repeatable")
    parser.add_argument("--smoke", action="store_true", help="few hundred samples, 1 repeat (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.repeats = args.gpu_repeats = 1
        args.train_size, args.teacher_steps, args.peer_workers = 512, 2, 0
    torch.set_num_threads(args.threads)
    fit_kw_requested = parse_fit_kw(args.fit_kw)
    fit_kw, rejected = accepted_fit_kw(fit_kw_requested)
    for key, why in rejected.items():
        print(f"--fit-kw {key}: {why}; measured without it")

    report: dict[str, Any] = {
        "benchmark": "kdlib's training loop against minimal hand-written loops",
        "goals": {k: f"{name} {op} {v}" for k, (name, op, v) in GOALS.items()},
        "machine": {"platform": platform.platform(), "processor": cpu_name(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "settings": {"repeats": args.repeats, "gpu_repeats": args.gpu_repeats, "batch_size": args.batch_size,
                     "lr": args.lr, "optimizer": "adam", "schedule": "cosine", "epochs": 1,
                     "model": "mlp 784-300-100-10", "train_size": args.train_size, "smoke": args.smoke,
                     "fit_kw": {k: repr(v) for k, v in fit_kw.items()}},
        "kdlib": kdlib_source(),
        "fit_kw_rejected": rejected,
        "measured": time.strftime("%Y-%m-%d"),
    }
    cpu = [s for s in args.sections if s != "gpu"]
    if cpu:
        size = {"train_size": args.train_size} if args.train_size else {}
        dataset = kdata.fashion_mnist(device="cpu", **size, **({"test_size": 256} if args.smoke else {}))
        report["settings"]["train_samples"] = len(dataset.train)
        report["settings"]["test_samples"] = len(dataset.test)
        for name, section in (("cpu_fit", cpu_fit_section), ("cpu_distill", cpu_distill_section)):
            if name in cpu:
                try:
                    report[name] = section(dataset, args, fit_kw)
                except Exception as err:  # noqa: BLE001 (recorded in the report)
                    report[name] = {"error": error_text(err)}
    if "gpu" in args.sections:
        report["gpu"] = gpu_section(args, fit_kw)

    write_json(args.out, report)
    print(f"{'comparison':34s} {'kdlib ms/step':>13s} {'ref ms/step':>11s} {'ratio (train_s)':>22s} {'ratio (wall-eval)':>22s}")

    def row(label, sec, ref):
        if "error" in sec:
            print(f"{label:34s} error: {sec['error'][:80]}")
            return
        steps = sec["steps_per_epoch"]
        k = next(n for n in sec["seconds"] if n != ref)
        a, b = sec["ratio_train_seconds"], sec["ratio_wall_minus_eval"]
        print(f"{label:34s} {sec['seconds'][k]['train_seconds'] / steps * 1e3:13.3f} "
              f"{sec['seconds'][ref]['train_seconds'] / steps * 1e3:11.3f} "
              f"{a['median']:8.3f} [{a['min']:.3f}-{a['max']:.3f}] {b['median']:8.3f} [{b['min']:.3f}-{b['max']:.3f}]")

    if "cpu_fit" in report:
        row("cpu fit vs minimal loop", report["cpu_fit"], "minimal")
    if "cpu_distill" in report:
        row("cpu distill vs hand KD loop", report["cpu_distill"], "hand_kd")
    gpu = report.get("gpu")
    if gpu is not None and not gpu.get("ran"):
        print(f"gpu: not run ({gpu['why']})")
    elif gpu is not None:
        row("gpu KD epoch vs peer loop (b64)", gpu["vs_peer"], "peer")
        bf = gpu["bf16"]
        if "error" in bf:
            print(f"gpu bf16: error: {bf['error'][:80]}")
        else:
            s = bf["speedup_wall_minus_eval"]
            print(f"gpu fp32 {bf['seconds']['fp32']:.2f} s, bf16 {bf['seconds']['bf16']:.2f} s per epoch (b256): "
                  f"bf16 speedup {s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
