"""Cube-frame attention with PyTorch FlexAttention and a block mask (the benchmark baseline).

The mask_mod is DESIGN section 3 on flat indices; the block mask lets FlexAttention skip
the (query block, key block) pairs with no allowed key. On CUDA the call goes through
`torch.compile` (the fused kernel FlexAttention is meant to be used as); elsewhere it runs
eagerly, which materialises the scores and is only useful for checking the mask.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention

from rvos_edge.geometry import cube_offset, segment_lengths


@functools.lru_cache(maxsize=32)
def block_mask(n: int, h: int, w: int, cube: int, shift: int, device: str) -> BlockMask:
    """Block mask for N = Tc*H*W tokens (cached per geometry and device)."""
    hw, p, ncx = h * w, cube_offset(cube, shift), len(segment_lengths(w, cube, shift))

    def cube_id(i: Tensor) -> Tensor:
        return ((i % hw) // w + p) // cube * ncx + (i % w + p) // cube

    def mask_mod(b: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx // hw == kv_idx // hw) | (cube_id(q_idx) == cube_id(kv_idx))

    return create_block_mask(mask_mod, None, None, n, n, device=device)


@functools.cache
def compiled_flex():
    """`torch.compile`d flex_attention (one per process; recompiles per shape)."""
    return torch.compile(flex_attention, dynamic=False)


def flex_cube_frame_attention(q: Tensor, k: Tensor, v: Tensor, h: int, w: int, cube: int, shift: int,
                              scale: float) -> tuple[Tensor, Tensor]:
    """q, k, v [B, heads, Tc*H*W, d] -> (out like q, logsumexp [B, heads, Tc*H*W] fp32)."""
    mask = block_mask(q.shape[2], h, w, cube, shift, str(q.device))
    if q.is_cuda:
        out, aux = compiled_flex()(q, k, v, block_mask=mask, scale=scale, return_aux=AuxRequest(lse=True))
    else:
        with warnings.catch_warnings():     # "called without torch.compile": expected off CUDA
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out, aux = flex_attention(q, k, v, block_mask=mask, scale=scale, return_aux=AuxRequest(lse=True))
    return out, aux.lse.float()
