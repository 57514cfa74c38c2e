"""Learnable prompts: unified (language + deep vision) and historical.

Temporal prompts are a single parameter on the model (m_tmp x Cv); PRTC
(prtc.py) carries them from layer to layer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos_edge.config import ModelConfig
from rvos_edge.model.layers import EncoderLayer


class PromptGenerator(nn.Module):
    """Prompt interaction: unified prompts U [m, Dp] -> one encoder layer -> P_e and P_v.

    Returns P_e [m_e, Wt] (language prompts, Wt = the text transformer's width,
    which DESIGN calls Ce: the two are equal in every CLIP) and P_v [Lv, m_v, Cv]
    (deep vision prompts, one group per vision layer).

    At inference the prompts are constants: `fold()` computes them once and
    stores them as (non-persistent) buffers that `forward` then returns; export
    therefore sees two constant tensors. Fold only a model you no longer train.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.vision_layers, self.vision_width = cfg.vision_layers, cfg.vision_width
        self.unified = nn.Parameter(0.02 * torch.randn(cfg.vision_prompts, cfg.prompt_width))
        self.encoder = EncoderLayer(cfg.prompt_width, cfg.prompt_heads, cfg.mlp_ratio)
        self.to_language = nn.Linear(cfg.prompt_width, cfg.text_width)
        self.to_vision = nn.Linear(cfg.prompt_width, cfg.vision_layers * cfg.vision_width)
        self.register_buffer("folded_language", None, persistent=False)
        self.register_buffer("folded_vision", None, persistent=False)

    def compute(self) -> tuple[Tensor, Tensor]:
        u = self.encoder(self.unified[None])[0]                                   # [m, Dp]
        p_e = self.to_language(u)                                                 # [m_e, Wt]
        p_v = self.to_vision(u).reshape(-1, self.vision_layers, self.vision_width)  # [m_v, Lv, Cv]
        return p_e, p_v.transpose(0, 1)                                           # P_v [Lv, m_v, Cv]

    def fold(self) -> None:
        with torch.no_grad():
            p_e, p_v = self.compute()
        self.folded_language, self.folded_vision = p_e, p_v

    def forward(self) -> tuple[Tensor, Tensor]:
        if self.folded_language is not None and self.folded_vision is not None:
            return self.folded_language, self.folded_vision
        return self.compute()


class HistoryPrompts(nn.Module):
    """Deep historical prompts: P_h^l = g * Linear_l(history) + (1 - g) * null_l, g = has_history.

    history [B, m_h, Ce], has_history [B, 1] (0 or 1) -> [Lv, B, m_h, Cv].
    With g = 0 the history is ignored exactly (0 * finite = 0).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(cfg.embed_dim, cfg.vision_width) for _ in range(cfg.vision_layers))
        self.null = nn.Parameter(0.02 * torch.randn(cfg.vision_layers, cfg.history_prompts, cfg.vision_width))

    def forward(self, history: Tensor, has_history: Tensor) -> Tensor:
        g = has_history[:, :, None]                                                # [B, 1, 1]
        return torch.stack([g * proj(history) + (1 - g) * self.null[l] for l, proj in enumerate(self.proj)])
