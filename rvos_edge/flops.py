"""Analytic FLOP count of VLP-RVOS, per module and per frame (`rvos-edge flops`).

    report = count_flops(get_config("vit-b16"))          # clip length 6, text over 100 frames
    report.gmacs_per_frame, report.gflops_per_frame
    print(report.markdown())

Convention (the one `torch.utils.flop_counter.FlopCounterMode` and fvcore use):
only matrix products are counted - linear layers, convolutions (transposed ones
included) and the two products of every attention (Q K^T and P V) - one
multiply-add (MAC) each; 1 MAC = 2 FLOPs. Biases, normalisation, softmax,
activations, interpolation, pooling and other element-wise work are not counted
(a few percent of the total for these models). Masked keys still count (the
kernels compute them), except in cube-frame attention, where only the allowed
(query, key) pairs are counted (the `rvos_edge.kernels` flop formula).

What is counted mirrors what the model computes (rvos_edge/model), at batch 1:
- text encoder: CLIP's text transformer over 77 tokens and its projection, once
  per expression, spread over a video of `video_frames` frames (default 100);
  the prompts are constants at inference (folded), so their generator is free;
- per clip of Tc frames, divided by Tc for the per-frame figure:
  vision backbone: patch embedding, every layer over cls + patches, ln_post @ proj
  (what the frozen CLIP ViT alone would cost at this image size);
  prompts: the cost the m_h + m_v + m_tmp prompt tokens add to every layer, and
  the history prompt projections;
  stage-1 MCA: T = Linear(F_e), every layer's text keys/values (once per clip),
  the cross-attention of all tokens to the 77 text tokens and its output projection;
  PRTC: the encoder and decoder passes after every layer but the last;
  VLFF, STR (CF-MSA listed separately as well) and the mask head.

This module does not import torch (`rvos-edge bench` on ONNX Runtime stays
torch-free); `flop_counter_flops` runs FlopCounterMode on the meta device for the
cross-check (on CPU tensors FlopCounterMode misses scaled_dot_product_attention:
its CPU flash kernel has no flop formula, while on meta it decomposes into bmm).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rvos_edge.config import ModelConfig
from rvos_edge.errors import UserError
from rvos_edge.geometry import allowed_pairs

VIDEO_FRAMES = 100        # the text encoder runs once per video of this many frames

# (key, label) of each row, in table order; "cf_msa" is part of "str", not added to the total.
ROWS = (
    ("text_encoder", "text encoder (once per video)"),
    ("vision_backbone", "vision backbone (CLIP ViT, cls + patches)"),
    ("prompts", "prompt tokens and history projections"),
    ("stage1_mca", "stage-1 MCA (text cross-attention)"),
    ("prtc", "PRTC"),
    ("vlff", "VLFF"),
    ("str", "STR"),
    ("cf_msa", "  of which CF-MSA (QK^T, PV)"),
    ("head", "mask head"),
)
PART_OF = {"cf_msa": "str"}


def _layer(tokens: int, width: int, hidden: int) -> int:
    """MACs of a pre-norm transformer layer over `tokens` tokens: QKV, Q K^T, P V, out, FFN."""
    return 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * hidden


def clip_macs(cfg: ModelConfig, clip_len: int) -> dict[str, int]:
    """MACs of one clip of `clip_len` frames at batch 1, per module (the keys of ROWS but the text encoder)."""
    t, cv, ce, c = clip_len, cfg.vision_width, cfg.embed_dim, cfg.str_width
    ctx, h = cfg.context_length, cfg.grid
    np_ = cfg.num_patches
    n0 = 1 + np_                                                       # cls + patches
    seq = n0 + cfg.history_prompts + cfg.vision_prompts + cfg.temporal_prompts
    layers = cfg.vision_layers
    m = {}
    m["vision_backbone"] = (t * np_ * 3 * cfg.patch_size ** 2 * cv                 # patch embedding
                            + layers * t * _layer(n0, cv, 4 * cv)
                            + t * n0 * cv * ce)                                      # ln_post @ proj
    m["prompts"] = (layers * t * (_layer(seq, cv, 4 * cv) - _layer(n0, cv, 4 * cv))
                    + layers * cfg.history_prompts * ce * cv)                       # P_h = Linear_l(history)
    m["stage1_mca"] = (ctx * ce * cv                                                # T = Linear(F_e)
                       + layers * (2 * ctx * cv * cv                                # text keys/values, once per clip
                                   + t * (2 * seq * ctx * cv + seq * cv * cv)))     # attention + out projection
    temporal = t * cfg.temporal_prompts
    m["prtc"] = (layers - 1) * (_layer(temporal, cv, 4 * cv)                        # encoder
                                + 2 * temporal * cv * cv                            # decoder q and out projections
                                + 2 * temporal * t * n0 * cv                        # cross-attention to cls + patches
                                + 2 * temporal * cv * 4 * cv)                       # decoder FFN
    m["vlff"] = t * (n0 * 2 * ce * ce + 2 * n0 * ce + 2 * ce * ce                   # V2L: kv, attention, q + out
                     + 2 * n0 * ce * ce + 2 * ctx * ce * ce + 2 * n0 * ctx * ce     # L2V: q + out, kv, attention
                     + np_ * (ce + 1) * c)                                          # fusion Linear
    tokens = t * np_
    hidden = int(c * cfg.mlp_ratio)
    cf = sum(2 * c * allowed_pairs((t, h, h), cfg.cube, 0 if i % 2 == 0 else cfg.cube // 2)
             for i in range(cfg.str_blocks))
    m["cf_msa"] = cf
    m["str"] = (tokens * len(cfg.skip_layers) * cv * c + ctx * ce * c              # G and the text projection
                + cf + cfg.str_blocks * (4 * tokens * c * c                         # CF-MSA qkv + out
                                         + 4 * tokens * c * hidden                  # two FFNs
                                         + 2 * tokens * c * c + 2 * ctx * c * c     # decoder q + out, text kv
                                         + 2 * tokens * ctx * c))                   # decoder attention
    ins, outs = (c, c, c // 2), (c, c // 2, c // 4)
    m["head"] = t * (h * h * c * c                                                 # stem 1x1
                     + h * h * cv * sum(ins)                                        # 1x1 adapters at h
                     + h * h * ins[1] ** 2 * 4 + h * h * ins[2] ** 2 * 16           # transposed-conv lifts
                     + sum((h * 2 ** i) ** 2 * 9 * ci * co for i, (ci, co) in enumerate(zip(ins, outs)))
                     + (4 * h) ** 2 * outs[-1])                                     # 1x1 to one channel
    return m


def text_macs(cfg: ModelConfig) -> int:
    """MACs of one text encoding (batch 1): the text transformer over 77 tokens and the projection of all 77."""
    n, w = cfg.context_length, cfg.text_width
    return cfg.text_layers * _layer(n, w, 4 * w) + n * w * cfg.embed_dim


@dataclass(frozen=True)
class FlopReport:
    """Per-module MACs of one clip (and of one text encoding), and their per-frame shares."""

    config: ModelConfig
    clip_len: int
    video_frames: int
    clip: dict[str, int] = field(repr=False)       # MACs per clip, batch 1
    text: int                                       # MACs per text encoding, batch 1

    def per_frame_macs(self) -> dict[str, float]:
        """MACs per frame of every row: clip modules / Tc, the text encoder / video_frames."""
        rows = {"text_encoder": self.text / self.video_frames}
        rows.update({k: v / self.clip_len for k, v in self.clip.items()})
        return {k: rows[k] for k, _ in ROWS}

    @property
    def macs_per_frame(self) -> float:
        return sum(v for k, v in self.per_frame_macs().items() if k not in PART_OF)

    @property
    def gmacs_per_frame(self) -> float:
        return self.macs_per_frame / 1e9

    @property
    def gflops_per_frame(self) -> float:
        return 2 * self.macs_per_frame / 1e9

    def to_dict(self) -> dict[str, Any]:
        per_frame = self.per_frame_macs()
        return {
            "model": self.config.name, "clip_len": self.clip_len, "video_frames": self.video_frames,
            "convention": "GMACs = multiply-adds of matrix products (linear, conv, attention QK^T and PV); "
                          "GFLOPs = 2 x GMACs; element-wise work not counted",
            "per_frame": {k: {"label": label.strip(), "gmacs": per_frame[k] / 1e9, "gflops": 2 * per_frame[k] / 1e9,
                              **({"part_of": PART_OF[k]} if k in PART_OF else {})} for k, label in ROWS},
            "total_per_frame": {"gmacs": self.gmacs_per_frame, "gflops": self.gflops_per_frame},
            "per_clip_macs": dict(self.clip), "text_encoding_macs": self.text,
        }

    def markdown(self) -> str:
        """The per-frame table: module, GMACs, GFLOPs, share of the total."""
        per_frame, total = self.per_frame_macs(), self.macs_per_frame
        lines = [f"| module ({self.config.name}, clip length {self.clip_len}) | GMACs/frame | GFLOPs/frame | share |",
                 "|---|---:|---:|---:|"]
        for key, label in ROWS:
            if key == "text_encoder":
                label = f"text encoder (once per {self.video_frames}-frame video)"
            v = per_frame[key]
            label = label.replace("  ", "&nbsp;&nbsp;")
            lines.append(f"| {label} | {v / 1e9:.3f} | {2 * v / 1e9:.3f} | {100 * v / total:.1f}% |")
        lines.append(f"| **total** | **{total / 1e9:.2f}** | **{2 * total / 1e9:.2f}** | 100% |")
        return "\n".join(lines)


def count_flops(cfg: ModelConfig, clip_len: int | None = None, video_frames: int = VIDEO_FRAMES) -> FlopReport:
    """The analytic count for `cfg` at `clip_len` frames per clip (default: the config's)."""
    clip_len = cfg.clip_len if clip_len is None else clip_len
    if clip_len < 1:
        raise UserError(f"clip length must be >= 1, got {clip_len}")
    if video_frames < 1:
        raise UserError(f"video frames must be >= 1, got {video_frames}")
    return FlopReport(cfg, clip_len, video_frames, clip_macs(cfg, clip_len), text_macs(cfg))


def flop_counter_flops(cfg: ModelConfig, clip_len: int | None = None) -> dict[str, int]:
    """FLOPs that torch's FlopCounterMode counts on the real model (batch 1, meta device, prompts folded).

    Returns {"text": one encode_text, "clip": one forward_clip, "vlff", "str", "head": the
    forward_clip share of those modules}. Nothing is allocated: meta tensors have shapes only.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rvos_edge.model.vlprvos import VLPRVOS

    clip_len = cfg.clip_len if clip_len is None else clip_len
    s = cfg.image_size
    with torch.device("meta"), torch.no_grad():
        model = VLPRVOS(cfg).eval().fold_prompts()
        with FlopCounterMode(display=False) as text_counter:
            text = model.encode_text(torch.zeros(1, cfg.context_length, dtype=torch.int64))
        with FlopCounterMode(display=False) as clip_counter:
            model.forward_clip(torch.zeros(1, clip_len, s, s, 3, dtype=torch.uint8), text,
                               torch.zeros(1, cfg.history_prompts, cfg.embed_dim), torch.zeros(1, 1))
    by_module = clip_counter.get_flop_counts()          # keyed by module class name (the root is not called)
    modules = {"vlff": "VLFeatureFusion", "str": "SpatialTemporalReasoner", "head": "MaskHead"}
    return {"text": text_counter.get_total_flops(), "clip": clip_counter.get_total_flops(),
            **{k: sum(by_module.get(name, {}).values()) for k, name in modules.items()}}


def cross_check(report: FlopReport) -> dict[str, dict[str, float]]:
    """{part: {"analytic": FLOPs, "flop_counter": FLOPs, "rel_diff": ...}} for text, clip, vlff, str, head."""
    measured = flop_counter_flops(report.config, report.clip_len)
    analytic = {"text": 2 * report.text,
                "clip": 2 * sum(v for k, v in report.clip.items() if k not in PART_OF),
                **{k: 2 * report.clip[k] for k in ("vlff", "str", "head")}}
    return {k: {"analytic": a, "flop_counter": measured[k], "rel_diff": abs(a - measured[k]) / max(measured[k], 1)}
            for k, a in analytic.items()}


def report_json(report: FlopReport, check: dict[str, dict[str, float]] | None = None) -> str:
    """The report (and the cross-check, when run) as indented JSON."""
    d = report.to_dict()
    if check is not None:
        d["flop_counter_check"] = check
    return json.dumps(d, indent=2) + "\n"
