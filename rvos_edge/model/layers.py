"""Building blocks shared by CLIP and the learnable parts of VLP-RVOS.

`Attention` keeps OpenAI CLIP's (and nn.MultiheadAttention's) parameter layout
(`in_proj_weight` [3C, C], `in_proj_bias` [3C], `out_proj`), and exposes the
pieces VLP-RVOS reuses: projecting queries, keys and values separately, and
merging heads through the output projection. Every attention in the project
(CLIP's own, the stage-1 and PRTC reuses, VLFF, the STR, the prompt encoder) is
this one class, so there is one way to attend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
           attn_mask: Tensor | None = None) -> Tensor:
    """Softmax attention. q [B, h, Nq, d], k/v [B, h, Nk, d] -> [B, h, Nq, d].

    key_mask: bool [B, Nk], True where a key takes part (e.g. text_mask).
    attn_mask: additive float [Nq, Nk] (e.g. CLIP's causal mask).
    """
    if key_mask is not None:
        attn_mask = key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class Attention(nn.Module):
    """Multi-head attention of width C with `heads` heads (d = C / heads)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, x: Tensor, part: int, count: int = 1) -> Tensor:
        """Rows [part*C, (part+count)*C) of the input projection applied to x [B, N, C]."""
        c = x.shape[-1]
        w = self.in_proj_weight[part * c:(part + count) * c]
        b = self.in_proj_bias[part * c:(part + count) * c]
        return F.linear(x, w, b)

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, h, N, d]."""
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, N, C] -> q, k, v, each [B, h, N, d]."""
        q, k, v = self._project(x, 0, 3).chunk(3, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def q(self, x: Tensor) -> Tensor:
        """Queries only: x [B, N, C] -> [B, h, N, d]."""
        return self.split_heads(self._project(x, 0))

    def kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values only: x [B, N, C] -> k, v [B, h, N, d]."""
        k, v = self._project(x, 1, 2).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def merge(self, o: Tensor) -> Tensor:
        """[B, h, N, d] -> out_proj of the concatenated heads: [B, N, C]."""
        b, h, n, d = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Self-attention: x [B, N, C] -> [B, N, C]."""
        return self.merge(attend(*self.qkv(x), attn_mask=attn_mask))

    def cross(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Cross-attention: queries from x [B, Nq, C], keys/values from context [B, Nk, C] -> [B, Nq, C]."""
        return self.merge(attend(self.q(x), *self.kv(context), key_mask=key_mask))


class FeedForward(nn.Sequential):
    """Linear(C -> ratio*C), GELU, Linear(ratio*C -> C): [..., C] -> [..., C]."""

    def __init__(self, width: int, ratio: float) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + MSA(LN x), then x + FFN(LN x). x [B, N, C]."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = FeedForward(width, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def repeat_per_frame(x: Tensor, frames: int | torch.SymInt) -> Tensor:
    """[B, ...] -> [B*Tc, ...]: each batch item repeated for its Tc frames (frame-major within an item)."""
    return x[:, None].expand(x.shape[0], frames, *x.shape[1:]).reshape(-1, *x.shape[1:])
