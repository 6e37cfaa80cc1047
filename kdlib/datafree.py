r"""Data-free distillation: synthesize inputs from the teacher alone, then distil on them.

Two ways to get a transfer set when no training data may leave its owner, only the trained teacher:

* :func:`deep_inversion` (Yin et al. 2020, "Dreaming to Distill: Data-free Knowledge Transfer via
  DeepInversion"): optimize a batch of inputs, starting from noise, until the teacher labels them as chosen
  classes *and* every BatchNorm layer sees on them the mean and variance it recorded on the real data.
  The inputs are then an ordinary unlabeled transfer set: :func:`transfer_set` wraps them into a kdlib
  :class:`~kdlib.data.Dataset` and :func:`distill_on_synthetic` runs :func:`kdlib.distill.distill` on it
  (``alpha=1``: there are no labels), the one training loop :func:`kdlib.train.fit`.
* :func:`adversarial_distill` (Micaelli & Storkey 2019, "Zero-shot Knowledge Transfer via Adversarial Belief
  Matching"; Fang et al. 2019, "Data-Free Adversarial Distillation", DFAD): a :class:`Generator` maps noise
  to inputs on which student and teacher disagree most, and the student learns to agree on them. It needs
  no BatchNorm, but it is a two-player game with its own loop (see the function for why); DAFL's class-balance
  term (Chen et al. 2019) keeps the generator from collapsing onto a few classes.

Both count the samples the teacher was queried on (forward passes × batch), the cost of a data-free method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import UNLABELED, Dataset, Split
from kdlib.device import DeviceLike, module_device, resolve
from kdlib.distill import distill
from kdlib.evaluation import eval_mode, evaluate
from kdlib.teacher import frozen
from kdlib.train import FitResult

__all__ = ["Generator", "GeneratorResult", "InversionResult", "adversarial_distill", "bn_statistics_loss",
           "deep_inversion", "distill_on_synthetic", "total_variation", "transfer_set"]

_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class InversionResult:
    """What :func:`deep_inversion` returns: the inputs ``x`` ``(n, *input_shape)`` (detached), their target
    labels ``y`` (balanced over the classes), the share of ``x`` the teacher labels ``y``, per step the loss
    terms averaged over the batches (``loss``, ``ce``, ``bn``, ``tv``, ``l2``), ``teacher_queries`` (samples
    the teacher ran on: ``steps × n`` plus ``n`` for the final check; the 2-sample shape probe not counted)
    and wall-clock ``seconds``."""

    x: torch.Tensor
    y: torch.Tensor
    teacher_accuracy: float
    history: list[dict[str, float]]
    teacher_queries: int
    seconds: float


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_weights(**weights: float) -> None:
    for name, value in weights.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _probe(teacher: nn.Module, input_shape: Sequence[int] | None, device: torch.device) -> tuple[tuple[int, ...], int]:
    """The per-sample input shape (given, else ``teacher.input_shape``) and the number of classes, checked by
    running the teacher on two random inputs."""
    own = getattr(teacher, "input_shape", None)
    if input_shape is None:
        if own is None:
            raise ValueError(f"{type(teacher).__name__} has no input_shape attribute; pass input_shape=(C, H, W)")
        input_shape = own
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes, got {input_shape!r}")
    if own is not None and tuple(own) != shape:
        raise ValueError(f"input_shape={shape} does not match the teacher's input_shape {tuple(own)}")
    try:
        with torch.no_grad(), eval_mode(teacher):
            out = teacher(torch.randn(2, *shape, device=device))
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"the teacher does not accept inputs of shape (N, {', '.join(map(str, shape))}): {error}") from error
    if out.dim() != 2 or out.shape[0] != 2:
        raise ValueError(f"the teacher must return (N, num_classes) logits, got shape {tuple(out.shape)}")
    return shape, int(out.shape[1])


def bn_statistics_loss(x: torch.Tensor, bn: _BN) -> torch.Tensor:
    r"""DeepInversion's feature-statistics term for one BatchNorm layer and its input ``x`` (Yin et al. 2020, eq. 4).

    .. math:: \mathcal{R}_l(x) = \|\mu_l(x) - \mu_l^{BN}\|_2 + \|\sigma^2_l(x) - \sigma^{2,BN}_l\|_2

    where :math:`\mu_l(x)`, :math:`\sigma^2_l(x)` are the per-channel mean and (biased, as the authors' code)
    variance of ``x`` over the batch and every dimension after the channel one (``x`` is ``(N, C, ...)``), and
    the targets are the layer's running statistics. It is 0 exactly when the batch has the stored moments.
    The gradient flows to ``x``; the running statistics are buffers and get none.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} keeps no running statistics (track_running_stats=False)")
    if x.dim() < 2 or x.shape[1] != bn.num_features:
        raise ValueError(f"expected a (N, {bn.num_features}, ...) input for {bn}, got {tuple(x.shape)}")
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=False)
    return torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    r"""Smoothness prior :math:`\mathcal{R}_{TV}(x)`: mean squared difference of neighbouring entries along every
    dimension after the channel one (after the feature one for flat ``(N, F)`` inputs)."""
    dims = range(2, x.dim()) if x.dim() > 2 else [1]
    return sum((torch.diff(x, dim=d) ** 2).mean() for d in dims)  # type: ignore[return-value]


def deep_inversion(
    teacher: nn.Module,
    n: int,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    steps: int = 200,
    lr: float = 0.1,
    batch_size: int = 256,
    bn_weight: float = 1.0,
    tv_weight: float = 1e-3,
    l2_weight: float = 1e-5,
    jitter: int = 0,
    flip: bool = False,
    seed: int = 0,
    device: DeviceLike = None,
) -> InversionResult:
    r"""Synthesize ``n`` inputs from a trained teacher with BatchNorm (DeepInversion, Yin et al. 2020, CVPR).

    Each batch of inputs :math:`\hat x` starts as :math:`\mathcal N(0, 1)` noise (the normalized input scale)
    and is optimized with Adam (cosine learning rate) for ``steps`` steps on

    .. math:: \mathrm{CE}(f(\hat x), y) + \alpha_{BN} \sum_l \mathcal R_l(\hat x)
              + \alpha_{TV}\,\mathcal R_{TV}(\hat x) + \alpha_{\ell_2}\,\|\hat x\|_2^2 / N

    with target labels ``y`` balanced over the classes, :math:`\mathcal R_l` from :func:`bn_statistics_loss`
    on the input of every BatchNorm layer ``l`` (read with forward hooks) and :func:`total_variation`. The
    teacher is frozen (:func:`~kdlib.teacher.frozen`: eval mode, so BatchNorm normalizes with its running
    statistics, and no parameter gradients) and restored afterwards. With ``jitter``/``flip``, as the paper's
    code, every step sees the batch rolled by a random shift of up to ``jitter`` pixels along height and width
    and, with probability 1/2, mirrored left-right (all terms on that view). Adaptive DeepInversion's
    competition term is left out.

    Args:
        teacher: a trained classifier containing BatchNorm layers with running statistics.
        n: number of inputs to synthesize.
        input_shape: per-sample shape; default (and checked against) ``teacher.input_shape``.
        num_classes: default: the width of the teacher's output (checked if given).
        steps: optimization steps per batch.
        lr: Adam learning rate on the inputs.
        batch_size: inputs optimized together (the BatchNorm statistics are those of a batch).
        bn_weight, tv_weight, l2_weight: :math:`\alpha_{BN}`, :math:`\alpha_{TV}`, :math:`\alpha_{\ell_2}` (>= 0).
        jitter, flip: random shifts (pixels, >= 0) and mirroring per step; images ``(C, H, W)`` only.
        seed: seeds the noise, the order of the target labels and the jitter.
        device: where to run; default the teacher's device.

    Raises:
        ValueError: bad settings, an ``input_shape`` the teacher does not take, or a teacher without BatchNorm
            (use :func:`adversarial_distill` for such teachers).
    """
    n, steps, batch_size = _check_positive("n", n), _check_positive("steps", steps), _check_positive("batch_size", batch_size)
    _check_weights(lr=lr, bn_weight=bn_weight, tv_weight=tv_weight, l2_weight=l2_weight)
    bns = [m for m in teacher.modules() if isinstance(m, _BN) and m.running_mean is not None]
    if not bns:
        raise ValueError(
            f"DeepInversion needs BatchNorm statistics, but {type(teacher).__name__} has no BatchNorm layer with "
            "running statistics; use adversarial_distill (a generator, DFAD), which needs none"
        )
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise ValueError(f"jitter must be an int >= 0 (pixels), got {jitter!r}")
    dev = module_device(teacher) if device is None else resolve(device)
    teacher.to(dev)
    shape, classes = _probe(teacher, input_shape, dev)
    if (jitter or flip) and len(shape) != 3:
        raise ValueError(f"jitter and flip need image inputs (C, H, W), got input_shape {shape}")
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"num_classes={num_classes} but the teacher outputs {classes} logits")
    g, augment = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    y_all = (torch.arange(n) % classes)[torch.randperm(n, generator=g)].to(dev)
    seen: dict[_BN, torch.Tensor] = {}
    hooks = [bn.register_forward_hook(lambda m, i, o: seen.__setitem__(m, i[0])) for bn in bns]
    sums = torch.zeros(steps, 5)
    chunks: list[torch.Tensor] = []
    start, queries = time.perf_counter(), 0
    try:
        with frozen(teacher):
            for first in range(0, n, batch_size):
                y = y_all[first:first + batch_size]
                x = torch.randn(len(y), *shape, generator=g).to(dev).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=lr)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
                for step in range(steps):
                    seen.clear()
                    view = x
                    if jitter or flip:  # the paper's augmentation: a random roll, a coin-flip mirror
                        dy, dx, mirror = torch.randint(-jitter, jitter + 1, (2,), generator=augment).tolist() + [
                            flip and bool(torch.rand(1, generator=augment) < 0.5)]
                        view = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                        view = view.flip(3) if mirror else view
                    ce = F.cross_entropy(teacher(view), y)
                    bn = sum(bn_statistics_loss(seen[m], m) for m in bns)
                    tv, l2 = total_variation(view), view.pow(2).sum() / len(x)
                    loss = ce + bn_weight * bn + tv_weight * tv + l2_weight * l2
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    sums[step] += len(y) * torch.stack([t.detach().cpu() for t in (loss, ce, bn, tv, l2)])
                    queries += len(y)
                chunks.append(x.detach())
            x_all = torch.cat(chunks)
            with torch.no_grad():
                accuracy = float((teacher(x_all).argmax(1) == y_all).float().mean())
            queries += n
    finally:
        for hook in hooks:
            hook.remove()
    keys = ("loss", "ce", "bn", "tv", "l2")
    history = [{"step": s + 1, **{k: float(v) / n for k, v in zip(keys, row)}} for s, row in enumerate(sums)]
    return InversionResult(x_all, y_all, accuracy, history, queries, time.perf_counter() - start)


def transfer_set(x: torch.Tensor, test: Split, *, num_classes: int, name: str = "synthetic") -> Dataset:
    """A kdlib :class:`~kdlib.data.Dataset` whose training split is the inputs ``x``, all labeled
    :data:`~kdlib.data.UNLABELED` (they feed only distillation terms), evaluated on ``test``."""
    x = x.detach().to(test.device, torch.float32)
    y = torch.full((len(x),), UNLABELED, dtype=torch.int64, device=test.device)
    return Dataset(name, Split(x, y), test, num_classes)


def distill_on_synthetic(student: nn.Module, teacher: nn.Module, x: torch.Tensor, test: Split, *,
                         temperature: float = 4.0, **fit_kwargs: Any) -> FitResult:
    """Distil ``teacher`` into ``student`` on unlabeled inputs ``x`` (synthesized, or any real transfer set):
    :func:`kdlib.distill.distill` with ``alpha=1`` on :func:`transfer_set` ``(x, test)``; ``fit_kwargs`` go to
    :func:`~kdlib.train.fit` (epochs/steps, lr, seed, ...). Evaluates on ``test`` (a real split)."""
    with torch.no_grad(), eval_mode(teacher):
        classes = int(teacher(x[:2].to(module_device(teacher))).shape[1])
    data = transfer_set(x, test, num_classes=classes)
    return distill(student, teacher, data, temperature=temperature, alpha=1.0, **fit_kwargs)


class Generator(nn.Module):
    """DFAD's generator (Fang et al. 2019), shrunk: noise ``z`` ``(N, z_dim)`` → inputs ``(N, *input_shape)``.

    For images ``(C, H, W)``: a linear layer to a ``(128, H/4, W/4)`` map, two ×2 upsamplings each followed by
    a 3×3 conv (BatchNorm and LeakyReLU after the first), resized to ``H×W`` if needed. Any other shape: an
    MLP. The output ends in tanh and a BatchNorm without affine parameters, as DFAD's, so each channel has
    zero mean and unit variance over the batch: the scale of normalized inputs.
    """

    def __init__(self, input_shape: Sequence[int], z_dim: int = 64, width: int = 128) -> None:
        super().__init__()
        self.input_shape, self.z_dim = tuple(int(s) for s in input_shape), _check_positive("z_dim", z_dim)
        channels = self.input_shape[0]
        if len(self.input_shape) == 3:
            self.init = (math.ceil(self.input_shape[1] / 4), math.ceil(self.input_shape[2] / 4))
            self.fc = nn.Linear(z_dim, width * self.init[0] * self.init[1])
            self.body = nn.Sequential(
                nn.BatchNorm2d(width), nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1),
                nn.BatchNorm2d(width // 2), nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2),
                nn.Conv2d(width // 2, channels, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False))
        else:
            features = math.prod(self.input_shape)
            self.fc = nn.Linear(z_dim, width)
            self.body = nn.Sequential(nn.BatchNorm1d(width), nn.LeakyReLU(0.2), nn.Linear(width, features),
                                      nn.Tanh(), nn.BatchNorm1d(features, affine=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z)
        if len(self.input_shape) == 3:
            h = self.body(h.view(len(z), -1, *self.init))
            return F.interpolate(h, size=self.input_shape[1:]) if h.shape[2:] != self.input_shape[1:] else h
        return self.body(h).view(len(z), *self.input_shape)


@dataclass
class GeneratorResult:
    """What :func:`adversarial_distill` returns: the trained ``generator``; per step the ``history``
    (``generator_loss``: the discrepancy it reached, ``student_loss``: the last student step's; plus
    ``test_accuracy`` at evaluations); ``teacher_queries`` (= steps × batch_size × (1 + student_steps); the
    two-sample shape probe and evaluations not counted) and
    ``seconds``; ``final_accuracy`` on ``eval_data`` (NaN without it)."""

    generator: Generator
    history: list[dict[str, float]] = field(default_factory=list)
    teacher_queries: int = 0
    seconds: float = 0.0
    final_accuracy: float = math.nan


def adversarial_distill(
    student: nn.Module,
    teacher: nn.Module,
    *,
    steps: int,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 128,
    student_steps: int = 5,
    z_dim: int = 64,
    lr_student: float = 0.1,
    lr_generator: float = 1e-3,
    balance_weight: float = 0.0,
    seed: int = 0,
    eval_data: Split | Dataset | None = None,
    eval_every: int | None = None,
    device: DeviceLike = None,
) -> GeneratorResult:
    r"""Data-free adversarial distillation (Fang et al. 2019, DFAD; Micaelli & Storkey 2019 use KL and attention).

    A :class:`Generator` :math:`G` and the student :math:`S` play :math:`\min_S \max_G
    \mathbb E_z \|T(G(z)) - S(G(z))\|_1` (mean absolute logit difference). Each step: one generator step
    ascending the discrepancy on a fresh noise batch (gradients flow *through* the frozen teacher and student
    into :math:`G`), then ``student_steps`` student steps descending it on new generator samples. With
    ``balance_weight`` :math:`\beta > 0` the generator also maximizes :math:`\beta\, H(\bar p)`, the entropy of
    the teacher's class probabilities averaged over its batch (DAFL's information-entropy loss, Chen et al.
    2019), which pushes it to cover every class instead of the few where disagreement is easiest.

    Why not one :func:`kdlib.train.fit` call? ``fit`` draws batches from a fixed data set and minimizes one
    objective with one optimizer. Here the data are a function of :math:`G`, which changes at every step, and
    :math:`G` *maximizes* what the student minimizes: two optimizers, two alternating phases with opposite
    signs. So the game has this loop of its own, and the student is trained by plain SGD (momentum 0.9,
    weight decay 5e-4, cosine schedule, as DFAD) and Adam for :math:`G`.

    Args:
        student: trained in place (train mode during the run).
        teacher: frozen for the run; any classifier, no BatchNorm needed.
        steps: generator steps (rounds of the game).
        student_steps: student steps per generator step (DFAD: 5).
        balance_weight: :math:`\beta` of the class-balance term (0: plain DFAD; :math:`H` in nats, where DAFL's code
            uses base-10 logarithms, so its ``--ie 5`` on MNIST is :math:`\beta \approx 2.2` here).
        eval_data: a real :class:`~kdlib.data.Split` or :class:`~kdlib.data.Dataset` (test split) to report the
            student's accuracy on, every ``eval_every`` steps (default only at the end).
        seed: seeds the generator's weights and the noise; same seed, same run on the CPU.
    """
    steps, batch_size = _check_positive("steps", steps), _check_positive("batch_size", batch_size)
    student_steps = _check_positive("student_steps", student_steps)
    _check_weights(lr_student=lr_student, lr_generator=lr_generator, balance_weight=balance_weight)
    if eval_every is not None:
        _check_positive("eval_every", eval_every)
    dev = module_device(teacher) if device is None else resolve(device)
    teacher.to(dev)
    student.to(dev)
    shape, _ = _probe(teacher, input_shape, dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = Generator(shape, z_dim).to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    opt_s = torch.optim.SGD(student.parameters(), lr=lr_student, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr_generator)
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, steps * student_steps)
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, steps)

    history: list[dict[str, float]] = []
    start, queries = time.perf_counter(), 0
    with frozen(teacher):
        student.train()
        gen.train()
        for step in range(1, steps + 1):
            # generator phase: gradients flow through S and T into G; the student's are cleared before its own step
            x = gen(torch.randn(batch_size, z_dim, generator=g, device=dev))
            t = teacher(x)
            gap = (student(x) - t).abs().mean()
            mean_p = t.softmax(1).mean(0)
            gen_loss = -gap + balance_weight * (mean_p * mean_p.clamp_min(1e-12).log()).sum()  # -gap - beta H(p)
            opt_g.zero_grad(set_to_none=True)
            gen_loss.backward()
            opt_g.step()
            sched_g.step()
            for _ in range(student_steps):  # student phase: fresh samples, G fixed
                with torch.no_grad():
                    x = gen(torch.randn(batch_size, z_dim, generator=g, device=dev))
                    t = teacher(x)
                s_loss = (student(x) - t).abs().mean()
                opt_s.zero_grad(set_to_none=True)
                s_loss.backward()
                opt_s.step()
                sched_s.step()
            queries += batch_size * (1 + student_steps)
            record = {"step": step, "generator_loss": float(gap.detach()), "student_loss": float(s_loss.detach())}
            if eval_data is not None and (step == steps or (eval_every and step % eval_every == 0)):
                record["test_accuracy"] = evaluate(student, eval_data)["accuracy"]
                student.train()
            history.append(record)
    gen.eval()
    final = history[-1].get("test_accuracy", math.nan)
    return GeneratorResult(gen, history, queries, time.perf_counter() - start, final)
