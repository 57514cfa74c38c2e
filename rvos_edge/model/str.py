"""Spatial-temporal reasoner (STR): N blocks of CF-MSA encoder + text-guided decoder layers."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos_edge.config import ModelConfig
from rvos_edge.kernels import cube_frame_attention
from rvos_edge.model.layers import Attention, FeedForward
from rvos_edge.model.text import TextFeatures


def sine_position_3d(frames: int | torch.SymInt, height: int, width: int, channels: int,
                     device: torch.device | None = None) -> Tensor:
    """Fixed 3D sine position embedding [Tc, H, W, C].

    The channels are split into t | y | x parts: y and x get 2*(C//6) channels each,
    t the rest (all even). Each part is [sin(p*f_0), cos(p*f_0), sin(p*f_1), ...] with
    frequencies f_i = 10000^(-2i/n) and raw integer positions p, so the embedding of
    frame t does not depend on the clip length.
    """
    n_yx = 2 * (channels // 6)
    parts = []
    for size, n, axis in ((frames, channels - 2 * n_yx, 0), (height, n_yx, 1), (width, n_yx, 2)):
        freq = 10000.0 ** (-torch.arange(0, n, 2, device=device, dtype=torch.float32) / n)    # [n/2]
        angle = torch.arange(size, device=device, dtype=torch.float32)[:, None] * freq          # [size, n/2]
        emb = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)                        # [size, n]
        shape = [1, 1, 1, n]
        shape[axis] = -1
        parts.append(emb.reshape(shape).expand(frames, height, width, n))
    return torch.cat(parts, dim=-1)


class ReasonerBlock(nn.Module):
    """(a) pre-norm CF-MSA encoder layer; (b) decoder layer q = LN(x) + G attending to the text.

    x [B, Tc*H*W, C] in (t, y, x) order, guide G [B, Tc*H*W, C], text_kv [B, 77, C].
    """

    def __init__(self, cfg: ModelConfig, shift: int) -> None:
        super().__init__()
        c, heads = cfg.str_width, cfg.str_heads
        self.cube, self.shift = cfg.cube, shift
        self.norm1, self.attn = nn.LayerNorm(c), Attention(c, heads)
        self.norm2, self.ffn1 = nn.LayerNorm(c), FeedForward(c, cfg.mlp_ratio)
        self.norm3, self.cross = nn.LayerNorm(c), Attention(c, heads)
        self.norm4, self.ffn2 = nn.LayerNorm(c), FeedForward(c, cfg.mlp_ratio)

    def forward(self, x: Tensor, guide: Tensor, text_kv: Tensor, text_mask: Tensor,
                grid: tuple, impl: str) -> Tensor:
        q, k, v = self.attn.qkv(self.norm1(x))
        x = x + self.attn.merge(cube_frame_attention(q, k, v, grid=grid, cube=self.cube, shift=self.shift, impl=impl))
        x = x + self.ffn1(self.norm2(x))
        x = x + self.cross.cross(self.norm3(x) + guide, text_kv, text_mask)
        return x + self.ffn2(self.norm4(x))


class SpatialTemporalReasoner(nn.Module):
    """F_f [B, Tc, H, W, C] + shallow features + text -> [B, Tc, H, W, C].

    Blocks alternate shift 0 and Mw//2. G = Linear(3*Cv -> C)(shallow features)
    and the text keys/values Linear(Ce -> C)(F_e) are computed once and shared by all blocks.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.guide = nn.Linear(len(cfg.skip_layers) * cfg.vision_width, cfg.str_width)
        self.text_proj = nn.Linear(cfg.embed_dim, cfg.str_width)
        self.blocks = nn.ModuleList(
            ReasonerBlock(cfg, shift=0 if i % 2 == 0 else cfg.cube // 2) for i in range(cfg.str_blocks))

    def forward(self, fused: Tensor, shallow: list[Tensor], text: TextFeatures, impl: str = "auto") -> Tensor:
        """fused [B, Tc, H, W, C]; shallow: 3 x [B*Tc, H*W, Cv] -> [B, Tc, H, W, C]."""
        b, tc, h, w, c = fused.shape
        x = (fused + sine_position_3d(tc, h, w, c, fused.device)).reshape(b, -1, c)
        guide = self.guide(torch.cat(shallow, dim=-1)).reshape(b, -1, c)
        text_kv = self.text_proj(text.feats)
        for block in self.blocks:
            x = block(x, guide, text_kv, text.mask, (tc, h, w), impl)
        return x.reshape(b, tc, h, w, c)
