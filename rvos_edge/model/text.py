"""Text side: the prompted CLIP text encoder and the features it hands on."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rvos_edge.model.clip import CLIP, causal_mask
from rvos_edge.tokenizer import EOT_TOKEN  # the largest id: argmax finds it


def learnt_token_ids(clip: CLIP) -> list[int]:
    """Sorted ids of the token embedding's non-zero rows: the tokens the text encoder has learnt
    something about (the demo's CLIP zeroes every row outside the synthetic world's vocabulary)."""
    return torch.nonzero(clip.token_embedding.weight.detach().abs().sum(1) > 0)[:, 0].tolist()


class TextFeatures(NamedTuple):
    """What the text encoder gives the clip model, computed once per expression.

    feats:   F_e [B, 77, Ce]   every position, projected into CLIP's joint space
    mask:    bool [B, 77]      True for SOS .. EOS (language prompts included)
    global_: x_e [B, Ce]       F_e at the EOS position
    """
    feats: Tensor
    mask: Tensor
    global_: Tensor


def encode_prompted_text(clip: CLIP, tokens: Tensor, prompts: Tensor) -> TextFeatures:
    """CLIP's text transformer over [SOS, P_e, words ..., EOS], cut to the context length.

    tokens: int64 [B, 77], CLIP BPE ids (SOS ... EOS, then zeros).
    prompts: P_e [m_e, Wt].
    The sequence keeps the first 77 - m_e ids; if that cuts off EOS, the last kept
    id becomes EOS (the same truncation `tokenize_for_prompts` does, so tokens
    from plain `tokenize` are accepted too).
    """
    context = tokens.shape[1]
    m = prompts.shape[0]
    kept = tokens[:, :context - m]
    has_eos = (kept == EOT_TOKEN).any(dim=1)
    last = torch.where(has_eos, kept[:, -1], torch.full_like(kept[:, -1], EOT_TOKEN))
    kept = torch.cat([kept[:, :-1], last[:, None]], dim=1)                    # [B, 77 - m]
    eos = kept.argmax(dim=-1) + m                                             # EOS position after insertion
    x = clip.token_embedding(kept)
    x = torch.cat([x[:, :1], prompts.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    x = x + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, causal_mask(context, x.device)))
    feats = x @ clip.text_projection                                          # [B, 77, Ce]
    mask = torch.arange(context, device=tokens.device)[None, :] <= eos[:, None]
    global_ = feats.gather(1, eos[:, None, None].expand(-1, 1, feats.shape[-1]))[:, 0]
    return TextFeatures(feats, mask, global_)
