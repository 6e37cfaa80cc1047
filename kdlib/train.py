"""One training loop for every method in kdlib.

:func:`fit` trains any classifier with cross-entropy plus optional extra :class:`LossTerm` s, on a kdlib
:class:`~kdlib.data.Dataset` (device tensors, the fast path) or on any PyTorch dataset or DataLoader
(:mod:`kdlib.sources`), in one process or under ``torchrun`` (:mod:`kdlib.distributed`). Distillation
(:mod:`kdlib.distill`), pruning fine-tunes and quantization-aware training reuse it by passing extra terms, so
there is exactly one loop to get right. The pieces around the loop live in their own modules: the resumable state
and checkpoints (:mod:`kdlib.run_state`), non-finite steps and rollback (:mod:`kdlib.nonfinite`), data and
sharding (:mod:`kdlib.sources`), evaluation (:mod:`kdlib.evaluation`), optimizers (:mod:`kdlib.optim`).
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm import tqdm

from kdlib import distributed
from kdlib.batchnorm import recalibrate_from_training_data, warn_if_batchnorm_collapsed
from kdlib.data import UNLABELED, Batch
from kdlib.device import DeviceLike, module_device, resolve
from kdlib.evaluation import (  # noqa: F401  (predict, evaluate, agreement: re-exported, their historic home)
    agreement,
    autocast,
    check_amp,
    check_model_fits_data,
    evaluate,
    flat_outputs,
    loss_and_accuracy,
    predict,
)
from kdlib.losses import cross_entropy
from kdlib.nonfinite import MAX_ROLLBACKS, MODES, NonFiniteGuard  # noqa: F401  (MAX_ROLLBACKS re-exported)
from kdlib.optim import OptimizerSpec, ScheduleSpec, lr_factor, make_optimizer
from kdlib.repro import seed_everything
from kdlib.run_state import (
    ResumeMismatchError,  # noqa: F401  (re-exported: fit(resume=True) raises it)
    _check_checkpoint_args,
    _fingerprint,
    _grad_norm,
    _Loop,
    _Parts,
    _Running,
    _stable_repr,
    resume_run,
    save_run,
)
from kdlib.sources import as_source, steps_per_epoch

#: Called with the model at every evaluation; what it returns is added to that evaluation's history record.
Monitor = Callable[[nn.Module], Mapping[str, float]]
DEFAULT_BATCH_SIZE = 128


@runtime_checkable
class LossTerm(Protocol):
    """An extra term of the training objective.

    ``term(batch, logits)`` returns a scalar tensor for the current mini-batch, given the model's logits
    (with autograd graph). The trainer adds ``weight * term(batch, logits)`` to the loss and logs the
    unweighted value under ``"loss/<name>"``. A term that is also an :class:`torch.nn.Module` (a learned
    regressor, say) is moved to the device, put in train mode and has its parameters optimized with the
    model's. A term with a method ``start(total_steps)`` is told the run's number of steps before the first.
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
            clipping, over the measured applied steps since the previous evaluation, see ``grad_norm_every``;
            steps with a non-finite norm, which rollback or the fp16 scaler skip, are left out) and ``loss/<term>`` for each loss term.
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


def _progress_enabled(progress: bool | None) -> bool:
    if not distributed.is_main():
        return False
    if progress is not None:
        return progress
    setting = os.environ.get("KDLIB_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "False", "")
    # Quiet in CI, papermill and notebooks built into the book; a bar only for a person at a terminal.
    return sys.stderr.isatty() and not os.environ.get("CI")


def count_steps(
    num_samples: int, *, epochs: int | None = None, steps: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """The optimizer steps of a :func:`fit` run: ``steps``, or ``epochs`` passes of
    ``ceil(num_samples / (batch_size × ranks))`` (padded to a multiple of the ranks under ``torchrun``)."""
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    return steps if steps is not None else epochs * steps_per_epoch(num_samples, batch_size, distributed.world_size())


def training_device(model: nn.Module, device: DeviceLike) -> torch.device:
    """Where :func:`fit` trains: ``"auto"`` (default) keeps a model that is on an accelerator there and moves one on
    the CPU to the best device (CUDA, then MPS); ``None`` follows the model; anything else is resolved."""
    if device is None:
        return module_device(model)
    if isinstance(device, str) and device == "auto":
        current = module_device(model)
        return current if current.type != "cpu" else resolve("auto")
    return resolve(device)


def _check_settings(epochs: object, steps: object, batch_size: object, ce_weight: float, monitors: Sequence[Any],
                    on_nonfinite: str, grad_norm_every: object) -> None:
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
    if any(not callable(m) for m in monitors):
        raise TypeError("monitors must be callables monitor(model) -> dict of numbers")
    if on_nonfinite not in MODES:
        raise ValueError(f"on_nonfinite must be 'raise' or 'rollback', got {on_nonfinite!r}")
    if isinstance(grad_norm_every, bool) or not isinstance(grad_norm_every, int) or grad_norm_every < 1:
        raise ValueError(f"grad_norm_every must be a positive int (steps), got {grad_norm_every!r}")


def _batch_size(source: Any, batch_size: int | None) -> int:
    """``batch_size``, or the DataLoader's; both given and different is an error (which one was meant?)."""
    from_loader = source.default_batch_size()
    if batch_size is not None and from_loader is not None and batch_size != from_loader:
        raise ValueError(f"batch_size={batch_size} but the DataLoader has batch_size={from_loader}; give one of them")
    return int(batch_size or from_loader or DEFAULT_BATCH_SIZE)


def _backward(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
              params: list[nn.Parameter], term_params: list[nn.Parameter], grad_clip: float | None,
              norm_wanted: bool) -> torch.Tensor | None:
    """Gradients of ``loss`` (unscaled under fp16), averaged over ranks, and those of ``params`` (all trainable
    ones) clipped; returns their norm before clipping when clipping computed it or ``norm_wanted`` (``None``
    otherwise: on small models the norm costs as much as a third of the optimizer step)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    distributed.average_gradients(term_params)  # the model's own gradients DDP averaged during backward
    if grad_clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    return _grad_norm(params) if norm_wanted else None


def _evaluate(model: nn.Module, source: Any, loop: _Loop, monitors: Sequence[Monitor], amp: str | None,
              record: dict[str, float]) -> dict[str, float]:
    record.update(loop.running.summary())
    if source.has_eval():
        test = loss_and_accuracy(model, source.eval_batches(), amp=amp)
        record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
    record["train_seconds"] = loop.train_seconds
    for monitor in monitors:
        record.update({name: float(value) for name, value in monitor(model).items()})
    return record


def fit(
    model: nn.Module,
    data: Any,
    *,
    eval_data: Any = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: ScheduleSpec = "cosine",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    seed: int = 0,
    device: DeviceLike = "auto",
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
    frozen_models: Sequence[nn.Module] = (),
    recalibrate_bn: bool = False,
    compile: bool = False,
    channels_last: bool = False,
    grad_norm_every: int = 16,
) -> FitResult:
    """Train ``model`` on ``data`` and evaluate it, in this process or on every rank under ``torchrun``.

    Under ``torchrun`` (:mod:`kdlib.distributed`) the model is wrapped in DDP, each rank trains on a disjoint
    slice of every global batch, evaluation is split across the ranks, and only rank 0 writes checkpoints and
    shows progress.

    The objective per mini-batch is ``ce_weight * CE(logits, y) + sum(term.weight * term(batch, logits))``.

    Args:
        model: any classifier returning ``(N, num_classes)`` logits; trained in place.
        data: what to train on: a :class:`~kdlib.data.Dataset` (device tensors; its ``augment``, if any, is
            applied to training batches on the device; it is evaluated on its test split), or any map-style torch
            Dataset of ``(input, label)`` pairs, a DataLoader over one, or a :class:`~kdlib.sources.TorchData`
            (per-sample transforms run in the loader's workers; see :mod:`kdlib.sources`). Training inputs
            labeled :data:`~kdlib.data.UNLABELED` (a transfer set, see :func:`~kdlib.data.with_unlabeled`) are
            skipped by the cross-entropy and the training accuracy and seen only by the loss terms.
        eval_data: what to evaluate on instead: a :class:`~kdlib.data.Split` (a validation split) for a kdlib
            Dataset, a torch Dataset or DataLoader otherwise. Torch data without ``eval_data`` is not evaluated
            (the history has no ``test_*`` keys and the accuracies of the result are NaN).
        epochs: passes over the training split. Give exactly one of ``epochs`` and ``steps``.
        steps: optimizer steps (the MNIST-1D paper trains for 6000); the data is cycled as needed.
        batch_size: training batch size per process; default the DataLoader's, else 128. Under ``torchrun``
            each of the N ranks takes ``batch_size`` samples per step, so a step sees ``N × batch_size``.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (with ``momentum``) or ``callable(params)``.
        lr, weight_decay, momentum: optimizer settings.
        schedule: ``"cosine"`` (default), ``"multistep"`` (with ``milestones`` in epochs and ``gamma``),
            ``"constant"``/``None``, or ``callable(step) -> factor``; stepped once per optimizer step.
        seed: seeds every RNG at the start (dropout, batch order, augmentation). Create the model after
            seeding (or with ``models.create(..., seed=...)``) for a fully seeded run. On CPU the same
            seed gives bit-identical weights.
        device: ``"auto"`` (default) trains where the model is if that is an accelerator, else on the best
            device available (CUDA, then MPS, then CPU); ``None`` follows the model's device; anything else is
            resolved and the model moved there. The data is moved to that device.
            The data is moved to the model's device if it is elsewhere.
        amp: ``None`` (default: float32), ``"bf16"`` or ``"fp16"`` (CUDA only, with gradient scaling): mixed
            precision. Off by default: it pays on GPUs for large enough models and batches, not on CPUs.
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
            ``MAX_ROLLBACKS`` (3) consecutive rollbacks, the next non-finite step raises. With ``"raise"`` on a
            GPU the loss is checked on the device and read every few steps (:mod:`kdlib.nonfinite`).
        frozen_models: models the loss terms read but do not train (the teacher): their weights join the
            resume fingerprint, so a checkpoint is never continued with another teacher.
        recalibrate_bn: after the last step, re-estimate every BatchNorm's running statistics from training
            batches (:func:`kdlib.prune.recalibrate_batchnorm`) before the final evaluation. Worth it when
            momentum is low or the weights moved fast late in training; a warning says when it looks needed.
        compile: train through ``torch.compile(model)`` (evaluation runs the plain model).
        grad_norm_every: steps between measurements of the gradient norm for the history's ``grad_norm``
            (also measured at every evaluation step, and at every step when ``grad_clip`` or rollback computes it
            anyway); 1 measures every step.
        channels_last: store the model's weights and the 4-D input batches channels-last (faster convolutions
            on GPUs with tensor cores, and with oneDNN on some CPUs).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad settings, or a model whose outputs do not match the dataset.
        FloatingPointError: the loss became NaN or infinite (the message names the step and the term).
        kdlib.checkpoint.CheckpointError: a checkpoint to resume from is corrupt, unsafe or from another run.
    """
    _check_settings(epochs, steps, batch_size, ce_weight, monitors, on_nonfinite, grad_norm_every)
    ckpt_path = _check_checkpoint_args(checkpoint, checkpoint_every, resume)
    # NumPy scalars (a learning rate from np.logspace, say) would end up in the optimizer's and the history's
    # state, which a weights_only checkpoint cannot hold; as Python floats they give the same arithmetic.
    lr, weight_decay, momentum, gamma = (
        float(v) if isinstance(v, numbers.Real) else v for v in (lr, weight_decay, momentum, gamma)
    )
    model = distributed.unwrap(model)  # fit wraps it itself (DDP, compile); hooks and names see the plain module
    dev = training_device(model, device)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = check_amp(amp, dev)
    source = as_source(data, eval_data).to(dev)
    batch_size = _batch_size(source, batch_size)
    ignore = UNLABELED if source.check_labels(ce_weight) else None
    classes = check_model_fits_data(model, source, role="model")
    source.num_classes = source.num_classes or classes  # a torch dataset's labels are then checked batch by batch

    generator = seed_everything(seed)
    per_epoch = steps_per_epoch(source.num_train, batch_size, distributed.world_size())
    total_steps = steps if steps is not None else epochs * per_epoch
    eval_every_arg, eval_every = eval_every, eval_every or per_epoch
    save_every = checkpoint_every or per_epoch

    term_modules = [t for t in loss_terms if isinstance(t, nn.Module)]
    for term in term_modules:
        term.to(dev).train()
    for term in loss_terms:
        if callable(getattr(term, "start", None)):
            term.start(total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    term_params = [p for t in term_modules for p in t.parameters() if p.requires_grad]
    trainable = params + term_params  # clipped and measured together, as one model
    if not trainable:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    opt = make_optimizer(optimizer, trainable, lr=lr, weight_decay=weight_decay, momentum=momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, total_steps, per_epoch, milestones, gamma))
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    parts = _Parts(model, opt, sched, scaler, term_modules)
    stream = source.stream(batch_size, generator, seed)
    names = [t.name for t in loss_terms]
    loop = _Loop(_Running(names, dev))
    guard = NonFiniteGuard(on_nonfinite, parts, ["cross_entropy", *names],
                           deferred=dev.type != "cpu" or distributed.is_distributed())
    net = distributed.wrap(model, dev)
    net = torch.compile(net) if compile else net

    fingerprint: dict[str, Any] = {}
    start_step = 0
    if ckpt_path is not None:
        fingerprint = _fingerprint(
            model, source, loss_terms, frozen_models,
            epochs=epochs, steps=steps, batch_size=batch_size, optimizer=_stable_repr(optimizer), lr=lr,
            weight_decay=weight_decay, momentum=momentum, schedule=_stable_repr(schedule),
            milestones=[int(m) for m in milestones], gamma=gamma, seed=seed, amp=amp, ce_weight=ce_weight,
            label_smoothing=label_smoothing, eval_every=eval_every_arg, grad_clip=grad_clip, on_nonfinite=on_nonfinite,
            world_size=distributed.world_size(),
        )
        start_step = resume_run(ckpt_path, fingerprint, parts, stream, loop, guard) if resume else 0

    model.train()
    bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not _progress_enabled(progress), leave=False)
    for step in range(start_step + 1, total_steps + 1):
        guard.start_step()
        evaluating = step % eval_every == 0 or step == total_steps
        start = time.perf_counter()
        batch = stream.next()
        x = batch.x.contiguous(memory_format=torch.channels_last) if channels_last and batch.x.dim() == 4 else batch.x
        with autocast(dev, amp):
            logits = net(x)
            flat, targets = flat_outputs(logits, batch.y)  # a sequence model's (N, L, V): one row per position
            ce = cross_entropy(flat, targets, label_smoothing, ignore) if ce_weight > 0 else logits.new_zeros(())
            term_values = [term(batch, logits) for term in loss_terms]
            loss = ce.float() if ce_weight == 1.0 else ce_weight * ce.float()
            for term, value in zip(loss_terms, term_values):
                loss = loss + term.weight * value.float()
        problem = guard.loss_problem(step, loss, [ce, *term_values])
        if problem is None:
            measure = on_nonfinite == "rollback" or step % grad_norm_every == 0 or evaluating
            norm = _backward(loss, opt, scaler, trainable, term_params, grad_clip, measure)
            problem = guard.gradient_problem(step, norm, loss) if scaler is None else None
        if problem is not None:
            guard.handle(step, problem, sched)
        else:
            if norm is not None:
                loop.running.add_grad_norm(norm)  # the norm clipping saw
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            guard.consecutive = 0
            loop.running.add(loss, flat.detach(), targets, term_values)
        loop.train_seconds += time.perf_counter() - start
        bar.update(1)
        if evaluating:
            guard.flush()
            if step == total_steps and recalibrate_bn:
                recalibrate_from_training_data(model, source, batch_size, seed)
            record = {"epoch": round(step / per_epoch, 4), "step": step, "lr": opt.param_groups[0]["lr"]}
            loop.history.append(_evaluate(model, source, loop, monitors, amp, record))
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record.get('test_accuracy', math.nan):.3f}")
            loop.running = _Running(names, dev)
            model.train()
        if ckpt_path is not None and (step % save_every == 0 or step == total_steps):
            guard.flush()
            save_run(ckpt_path, fingerprint, step, parts, stream, loop, guard)
    bar.close()
    return _result(loop, guard, model, total_steps, start_step, dict(
        epochs=epochs, steps=steps, batch_size=batch_size, optimizer=_describe(optimizer), lr=lr,
        weight_decay=weight_decay, schedule=_describe(schedule), seed=seed, device=str(dev), amp=amp,
        ce_weight=ce_weight, label_smoothing=label_smoothing, terms=[(t.name, t.weight) for t in loss_terms],
        world_size=distributed.world_size(), compile=compile, channels_last=channels_last,
    ))


def _result(loop: _Loop, guard: NonFiniteGuard, model: nn.Module, total_steps: int, start_step: int,
            config: dict[str, Any]) -> FitResult:
    history = loop.history
    if "test_accuracy" in history[-1]:
        warn_if_batchnorm_collapsed(model, history[-1])
        best = max(history, key=lambda r: r["test_accuracy"])
        best_accuracy, best_epoch, final = best["test_accuracy"], best["epoch"], history[-1]["test_accuracy"]
    else:
        best_accuracy = best_epoch = final = math.nan
    return FitResult(
        history=history, best_accuracy=best_accuracy, best_epoch=best_epoch, final_accuracy=final,
        train_seconds=loop.train_seconds, steps=total_steps, config=config, skipped_steps=list(guard.skipped),
        resumed_from=start_step,
    )


def _describe(spec: object) -> object:
    """A JSON-friendly record of a setting: strings and None as they are, callables by their repr."""
    return spec if spec is None or isinstance(spec, str) else repr(spec)
