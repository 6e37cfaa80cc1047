"""One training loop for every method in kdlib.

:func:`fit` trains any classifier on a :class:`~kdlib.data.Dataset` with cross-entropy plus optional extra
:class:`LossTerm` s. Distillation (:mod:`kdlib.distill`), pruning fine-tunes and quantization-aware training
reuse it by passing extra terms, so there is exactly one loop to get right.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm import tqdm

from kdlib.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from kdlib.data import UNLABELED, Batch, Dataset, Split
from kdlib.device import DeviceLike, module_device, resolve
from kdlib.losses import cross_entropy
from kdlib.repro import seed_everything
from kdlib.run_state import (
    CHECKPOINT_FORMAT,
    ResumeMismatchError,  # noqa: F401  (re-exported: fit(resume=True) raises it)
    _BatchStream,
    _check_checkpoint_args,
    _check_resumable,
    _fingerprint,
    _grad_norm,
    _Loop,
    _Parts,
    _Running,
    _stable_repr,
)

OptimizerSpec = str | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
#: Called with the model at every evaluation; what it returns is added to that evaluation's history record.
Monitor = Callable[[nn.Module], Mapping[str, float]]
ScheduleSpec = str | Callable[[int], float] | None

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "multistep")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ON_NONFINITE = ("raise", "rollback")
MAX_ROLLBACKS = 3  # consecutive non-finite steps that on_nonfinite="rollback" skips before it gives up


@runtime_checkable
class LossTerm(Protocol):
    """An extra term of the training objective.

    ``term(batch, logits)`` returns a scalar tensor for the current mini-batch, given the model's logits
    (with autograd graph). The trainer adds ``weight * term(batch, logits)`` to the loss and logs the
    unweighted value under ``"loss/<name>"``. A term that is also an :class:`torch.nn.Module` (a learned
    regressor, say) is moved to the device, put in train mode and has its parameters optimized with the
    model's.
    """

    name: str
    weight: float

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor: ...


@dataclass
class FitResult:
    """What :func:`fit` returns: the history as data plus the headline numbers.

    Attributes:
        history: one dict per evaluation with keys ``epoch``, ``step``, ``lr``, ``train_loss``,
            ``train_accuracy`` (running, over the batches since the previous evaluation), ``test_loss``,
            ``test_accuracy``, ``train_seconds`` (cumulative time of the training steps, batch drawing
            included, evaluation excluded), ``grad_norm`` (mean global L2 norm of the gradients, before
            clipping, over the applied steps since the previous evaluation; steps with a non-finite norm,
            which rollback or the fp16 scaler skip, are left out) and ``loss/<term>`` for each loss term.
        best_accuracy: highest test accuracy over all evaluations (optimistic: it selects on the test
            set, as many papers do; quote it beside ``final_accuracy``).
        best_epoch: the epoch at which ``best_accuracy`` was reached.
        final_accuracy: test accuracy of the final weights.
        train_seconds: total time of the training steps (over all sessions of a resumed run).
        steps: the optimizer steps of the whole run.
        config: the settings, as JSON-friendly values.
        skipped_steps: steps whose batch ``on_nonfinite="rollback"`` skipped (empty otherwise).
        resumed_from: the step of the checkpoint this call resumed from (0 for a fresh start).
    """

    history: list[dict[str, float]]
    best_accuracy: float
    best_epoch: float
    final_accuracy: float
    train_seconds: float
    steps: int
    config: dict[str, Any] = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)
    resumed_from: int = 0

    def to_frame(self) -> Any:
        """The history as a :class:`pandas.DataFrame` (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(self.history)


# --------------------------------------------------------------------------------------------- evaluation


def _as_split(data: Split | Dataset) -> Split:
    if isinstance(data, Dataset):
        return data.test
    if isinstance(data, Split):
        return data
    raise TypeError(f"expected a kdlib Split or Dataset, got {type(data).__name__}")


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor | Split,
    *,
    batch_size: int = 1024,
    amp: str | None = None,
) -> torch.Tensor:
    """Logits of ``model`` for inputs ``x`` (batched, eval mode, no autograd), as float32 on the model's device.

    The train/eval mode of the model and of each of its submodules is restored afterwards (an
    :class:`~kdlib.schemes.Ensemble` of frozen teachers must not put them back in train mode).
    """
    inputs = x.x if isinstance(x, Split) else x
    device = module_device(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        outs = []
        with _autocast(device, _check_amp(amp, device)):
            for start in range(0, inputs.shape[0], batch_size):
                outs.append(model(inputs[start : start + batch_size].to(device)).float())
        return torch.cat(outs)
    finally:
        for module, mode in modes:
            module.training = mode


def evaluate(
    model: nn.Module,
    data: Split | Dataset,
    *,
    batch_size: int = 1024,
    amp: str | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on a split (a :class:`Dataset` means its test split).

    Returns ``{"loss": ..., "accuracy": ..., "n": ...}`` with accuracy in [0, 1].
    """
    split = _as_split(data)
    logits = predict(model, split, batch_size=batch_size, amp=amp)
    y = split.y.to(logits.device)
    return {
        "loss": float(cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "n": float(len(split)),
    }


def agreement(model_a: nn.Module, model_b: nn.Module, data: Split | Dataset, *, batch_size: int = 1024) -> float:
    """Share of samples (in [0, 1]) on which two models predict the same top-1 class.

    Teacher–student agreement measures *fidelity*, how well the student imitates the teacher, which is
    distinct from accuracy (Stanton et al., 2021). A :class:`Dataset` means its test split.
    """
    split = _as_split(data)
    a = predict(model_a, split, batch_size=batch_size).argmax(1)
    b = predict(model_b, split, batch_size=batch_size).argmax(1).to(a.device)
    return float((a == b).float().mean())


# --------------------------------------------------------------------------------------------- validation


def _check_amp(amp: str | None, device: torch.device) -> str | None:
    if amp is None:
        return None
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (got {device}); use amp='bf16' or amp=None")
    return amp


def check_model_fits_data(model: nn.Module, data: Dataset, *, role: str = "model") -> None:
    """Run two training samples through ``model`` and check it outputs ``(2, data.num_classes)`` logits.

    Raises a ``ValueError`` that says how to fix a class-count mismatch; the model's own error for an
    input of the wrong shape is re-raised with the dataset's input shape named.
    """
    device = module_device(model)
    probe = data.train.x[:2].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as err:
        raise ValueError(
            f"{role} {type(model).__name__} cannot take {data.name} inputs of shape {data.input_shape} "
            f"(per sample): {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{role} must return logits of shape (batch, classes); for 2 inputs it returned {shape}")
    if out.shape[1] != data.num_classes:
        raise ValueError(
            f"{role} outputs {out.shape[1]} classes but {data.name} has {data.num_classes}; "
            f"create it with num_classes={data.num_classes}"
        )


def _check_labels(data: Dataset, ce_weight: float) -> bool:
    """Check label ranges; return whether the training split holds :data:`~kdlib.data.UNLABELED` inputs."""
    for name, split in (("train", data.train), ("test", data.test)):
        if len(split) == 0:
            raise ValueError(f"the {name} split of {data.name} is empty")
        labeled = split.y[split.y != UNLABELED] if name == "train" else split.y
        if name == "test" and bool((split.y == UNLABELED).any()):
            raise ValueError(f"the test split of {data.name} has unlabeled samples; only training may")
        if labeled.numel() == 0:
            if ce_weight > 0:
                raise ValueError(f"the train split of {data.name} has no labels; train with ce_weight=0 (alpha=1)")
            continue
        low, high = int(labeled.min()), int(labeled.max())
        if low < 0 or high >= data.num_classes:
            raise ValueError(
                f"{name} labels of {data.name} lie in [{low}, {high}] but num_classes is {data.num_classes}"
            )
    return bool((data.train.y == UNLABELED).any())


# --------------------------------------------------------------------------------------------- optimization


def make_optimizer(
    spec: OptimizerSpec, params: list[nn.Parameter], *, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``spec`` ("adam", "adamw", "sgd") or call ``spec(params)``."""
    if callable(spec):
        return spec(params)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if spec == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {spec!r}; use one of {_OPTIMIZERS} or a callable params -> optimizer")


def lr_factor(
    schedule: ScheduleSpec, total_steps: int, steps_per_epoch: int, milestones: Sequence[int], gamma: float
) -> Callable[[int], float]:
    """Multiplier of the base learning rate as a function of the optimizer step.

    ``"cosine"`` anneals to 0 over ``total_steps``; ``"multistep"`` multiplies by ``gamma`` at each epoch in
    ``milestones`` (the RepDistiller protocol uses 150/180/210 of 240); ``"constant"``/``None`` keeps it.
    """
    if schedule is None or schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "multistep":
        bounds = sorted(m * steps_per_epoch for m in milestones)
        return lambda step: gamma ** sum(step >= b for b in bounds)
    if callable(schedule):
        return schedule
    raise ValueError(f"unknown schedule {schedule!r}; use one of {_SCHEDULES}, None, or a callable step -> factor")


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    setting = os.environ.get("KDLIB_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "False", "")
    # Quiet in CI, papermill and notebooks built into the book; a bar only for a person at a terminal.
    return sys.stderr.isatty() and not os.environ.get("CI")


# --------------------------------------------------------------------------------------------- the loop


DEFAULT_BATCH_SIZE = 128


def count_steps(
    num_samples: int, *, epochs: int | None = None, steps: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """The optimizer steps of a :func:`fit` run: ``steps``, or ``epochs`` passes of ``ceil(num_samples / batch_size)``."""
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    return steps if steps is not None else epochs * math.ceil(num_samples / batch_size)


def fit(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: ScheduleSpec = "cosine",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    seed: int = 0,
    device: DeviceLike = None,
    amp: str | None = None,
    ce_weight: float = 1.0,
    label_smoothing: float = 0.0,
    loss_terms: Sequence[LossTerm] = (),
    monitors: Sequence[Monitor] = (),
    eval_every: int | None = None,
    grad_clip: float | None = None,
    progress: bool | None = None,
    desc: str = "fit",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    on_nonfinite: str = "raise",
) -> FitResult:
    """Train ``model`` on ``data.train`` and evaluate on ``data.test``.

    The objective per mini-batch is ``ce_weight * CE(logits, y) + sum(term.weight * term(batch, logits))``.

    Args:
        model: any classifier returning ``(N, num_classes)`` logits; trained in place.
        data: a :class:`~kdlib.data.Dataset`; its ``augment`` (if any) is applied to training batches.
            Training inputs labeled :data:`~kdlib.data.UNLABELED` (a transfer set, see
            :func:`~kdlib.data.with_unlabeled`) are skipped by the cross-entropy and the training accuracy
            and seen only by the loss terms.
        epochs: passes over the training split. Give exactly one of ``epochs`` and ``steps``.
        steps: optimizer steps (the MNIST-1D paper trains for 6000); the data is cycled as needed.
        batch_size: training batch size.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (with ``momentum``) or ``callable(params)``.
        lr, weight_decay, momentum: optimizer settings.
        schedule: ``"cosine"`` (default), ``"multistep"`` (with ``milestones`` in epochs and ``gamma``),
            ``"constant"``/``None``, or ``callable(step) -> factor``; stepped once per optimizer step.
        seed: seeds every RNG at the start (dropout, batch order, augmentation). Create the model after
            seeding (or with ``models.create(..., seed=...)``) for a fully seeded run. On CPU the same
            seed gives bit-identical weights.
        device: ``None`` follows the model's device; anything else is resolved and the model moved there.
            The data is moved to the model's device if it is elsewhere.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` (CUDA only, with gradient scaling): mixed precision.
        ce_weight: weight of the cross-entropy term (``1 - alpha`` in Hinton's KD; 0 drops it).
        label_smoothing: label smoothing of the cross-entropy term (Müller et al. 2019).
        loss_terms: extra :class:`LossTerm` s (distillation, regularizers).
        monitors: callables ``monitor(model) -> {name: value}`` run at every evaluation, after the test
            accuracy; their values join the history record (e.g. :class:`kdlib.fidelity.Fidelity`, which
            :func:`~kdlib.distill.distill` adds by itself).
        eval_every: evaluate every this many steps; default once per epoch. The final weights are always
            evaluated.
        grad_clip: if set, clip the global gradient norm to this value. The history's ``grad_norm`` is
            the norm before clipping, so it shows how often and how hard clipping acts.
        progress: show a tqdm bar; ``None`` shows it only at an interactive terminal (never in CI or
            notebooks) unless ``KDLIB_PROGRESS`` says otherwise.
        desc: label of the progress bar.
        checkpoint: a file to save the complete training state to (atomically, with a SHA-256 sidecar; see
            :mod:`kdlib.checkpoint`): model, optimizer, LR schedule, gradient scaler, the state of loss terms
            that are modules (adapters, CRD memory), every RNG, the batch order and the position inside the
            current epoch, the running averages, the history and the time so far. Saved every
            ``checkpoint_every`` steps and after the last step.
        checkpoint_every: steps between checkpoints; default once per epoch. Needs ``checkpoint``.
        resume: continue from ``checkpoint`` if the file exists (start afresh if it does not). The checkpoint
            must come from a call with the same settings, model architecture, data and loss terms (a
            ``CheckpointError`` names what differs). On CPU a resumed run gives bit-identical weights, history
            and results to an uninterrupted one, timings excepted. With ``resume=False`` an existing file is
            overwritten.
        on_nonfinite: what a step with a NaN/infinite loss does. ``"raise"`` (default) raises
            ``FloatingPointError``. ``"rollback"`` also checks the gradients, and on a non-finite loss or
            gradient restores the model, optimizer, schedule, scaler and loss-term state of the start of the
            step and skips that batch (the step still counts, so the schedule stays aligned, as when AMP
            skips a step); it keeps one copy of that state in memory, refreshed every step. After
            ``MAX_ROLLBACKS`` (3) consecutive rollbacks, the next non-finite step raises.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad settings, or a model whose outputs do not match the dataset.
        FloatingPointError: the loss became NaN or infinite (the message names the step and the term).
        kdlib.checkpoint.CheckpointError: a checkpoint to resume from is corrupt, unsafe or from another run.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a kdlib.data.Dataset, got {type(data).__name__}")
    if any(not callable(m) for m in monitors):
        raise TypeError("monitors must be callables monitor(model) -> dict of numbers")
    if on_nonfinite not in _ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be 'raise' or 'rollback', got {on_nonfinite!r}")
    ckpt_path = _check_checkpoint_args(checkpoint, checkpoint_every, resume)
    # NumPy scalars (a learning rate from np.logspace, say) would end up in the optimizer's and the history's
    # state, which a weights_only checkpoint cannot hold; as Python floats they give the same arithmetic.
    lr, weight_decay, momentum, gamma = (
        float(v) if isinstance(v, numbers.Real) else v for v in (lr, weight_decay, momentum, gamma)
    )
    batch_size = int(batch_size) if isinstance(batch_size, numbers.Integral) else batch_size

    dev = module_device(model) if device is None else resolve(device)
    model.to(dev)
    amp = _check_amp(amp, dev)
    data = data.to(dev)
    has_unlabeled = _check_labels(data, ce_weight)
    ignore = UNLABELED if has_unlabeled else None
    check_model_fits_data(model, data, role="model")

    generator = seed_everything(seed)
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total_steps = count_steps(len(data.train), epochs=epochs, steps=steps, batch_size=batch_size)
    eval_every_arg, eval_every = eval_every, eval_every or steps_per_epoch
    save_every = checkpoint_every or steps_per_epoch

    term_modules = [t for t in loss_terms if isinstance(t, nn.Module)]
    for term in term_modules:
        term.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for t in term_modules for p in t.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    opt = make_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_factor(schedule, total_steps, steps_per_epoch, milestones, gamma)
    )
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    parts = _Parts(model, opt, sched, scaler, term_modules)
    stream = _BatchStream(data.train, batch_size, generator, data.augment)
    loop = _Loop(_Running([t.name for t in loss_terms]))

    fingerprint: dict[str, Any] = {}
    start_step = 0
    if ckpt_path is not None:
        fingerprint = _fingerprint(
            model, data, loss_terms,
            epochs=epochs, steps=steps, batch_size=batch_size, optimizer=_stable_repr(optimizer), lr=lr,
            weight_decay=weight_decay, momentum=momentum, schedule=_stable_repr(schedule),
            milestones=[int(m) for m in milestones], gamma=gamma, seed=seed, amp=amp, ce_weight=ce_weight,
            label_smoothing=label_smoothing, eval_every=eval_every_arg, grad_clip=grad_clip, on_nonfinite=on_nonfinite,
        )
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, map_location="cpu")
            _check_resumable(state, fingerprint, ckpt_path)
            parts.load_state_dict(state)
            stream.load_state_dict(state["stream"])
            loop.load_state_dict(state)
            restore_rng_state(state["rng"])  # last: nothing may draw random numbers between this and step 1
            start_step = int(state["step"])

    model.train()
    bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not _progress_enabled(progress), leave=False)
    for step in range(start_step + 1, total_steps + 1):
        snapshot = parts.snapshot() if on_nonfinite == "rollback" else None
        start = time.perf_counter()
        batch = stream.next()
        with _autocast(dev, amp):
            logits = model(batch.x)
            ce = cross_entropy(logits, batch.y, label_smoothing, ignore) if ce_weight > 0 else logits.new_zeros(())
            term_values = [term(batch, logits) for term in loss_terms]
            loss = ce_weight * ce.float()
            for term, value in zip(loss_terms, term_values):
                loss = loss + term.weight * value.float()
        loss_value = float(loss.detach())
        problem = None
        if not math.isfinite(loss_value):
            problem = _nonfinite_message(step, ce, loss_terms, term_values)
        else:
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip is not None else None
            if snapshot is not None and scaler is None:  # with fp16, the scaler itself skips inf gradients
                norm = norm if norm is not None else _grad_norm(params)
                if not math.isfinite(float(norm)):
                    problem = (
                        f"gradients became non-finite at step {step} (norm {float(norm):.4g}) although the loss "
                        f"{loss_value:.4g} was finite. Lower the learning rate, set grad_clip=, or check the inputs."
                    )
        if problem is not None:
            if snapshot is None:
                raise FloatingPointError(problem)
            if loop.consecutive >= MAX_ROLLBACKS:
                raise FloatingPointError(
                    f"{problem} on_nonfinite='rollback' gave up after {MAX_ROLLBACKS} consecutive rollbacks (it "
                    f"skipped steps {step - MAX_ROLLBACKS}-{step - 1} too): skipping batches does not cure this run."
                )
            loop.consecutive += 1
            loop.skipped.append(step)
            parts.restore(snapshot)
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the first step may be skipped before any optimizer step
                warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning)
                sched.step()  # the skipped step still counts: the schedule stays aligned with the step number
        else:
            loop.running.add_grad_norm(norm if norm is not None else _grad_norm(params))  # as clipping saw them
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            loop.consecutive = 0
        loop.train_seconds += time.perf_counter() - start
        if problem is None:
            loop.running.add(loss_value, logits.detach(), batch.y, term_values)
        bar.update(1)
        if step % eval_every == 0 or step == total_steps:
            record = {"epoch": round(step / steps_per_epoch, 4), "step": step, "lr": opt.param_groups[0]["lr"]}
            record.update(loop.running.summary())
            test = evaluate(model, data.test, amp=amp)
            record.update(test_loss=test["loss"], test_accuracy=test["accuracy"], train_seconds=loop.train_seconds)
            for monitor in monitors:
                record.update({name: float(value) for name, value in monitor(model).items()})
            loop.history.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{test['accuracy']:.3f}")
            loop.running = _Running([t.name for t in loss_terms])
            model.train()
        if ckpt_path is not None and (step % save_every == 0 or step == total_steps):
            save_checkpoint(
                ckpt_path,
                {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": step, **parts.state_dict(),
                 "stream": stream.state_dict(), "rng": capture_rng_state(), **loop.state_dict()},
            )
    bar.close()

    history = loop.history
    best = max(history, key=lambda r: r["test_accuracy"])
    return FitResult(
        history=history,
        best_accuracy=best["test_accuracy"],
        best_epoch=best["epoch"],
        final_accuracy=history[-1]["test_accuracy"],
        train_seconds=loop.train_seconds,
        steps=total_steps,
        config=dict(
            epochs=epochs, steps=steps, batch_size=batch_size, optimizer=_describe(optimizer), lr=lr,
            weight_decay=weight_decay, schedule=_describe(schedule), seed=seed, device=str(dev), amp=amp,
            ce_weight=ce_weight, label_smoothing=label_smoothing, terms=[(t.name, t.weight) for t in loss_terms],
        ),
        skipped_steps=list(loop.skipped),
        resumed_from=start_step,
    )


def _describe(spec: object) -> object:
    """A JSON-friendly record of a setting: strings and None as they are, callables by their repr."""
    return spec if spec is None or isinstance(spec, str) else repr(spec)


def _nonfinite_message(step: int, ce: torch.Tensor, terms: Sequence[LossTerm], values: list[torch.Tensor]) -> str:
    named = [("cross_entropy", float(ce.detach()))] + [(t.name, float(v.detach())) for t, v in zip(terms, values)]
    parts = [f"{name}={value:.4g}" for name, value in named]
    bad = [part for part, (_, value) in zip(parts, named) if not math.isfinite(value)]
    return (
        f"loss became non-finite at step {step} ({', '.join(bad) or 'the weighted sum overflowed'}; all terms: "
        f"{', '.join(parts)}). Lower the learning rate, set grad_clip=, or check the inputs for NaN."
    )
