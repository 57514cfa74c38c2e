"""VLP-RVOS: a frozen CLIP adapted by prompts, PRTC, VLFF, an STR and a mask head.

    model = VLPRVOS(get_config("tiny"))
    text = model.encode_text(tokens)                      # tokens int64 [B, 77]
    logits, history = model.forward_clip(frames, text, history, has_history)
    # frames uint8 [B, Tc, S, S, 3] RGB -> logits [B, Tc, 4h, 4w], history [B, m_h, Ce]

Any B >= 1 and any Tc >= 1 run with the same weights. Notation follows DESIGN.md
section 2; the vision loop below is the heart of it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_edge.config import ModelConfig
from rvos_edge.model.clip import CLIP, CLIP_MEAN, CLIP_STD, CLIPArch, ResidualAttentionBlock
from rvos_edge.model.head import MaskHead
from rvos_edge.model.layers import attend, repeat_per_frame
from rvos_edge.model.prompts import HistoryPrompts, PromptGenerator
from rvos_edge.model.prtc import temporal_capture
from rvos_edge.model.str import SpatialTemporalReasoner
from rvos_edge.model.text import TextFeatures, encode_prompted_text
from rvos_edge.model.vlff import VLFeatureFusion


def clip_arch(cfg: ModelConfig) -> CLIPArch:
    return CLIPArch(
        image_size=cfg.image_size, patch_size=cfg.patch_size,
        vision_width=cfg.vision_width, vision_layers=cfg.vision_layers, vision_heads=cfg.vision_heads,
        embed_dim=cfg.embed_dim, context_length=cfg.context_length, vocab_size=cfg.vocab_size,
        text_width=cfg.text_width, text_layers=cfg.text_layers, text_heads=cfg.text_heads)


def reference_guided_layer(block: ResidualAttentionBlock, x: Tensor, text: Tensor, text_mask: Tensor,
                           frames: int | torch.SymInt, patches: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stage-1 layer: F~ = F + MSA(LN1 F) + MCA(LN1 F, LN1 T); F' = F~ + FFN(LN2 F~).

    The MCA reuses the layer's own attention weights. x [B*Tc, L, Cv] (one frame
    per row), text T [B, 77, Cv] and text_mask [B, 77], shared by the Tc frames.
    Returns F' and the keys/values of the first 1 + Np tokens ([B*Tc, heads, 1+Np, d]),
    which PRTC reuses.
    """
    q, k, v = block.attn.qkv(block.ln_1(x))
    tk, tv = (repeat_per_frame(t, frames) for t in block.attn.kv(block.ln_1(text)))
    mca = attend(q, tk, tv, key_mask=repeat_per_frame(text_mask, frames))
    x = x + block.attn.merge(attend(q, k, v)) + block.attn.merge(mca)
    x = x + block.mlp(block.ln_2(x))
    return x, k[:, :, :1 + patches], v[:, :, :1 + patches]


class VLPRVOS(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.attention_impl = "auto"   # CF-MSA / PRTC kernels: see rvos_edge.kernels
        self.clip = CLIP(clip_arch(config))
        self.clip.requires_grad_(False)
        self.prompts = PromptGenerator(config)
        self.history_prompts = HistoryPrompts(config) if config.use_history else None
        self.temporal_prompts = (nn.Parameter(0.02 * torch.randn(config.temporal_prompts, config.vision_width))
                                 if config.use_temporal_prompts else None)
        self.text_to_vision = nn.Linear(config.embed_dim, config.vision_width)   # T = Linear(F_e)
        self.vlff = VLFeatureFusion(config)
        self.reasoner = SpatialTemporalReasoner(config)
        self.head = MaskHead(config)
        self.register_buffer("pixel_mean", 255 * torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("pixel_std", 255 * torch.tensor(CLIP_STD), persistent=False)

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """{module: {"learnable": n, "frozen": n}} for CLIP's two towers and each learnable part."""
        groups: dict[str, dict[str, int]] = {}
        for name, p in self.named_parameters():
            top = name.split(".")[0]
            if top == "clip":
                top = "clip.visual" if name.startswith("clip.visual.") else "clip.text"
            counts = groups.setdefault(top, {"learnable": 0, "frozen": 0})
            counts["learnable" if p.requires_grad else "frozen"] += p.numel()
        return groups

    def fold_prompts(self) -> "VLPRVOS":
        """Turn the prompt interaction into constants (inference and export)."""
        self.prompts.fold()
        return self

    def encode_text(self, tokens: Tensor) -> TextFeatures:
        """tokens int64 [B, 77] -> TextFeatures(feats [B, 77, Ce], mask bool [B, 77], global_ [B, Ce])."""
        language, _ = self.prompts()
        return encode_prompted_text(self.clip, tokens, language)

    def encode_frames(self, frames: Tensor, text: TextFeatures, history: Tensor,
                      has_history: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The prompted vision encoder.

        frames uint8 [B, Tc, S, S, 3] -> F_v [B, Tc, 1+Np, Ce] and the shallow
        features, 3 x [B*Tc, Np, Cv] (patch tokens after the skip layers).
        Per frame, layer l sees [cls, patches, P_h^l, P_v^l, P_tmp^{t,l}]
        (P_h and P_tmp absent in the ablations that switch them off).
        """
        cfg, visual = self.config, self.clip.visual
        b, tc = frames.shape[:2]
        np_ = cfg.num_patches
        x = (frames.float() - self.pixel_mean) / self.pixel_std                  # CLIP normalisation in-graph
        tokens = visual.embed(x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2))    # [B*Tc, 1+Np, Cv]
        _, vision_prompts = self.prompts()                                        # [Lv, m_v, Cv]
        text_tokens = self.text_to_vision(text.feats)                             # T: [B, 77, Cv]
        n = tokens.shape[0]
        history_prompts = (self.history_prompts(history, has_history)             # [Lv, B, m_h, Cv]
                           if self.history_prompts is not None else None)
        temporal = (self.temporal_prompts.expand(n, -1, -1)                       # P_tmp at layer 1
                    if self.temporal_prompts is not None else None)
        shallow = []
        for l, block in enumerate(visual.transformer.resblocks):
            parts = [tokens, vision_prompts[l].expand(n, -1, -1)]
            if history_prompts is not None:
                parts.insert(1, repeat_per_frame(history_prompts[l], tc))
            if temporal is not None:
                parts.append(temporal)
            seq, keys, values = reference_guided_layer(block, torch.cat(parts, dim=1), text_tokens, text.mask, tc, np_)
            tokens = seq[:, :1 + np_]                                             # prompt outputs dropped ...
            if l in cfg.skip_layers:
                shallow.append(tokens[:, 1:])
            if temporal is not None and l + 1 < cfg.vision_layers:               # ... except the temporal ones
                temporal = temporal_capture(block, seq[:, -cfg.temporal_prompts:], keys, values, b,
                                            self.attention_impl)
        visual_feats = visual.ln_post(tokens) @ visual.proj                       # F_v: CLIP's own projection
        return visual_feats.reshape(b, tc, 1 + np_, -1), shallow

    def forward_clip(self, frames: Tensor, text: TextFeatures, history: Tensor,
                     has_history: Tensor) -> tuple[Tensor, Tensor]:
        """One clip.

        frames uint8 [B, Tc, S, S, 3] RGB; text from encode_text; history [B, m_h, Ce];
        has_history [B, 1] (1.0 when history holds earlier clips, else 0.0)
        -> mask_logits [B, Tc, 4h, 4w], history_out [B, m_h, Ce].
        """
        cfg = self.config
        b, tc = frames.shape[:2]
        h = cfg.grid
        visual, shallow = self.encode_frames(frames, text, history, has_history)
        fused = self.vlff(visual, text)                                            # [B, Tc, h, w, C]
        reasoned = self.reasoner(fused, shallow, text, self.attention_impl)
        grid_features = [s.transpose(1, 2).reshape(-1, cfg.vision_width, h, h) for s in shallow]
        logits = self.head(reasoned.reshape(-1, h, h, cfg.str_width).permute(0, 3, 1, 2), grid_features)
        logits = logits.reshape(b, tc, 4 * h, 4 * h)
        return logits, self.update_history(logits, visual, history)

    def update_history(self, logits: Tensor, visual: Tensor, history: Tensor) -> Tensor:
        """FIFO of pooled target vectors: last m_h rows of [history; h_1 .. h_Tc].

        h_t = sum_x p_t(x) F_v^t(x) / (sum_x p_t(x) + 1e-6) over patches x, with
        p = sigmoid(logits) average-pooled to the patch grid.
        """
        b, tc = logits.shape[:2]
        p = F.avg_pool2d(torch.sigmoid(logits).reshape(-1, 1, *logits.shape[2:]), 4)   # [B*Tc, 1, h, w]
        p = p.reshape(b, tc, -1, 1)                                                     # [B, Tc, Np, 1]
        pooled = (p * visual[:, :, 1:]).sum(2) / (p.sum(2) + 1e-6)                     # [B, Tc, Ce]
        return torch.cat([history, pooled], dim=1)[:, -self.config.history_prompts:]

    def forward(self, frames: Tensor, tokens: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """encode_text + forward_clip. history None means the first clip (zeros, has_history = 0)."""
        b = frames.shape[0]
        if history is None:
            history = frames.new_zeros((b, self.config.history_prompts, self.config.embed_dim), dtype=torch.float32)
            has_history = frames.new_zeros((b, 1), dtype=torch.float32)
        else:
            has_history = frames.new_ones((b, 1), dtype=torch.float32)
        return self.forward_clip(frames, self.encode_text(tokens), history, has_history)
