"""A small decoder-only transformer language model: GPT-2's layout at laptop scale.

``forward(tokens)`` maps token ids ``(batch, length)`` to next-token logits ``(batch, length, vocabulary)``: position
``l`` sees tokens ``0..l`` only (causal self-attention). The layout is GPT-2's (Radford et al. 2019), as
minGPT/nanoGPT write it: learned token and position embeddings, pre-LayerNorm blocks of causal multi-head
self-attention (Vaswani et al. 2017) and a 4× MLP with GELU, a final LayerNorm, and an output layer that shares its
weights with the token embedding. Attention is :func:`torch.nn.functional.scaled_dot_product_attention`, which
picks a fused kernel where one exists. The model is small enough that a teacher trains in minutes on two CPU
cores; ``DecoderLM(vocabulary, width=..., layers=..., heads=...)`` sizes students and teachers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DecoderLM"]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``l`` attends to positions ``<= l``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(b, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, length, width))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attention(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecoderLM(nn.Module):
    """A GPT-style language model: token ids ``(N, L)`` → next-token logits ``(N, L, vocabulary)``.

    Feature layers: ``block0``, ``block1``, ... (the residual stream after each block, ``(N, L, width)``).

    Args:
        num_classes: the vocabulary size (the name every kdlib model uses for its output width).
        context: the longest sequence the position embedding covers.
        width: the embedding width (divisible by ``heads``).
        layers: the number of transformer blocks.
        heads: attention heads per block.
        dropout: dropout on attention weights and block outputs (0 for the small models of the book).
    """

    def __init__(self, num_classes: int = 64, context: int = 64, width: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("context", context), ("width", width), ("layers", layers),
                            ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.context, self.vocabulary = context, num_classes
        self.token = nn.Embedding(num_classes, width)
        self.position = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        for i in range(layers):
            self.add_module(f"block{i}", Block(width, heads, dropout))
        self.feature_layers = tuple(f"block{i}" for i in range(layers))
        self.ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes, bias=False)
        self.fc.weight = self.token.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(N, L, vocabulary)`` for token ids ``(N, L)``, ``L <= context``."""
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 ids of shape (batch, length), got {tuple(tokens.shape)} {tokens.dtype}")
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"a sequence of {length} tokens is longer than the context of {self.context}; crop it")
        positions = torch.arange(length, device=tokens.device)
        x = self.drop(self.token(tokens) + self.position(positions))
        for name in self.feature_layers:
            x = getattr(self, name)(x)
        return self.fc(self.ln(x))
