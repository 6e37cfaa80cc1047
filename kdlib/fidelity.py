"""Fidelity: how closely a student imitates its teacher, on training and on test inputs, during training.

Accuracy says whether a student is right; fidelity says whether it does what its teacher does. Stanton et al.
(2021, "Does Knowledge Distillation Really Work?") separate the two and measure fidelity by top-1 agreement and
by the KL divergence from teacher to student,

.. math::

    \\mathrm{KL}(p_t \\,\\|\\, p_s) = \\frac{1}{N}\\sum_n \\sum_c p_t(c \\mid x_n)\\,
        \\big(\\log p_t(c \\mid x_n) - \\log p_s(c \\mid x_n)\\big) \\quad (T = 1),

on the inputs the student was trained on and on held-out ones. Low fidelity on the *training* inputs means the
student failed to fit its targets (an optimization problem: more steps, another learning rate); high training
fidelity with low test fidelity means it fitted them without generalizing the teacher's function (a data
problem: more or augmented inputs). :class:`Fidelity` is a :data:`~kdlib.train.Monitor` that
:func:`~kdlib.distill.distill` and :class:`~kdlib.distiller.Distiller` attach to every run, so the history
records both at every evaluation; :func:`kdlib.plot.fidelity` draws them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdlib.sources import as_source
from kdlib.train import predict

__all__ = ["Fidelity", "fidelity_monitor", "kl_teacher_student"]

#: Samples of each split that :func:`fidelity_monitor` uses by default: enough for a KL to ~1e-3, cheap to run.
DEFAULT_SAMPLES = 1000


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over samples of :math:`\\mathrm{KL}(p_t \\| p_s)` at :math:`T = 1`, in nats (a 0-dim tensor)."""
    log_p_t = torch.log_softmax(teacher_logits.float(), dim=-1)  # (N, C), or (N, L, V): every position counts
    log_p_s = torch.log_softmax(student_logits.float(), dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


class Fidelity:
    """Top-1 agreement and :math:`\\mathrm{KL}(p_t \\| p_s)` between a model and a teacher on fixed inputs.

    The teacher's logits are computed once, at construction (eval mode, no gradients), so each call costs one
    forward pass of the model over the inputs. Calling it returns, for every named input set ``name``,
    ``fidelity/<name>_agreement`` (a share in [0, 1]) and ``fidelity/<name>_kl`` (nats).

    Args:
        teacher: the frozen reference model.
        inputs: name → input tensor, e.g. ``{"train": x_train, "test": x_test}``.
        batch_size: evaluation batch size.
    """

    def __init__(self, teacher: nn.Module, inputs: Mapping[str, torch.Tensor], *, batch_size: int = 1024) -> None:
        if not inputs:
            raise ValueError("Fidelity needs at least one named input set, e.g. {'test': data.test.inputs}")
        self.inputs = dict(inputs)
        self.batch_size = batch_size
        self.teacher_logits = {name: predict(teacher, x, batch_size=batch_size) for name, x in self.inputs.items()}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        out = {}
        for name, x in self.inputs.items():
            s = predict(model, x, batch_size=self.batch_size)
            t = self.teacher_logits[name].to(s.device)
            out[f"fidelity/{name}_agreement"] = float((s.argmax(-1) == t.argmax(-1)).float().mean())
            out[f"fidelity/{name}_kl"] = float(kl_teacher_student(s, t))
        return out


def fidelity_monitor(teacher: nn.Module, data: Any, *, samples: int = DEFAULT_SAMPLES) -> Fidelity:
    """A :class:`Fidelity` on the first ``samples`` training inputs (un-augmented) and test inputs of ``data``.

    ``data``: anything :func:`~kdlib.train.fit` takes. For torch data the inputs are a seeded random sample, as the
    dataset's transform gives them; without evaluation data only the training inputs are measured.

    A transfer set appended with :func:`~kdlib.data.with_unlabeled` comes after the labeled samples, so the
    training inputs measured are labeled ones unless ``samples`` exceeds their number.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    source = as_source(data)
    inputs = {"train": source.sample(samples)[0]}
    if source.has_eval():
        inputs["test"] = source.sample(samples, train=False)[0]
    return Fidelity(teacher, inputs)
