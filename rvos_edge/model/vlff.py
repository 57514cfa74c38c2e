"""Vision-language feature fusion (VLFF): F_v, F_e -> fused features F_f."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_edge.config import ModelConfig
from rvos_edge.model.layers import Attention, repeat_per_frame
from rvos_edge.model.text import TextFeatures


class VLFeatureFusion(nn.Module):
    """V2L, L2V and similarity fusion, per frame.

    V2L:  x_e^t  = x_e + alpha * MCA(q=x_e, kv=F_v^t)          (alpha [Ce], init 1e-4)
    L2V:  F_v'^t = F_v^t + MCA(q=F_v^t, kv=F_e, text_mask)
    s^t = cosine(F_v'^t patches, x_e^t)                          [Np]
    F_f = Linear(concat(F_v'^t patches, s^t)) -> C channels     [B, Tc, h, w, C]
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.grid = cfg.grid
        self.v2l = Attention(cfg.embed_dim, cfg.fusion_heads)
        self.alpha = nn.Parameter(torch.full((cfg.embed_dim,), 1e-4))
        self.l2v = Attention(cfg.embed_dim, cfg.fusion_heads)
        self.fuse = nn.Linear(cfg.embed_dim + 1, cfg.str_width)

    def forward(self, visual: Tensor, text: TextFeatures) -> Tensor:
        """visual: F_v [B, Tc, 1+Np, Ce] -> F_f [B, Tc, h, w, C]."""
        b, tc, n, ce = visual.shape
        fv = visual.reshape(-1, n, ce)                                              # [B*Tc, 1+Np, Ce]
        x_e = repeat_per_frame(text.global_[:, None], tc)                          # [B*Tc, 1, Ce]
        x_e = x_e + self.alpha * self.v2l.cross(x_e, fv)
        fv = fv + self.l2v.cross(fv, repeat_per_frame(text.feats, tc), repeat_per_frame(text.mask, tc))
        patches = fv[:, 1:]                                                         # [B*Tc, Np, Ce]
        s = (F.normalize(patches, dim=-1) * F.normalize(x_e, dim=-1)).sum(-1, keepdim=True)  # [B*Tc, Np, 1]
        fused = self.fuse(torch.cat([patches, s], dim=-1))                          # [B*Tc, Np, C]
        return fused.reshape(b, tc, self.grid, self.grid, -1)
