"""Distilling sequence models: sequence-level KD on the teacher's outputs, and on-policy KD on the student's own.

Word-level KD (Kim & Rush 2016 §3.1; Hinton's KD at every position) needs no scheme: it is a
:class:`~kdlib.distiller.Distiller` with a :class:`~kdlib.terms.TokenTerm` of :func:`~kdlib.losses.token_forward_kl`.
The two schemes here change *which sequences* the student learns on:

* **Sequence-level KD** (Kim & Rush 2016 §3.2): replace each training answer by the teacher's own output for
  the same prompt (greedy decoding, Kim & Rush's beam of size 1, or sampling), then train the student with
  plain cross-entropy on those sequences (:func:`sequence_level_data`). The student imitates the teacher's
  mode rather than the spread of the data.
* **On-policy KD** (Agarwal et al. 2024, GKD; Gu et al. 2024, MiniLLM): the student writes the continuation of
  each prompt itself, by sampling, and the teacher scores every token the student wrote; the loss is a
  token-level divergence on those sequences (:func:`on_policy_distill`). With probability
  ``1 - on_policy_fraction`` a batch is the training data instead (GKD's mixture λ). Training on its own
  samples removes the mismatch between the prefixes the student sees in training (the data's) and when it
  generates (its own): exposure bias.

A prompt is what precedes the first position that has a target (``y != UNLABELED``), the same length in every
row, or ``prompt_length`` tokens where every position has a target (plain text).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from kdlib.data import UNLABELED, Batch, Dataset, Split
from kdlib.distiller import Distiller
from kdlib.generate import generate
from kdlib.losses import token_reverse_kl
from kdlib.sources import TensorSource, TensorStream, as_source
from kdlib.terms import TokenTerm
from kdlib.train import FitResult

__all__ = ["OnPolicySource", "continue_sequences", "on_policy_distill", "prompt_tokens", "sequence_level_data"]


def prompt_tokens(y: torch.Tensor, given: int | None = None) -> int:
    """Tokens of the prompt of sequences with targets ``y`` ``(N, L)``: the first target column + 1 (its input
    is the prompt's last token), or ``given``, checked to leave at least one token to write."""
    if y.dim() != 2:
        raise ValueError(f"sequence targets must have shape (batch, length), got {tuple(y.shape)}")
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= y.shape[1]:
            raise ValueError(f"prompt_length must be an int in [1, {y.shape[1]}], got {given!r}")
        return given
    labeled = y != UNLABELED
    if not bool(labeled[:, -1].all()):
        raise ValueError("every sequence must have a target at its last position to be continued")
    first = labeled.int().argmax(dim=1)
    if bool((first != first[0]).any()):
        raise ValueError("the prompts of a batch have different lengths; pass prompt_length= or group them")
    return int(first[0]) + 1


def continue_sequences(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, prompt_length: int | None = None,
                       temperature: float = 1.0, top_k: int | None = None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the sequences ``model`` writes after each prompt of ``(x, y)``, same shapes.

    The full sequence is ``x`` followed by the last target; its first ``P`` tokens (:func:`prompt_tokens`) are
    kept and the rest is generated (:func:`~kdlib.generate.generate`; ``temperature=0`` is greedy). The new
    targets are the written tokens; the prompt's positions stay :data:`~kdlib.data.UNLABELED`.
    """
    p = prompt_tokens(y, prompt_length)
    full = torch.cat([x, y[:, -1:]], dim=1)
    written = generate(model, full[:, :p], full.shape[1] - p, temperature=temperature, top_k=top_k,
                       generator=generator).to(x.device)
    new_y = written[:, 1:].clone()
    new_y[:, : p - 1] = UNLABELED
    return written[:, :-1], new_y


def sequence_level_data(teacher: nn.Module, data: Dataset, *, prompt_length: int | None = None,
                        temperature: float = 0.0, top_k: int | None = None, batch_size: int = 512,
                        max_samples: int | None = None, seed: int = 0) -> Dataset:
    """``data`` with every training sequence's continuation replaced by the teacher's (Kim & Rush 2016).

    Train a student on the result with :func:`~kdlib.train.fit` (cross-entropy): sequence-level KD. Greedy
    decoding (``temperature=0``) by default, the beam of size 1 of Kim & Rush; a temperature samples instead
    (plain text, where greedy decoding repeats itself). ``max_samples`` keeps only the first training sequences
    (generation costs one teacher pass per written token). The test split is unchanged.
    """
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    generator = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for start in range(0, min(len(data.train), max_samples or len(data.train)), batch_size):
        stop = min(start + batch_size, max_samples or len(data.train))
        x, y = data.train.x[start:stop], data.train.y[start:stop]
        new_x, new_y = continue_sequences(teacher, x, y, prompt_length=prompt_length, temperature=temperature,
                                          top_k=top_k, generator=generator)
        xs.append(new_x)
        ys.append(new_y)
    train = replace(data.train, x=torch.cat(xs), y=torch.cat(ys))
    return replace(data, name=f"{data.name} (teacher outputs)", train=train, augment=None)


class _OnPolicyStream:
    """The training batches of ``stream``, each rewritten by the student with probability ``on_policy_fraction``."""

    def __init__(self, stream: TensorStream, policy: OnPolicySource, seed: int) -> None:
        self.stream, self.policy = stream, policy
        self.generator = torch.Generator().manual_seed(seed + 7919 * (stream.rank + 1))

    def next(self) -> Batch:
        batch = self.stream.next()
        p = self.policy
        if float(torch.rand((), generator=self.generator)) >= p.on_policy_fraction:
            return batch
        x, y = continue_sequences(p.student, batch.x, batch.y, prompt_length=p.prompt_length,
                                  temperature=p.temperature, top_k=p.top_k, generator=self.generator)
        return Batch(x, y, batch.index)

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "policy": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        self.generator.set_state(state["policy"])


class OnPolicySource(TensorSource):
    """A kdlib Dataset whose training batches the ``student`` rewrites as it trains (on-policy data).

    Each batch keeps its prompts; with probability ``on_policy_fraction`` the student, in its current state,
    samples the rest (``temperature``, ``top_k``). The inputs change at every step, so a teacher reading them
    runs live (the source reports augmentation, which rules out a teacher cache). Evaluation reads the data.
    """

    def __init__(self, data: Dataset, student: nn.Module, *, on_policy_fraction: float = 1.0,
                 temperature: float = 1.0, top_k: int | None = None, prompt_length: int | None = None,
                 eval_split: Split | None = None) -> None:
        if not 0.0 <= on_policy_fraction <= 1.0:
            raise ValueError(f"on_policy_fraction must lie in [0, 1], got {on_policy_fraction!r}")
        if temperature <= 0:
            raise ValueError(f"on-policy samples need a temperature > 0, got {temperature!r}")
        if not isinstance(data, Dataset) or data.train.y.dim() != 2:
            raise TypeError("on-policy distillation needs a kdlib Dataset of token sequences (targets (N, L))")
        prompt_tokens(data.train.y[:64], prompt_length)  # fails now, not at the first step
        super().__init__(data, eval_split if eval_split is not None else data.test)
        self.student, self.on_policy_fraction = student, float(on_policy_fraction)
        self.temperature, self.top_k, self.prompt_length = float(temperature), top_k, prompt_length
        self.augments = True

    def to(self, device: torch.device) -> OnPolicySource:
        return OnPolicySource(self.data.to(device), self.student, on_policy_fraction=self.on_policy_fraction,
                              temperature=self.temperature, top_k=self.top_k, prompt_length=self.prompt_length,
                              eval_split=self.eval_split.to(device))

    def stream(self, batch_size: int, generator: torch.Generator, seed: int) -> _OnPolicyStream:
        return _OnPolicyStream(super().stream(batch_size, generator, seed), self, seed)

    def check_static(self) -> None:
        raise ValueError("on-policy inputs are written by the student at every step: the teacher cannot be cached")

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "on_policy": [self.on_policy_fraction, self.temperature, self.top_k,
                                                       self.prompt_length]}


def on_policy_distill(student: nn.Module, teacher: nn.Module, data: Dataset, *,
                      loss_fn: Callable[..., torch.Tensor] = token_reverse_kl, on_policy_fraction: float = 1.0,
                      temperature: float = 1.0, top_k: int | None = None, prompt_length: int | None = None,
                      loss_kwargs: dict[str, Any] | None = None, eval_data: Split | None = None,
                      **fit_kwargs: Any) -> FitResult:
    """On-policy distillation (GKD, Agarwal et al. 2024): the student samples, the teacher scores its samples.

    At each step, with probability ``on_policy_fraction`` (GKD's λ), the student continues the batch's prompts
    by sampling at ``temperature``; the loss is ``loss_fn(student_logits, teacher_logits, mask)`` on the
    written tokens: reverse KL by default, the divergence MiniLLM minimizes, here token by token on the
    student's samples as GKD does (MiniLLM's sequence-level policy-gradient estimator is not implemented);
    :func:`~kdlib.losses.token_generalized_jsd` for GKD's JSD(β). Otherwise the batch is the data's, with the
    same loss on its target positions. There is no cross-entropy: the student's own samples are not labels.
    Gradients do not flow through the sampling (as in GKD). Training arguments go to :func:`~kdlib.train.fit` (``steps``, ``lr``, ``seed``, ...).
    """
    if "ce_weight" in fit_kwargs:
        raise TypeError("on-policy distillation trains without cross-entropy; use a Distiller to add one")
    source = OnPolicySource(data, student, on_policy_fraction=on_policy_fraction, temperature=temperature,
                            top_k=top_k, prompt_length=prompt_length, eval_split=eval_data)
    term = TokenTerm(loss_fn, name="on_policy", **(loss_kwargs or {}))
    distiller = Distiller(student, teacher, [term], ce_weight=0.0, cache_teacher=False)
    result = distiller.fit(as_source(source), **fit_kwargs)
    result.config.update(on_policy_fraction=on_policy_fraction, temperature=temperature, top_k=top_k)
    return result
