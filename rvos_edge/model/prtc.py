"""Parameter-Reusing Temporal Capture (PRTC): temporal prompts from layer l to l+1.

PRTC has no parameters of its own. After vision layer l it
  1. encodes: runs layer l, as an ordinary pre-norm layer, over the temporal
     outputs of all Tc frames together (self-attention across frames);
  2. decodes: runs layer l again with its self-attention replaced by
     cross-attention, queries from the encoded temporal tokens and keys/values
     that layer l already computed for the cls + patch tokens of all frames
     (reused, not re-projected), then layer l's FFN.
The output is P_tmp for layer l + 1.
"""
from __future__ import annotations

from torch import Tensor

from rvos_edge.kernels import prtc_cross_attention
from rvos_edge.model.clip import ResidualAttentionBlock


def temporal_capture(block: ResidualAttentionBlock, temporal: Tensor, keys: Tensor, values: Tensor,
                     batch: int, impl: str = "auto") -> Tensor:
    """One PRTC step.

    block: the frozen vision layer l.
    temporal: its outputs at the temporal-prompt positions, [B*Tc, m_tmp, Cv].
    keys, values: the keys/values layer l computed for cls + patches, [B*Tc, heads, 1+Np, d].
    Returns the temporal prompts of layer l + 1, [B*Tc, m_tmp, Cv].
    """
    bt, m, c = temporal.shape
    x = block(temporal.reshape(batch, -1, c))                                   # encoder: [B, Tc*m, Cv]
    heads, n, d = keys.shape[1:]
    k = keys.reshape(batch, -1, heads, n, d).transpose(1, 2).reshape(batch, heads, -1, d)   # [B, h, Tc*(1+Np), d]
    v = values.reshape(batch, -1, heads, n, d).transpose(1, 2).reshape(batch, heads, -1, d)
    q = block.attn.q(block.ln_1(x))                                             # [B, h, Tc*m, d]
    x = x + block.attn.merge(prtc_cross_attention(q, k, v, impl=impl))          # decoder: cross-attention
    x = x + block.mlp(block.ln_2(x))
    return x.reshape(bt, m, c)
