"""Generating from a language model and scoring it: sampling with temperature and top-k, perplexity, exact match.

Every function takes any ``nn.Module`` that maps token ids ``(batch, length)`` to next-token logits
``(batch, length, vocabulary)`` (:class:`kdlib.transformer.DecoderLM`, or your own).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.device import module_device
from kdlib.profile import latency_side_by_side

__all__ = ["exact_match", "generate", "perplexity", "tokens_per_second"]


def _context(model: nn.Module) -> int | None:
    return getattr(model, "context", None)


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Continue ``prompt`` ``(batch, length)`` by ``max_new_tokens`` tokens, one at a time; returns prompt and
    continuation, ``(batch, length + max_new_tokens)``.

    Each new token is drawn from :math:`\mathrm{softmax}(z / T)` over the ``top_k`` most likely tokens (all when
    ``None``); ``temperature=0`` takes the most likely token (greedy decoding). The model runs in eval mode (its
    mode is restored) on the last ``model.context`` tokens when it has a ``context``.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    was_training = model.training
    model.eval()
    tokens = prompt.to(module_device(model))
    context = _context(model)
    try:
        for _ in range(max_new_tokens):
            window = tokens if context is None else tokens[:, -context:]
            logits = model(window)[:, -1, :].float()
            if temperature == 0:
                chosen = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                chosen = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).to(tokens.device)
            tokens = torch.cat([tokens, chosen], dim=1)
    finally:
        model.train(was_training)
    return tokens


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
               batch_size: int = 64) -> float:
    r"""Perplexity :math:`\exp\big(-\frac{1}{|\mathcal{M}|}\sum_{(b,l) \in \mathcal{M}} \log q(x_{b,l+1} \mid
    x_{b,\le l})\big)` of ``tokens`` ``(batch, length)``: the exponentiated mean next-token cross-entropy over the
    predicted positions ``1..length-1`` that ``mask`` ``(batch, length)`` keeps (a target's own mask entry decides).
    """
    device = module_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        for start in range(0, tokens.shape[0], batch_size):
            chunk = tokens[start : start + batch_size].to(device)
            logits = model(chunk[:, :-1]).float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="none")
            keep = torch.ones_like(nll) if mask is None else mask[start : start + batch_size, 1:].reshape(-1).to(device).float()
            total += float((nll * keep).sum())
            count += float(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no position to score: the mask keeps no predicted token")
    return math.exp(total / count)


def exact_match(model: nn.Module, prompts: torch.Tensor, answers: torch.Tensor, *, batch_size: int = 256) -> float:
    """Share of prompts ``(batch, length)`` whose greedy continuation equals ``answers`` ``(batch, answer_length)``
    token for token: accuracy on tasks with one right answer (arithmetic, sorting)."""
    if prompts.shape[0] != answers.shape[0]:
        raise ValueError(f"{prompts.shape[0]} prompts but {answers.shape[0]} answers")
    correct = 0
    for start in range(0, prompts.shape[0], batch_size):
        out = generate(model, prompts[start : start + batch_size], answers.shape[1], temperature=0.0)
        got = out[:, prompts.shape[1] :].cpu()
        correct += int((got == answers[start : start + batch_size].cpu()).all(dim=1).sum())
    return correct / prompts.shape[0]


class _Writer(nn.Module):
    """``model`` as a module whose call writes ``new_tokens`` greedy tokens after its input (to time generation)."""

    def __init__(self, model: nn.Module, new_tokens: int) -> None:
        super().__init__()
        self.model, self.new_tokens = model, new_tokens

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return generate(self.model, prompt, self.new_tokens, temperature=0.0)


def tokens_per_second(models: Mapping[str, nn.Module], prompt: torch.Tensor, new_tokens: int = 64, *,
                      repeats: int = 5, warmup: int = 1, threads: int | None = None) -> dict[str, float]:
    """Generated tokens per second of each model: ``batch × new_tokens`` greedy tokens after ``prompt``
    ``(batch, length)``, divided by the median time of ``repeats`` calls, the models timed round-robin
    (:func:`kdlib.profile.latency_side_by_side`) so that their ratio holds on a busy machine."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    writers = {name: _Writer(model, new_tokens) for name, model in models.items()}
    times = latency_side_by_side(writers, prompt, warmup=warmup, repeats=repeats, threads=threads)
    return {name: prompt.shape[0] * new_tokens / (statistics.median(ms) / 1e3) for name, ms in times.items()}
