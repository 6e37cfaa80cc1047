"""The decoder-only language model and generation: shapes, causality, weight tying, clear errors; greedy and
sampled decoding, top-k, perplexity against its formula, exact match."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.generate import exact_match, generate, perplexity, tokens_per_second
from kdlib.transformer import DecoderLM

V = 11


def lm(**kw) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(V, context=12, width=16, layers=2, heads=2, **kw)


def test_shapes_feature_layers_and_tied_weights():
    model = lm()
    tokens = torch.randint(0, V, (3, 7))
    assert model(tokens).shape == (3, 7, V)
    assert model.fc.weight is model.token.weight
    assert model.feature_layers == ("block0", "block1")
    # parameters: embeddings, 2 blocks, final LayerNorm (the output layer is the token embedding)
    per_block = 2 * 2 * 16 + (16 * 48 + 48) + (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16)
    assert sum(p.numel() for p in model.parameters()) == V * 16 + 12 * 16 + 2 * per_block + 2 * 16


def test_a_position_never_sees_later_tokens():
    model = lm()
    tokens = torch.randint(0, V, (2, 9))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % V
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_bad_inputs_and_settings_give_one_clear_error():
    model = lm()
    with pytest.raises(ValueError, match="longer than the context of 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="int64 ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="divisible by heads"):
        DecoderLM(V, width=10, heads=4)
    with pytest.raises(ValueError, match="layers must be a positive int"):
        DecoderLM(V, layers=0)


class Copier(nn.Module):
    """Predicts, at every position, the token two places back: a 'model' whose answers are known."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        previous = torch.roll(tokens, 1, dims=1)  # the logits at l predict token l + 1 = token l - 1
        return F.one_hot(previous, V).float() * 20.0


def test_greedy_generation_and_exact_match():
    prompts = torch.tensor([[1, 2, 1, 2], [3, 4, 3, 4]])
    out = generate(Copier(), prompts, 3, temperature=0.0)
    assert out.tolist() == [[1, 2, 1, 2, 1, 2, 1], [3, 4, 3, 4, 3, 4, 3]]
    answers = torch.tensor([[1, 2, 1], [3, 4, 4]])
    assert exact_match(Copier(), prompts, answers) == 0.5


def test_sampling_respects_top_k_and_temperature():
    model = lm()
    prompt = torch.randint(0, V, (64, 3))
    g = torch.Generator().manual_seed(0)
    out = generate(model, prompt, 1, top_k=1, generator=g)
    torch.testing.assert_close(out, generate(model, prompt, 1, temperature=0.0))  # top-1 sampling is greedy
    wide = generate(model, prompt, 1, temperature=5.0, generator=torch.Generator().manual_seed(1))[:, -1]
    assert len(set(wide.tolist())) > 1
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 1, temperature=-1.0)
    assert model.training  # the mode is restored


def test_perplexity_equals_its_formula_and_masks():
    model = lm()
    tokens = torch.randint(0, V, (4, 8))
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[:, :3] = False  # the prompt is not scored
    with torch.no_grad():
        logits = model(tokens[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none").view(4, 7)
    assert perplexity(model, tokens) == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    assert perplexity(model, tokens, mask, batch_size=3) == pytest.approx(math.exp(float(nll[:, 2:].mean())), rel=1e-5)
    assert perplexity(Copier(), torch.tensor([[1, 2, 1, 2, 1]])) == pytest.approx(1.0, abs=1e-6)


def test_tokens_per_second_counts_every_generated_token():
    torch.manual_seed(0)
    small, large = DecoderLM(20, context=32, width=16, layers=1), DecoderLM(20, context=32, width=64, layers=3)
    speed = tokens_per_second({"small": small, "large": large}, torch.randint(0, 20, (4, 8)), 8, repeats=3)
    assert set(speed) == {"small", "large"} and all(v > 0 for v in speed.values())
    with pytest.raises(ValueError, match="new_tokens"):
        tokens_per_second({"small": small}, torch.randint(0, 20, (4, 8)), 0)
