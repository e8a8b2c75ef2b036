"""Token-level layers of the context-prior fusion: cross-attention, MLP and their pre-norms.

Layer-norm epsilons follow the released Hermes-R: 1e-5 around cross-attention, 1e-4 before
the MLPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2. (..., in_dim) -> (..., out_dim); hidden width defaults to in_dim."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttention(nn.Module):
    """Multi-head attention of ``queries`` over ``context``.

    queries (B, Lq, C), context (B, Lk, C) -> (B, Lq, C). q and kv projections have no bias,
    the output projection has one.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.to_q(queries))
        k, v = (self._split_heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        b, h, length, d = attended.shape
        return self.to_out(attended.transpose(1, 2).reshape(b, length, h * d))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, inner = x.shape
        return x.view(b, length, self.heads, inner // self.heads).transpose(1, 2)


class NormedCrossAttention(nn.Module):
    """LayerNorm on both sides, then cross-attention (residual added by the caller)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fn = CrossAttention(dim, heads, head_dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm1(queries), self.norm2(context))


class NormedMlp(nn.Module):
    """LayerNorm(eps=1e-4) then a x4 MLP (residual added by the caller)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-4)
        self.fn = Mlp(dim, 4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))
