"""Cube-frame attention (CF-MSA) and PRTC cross-attention kernels.

    from rvos_edge.kernels import cube_frame_attention, prtc_cross_attention
    out = cube_frame_attention(q, k, v, grid=(Tc, H, W), cube=Mw, shift=s, impl="auto")

Implementations (`IMPLS`): "reference" (dense mask, tests only), "decomposed" (standard ops,
exports to ONNX with a dynamic Tc), "triton" (fused kernels, CUDA or TRITON_INTERPRET=1),
"flex" (FlexAttention baseline) and "auto" (triton on CUDA, decomposed elsewhere;
$RVOS_EDGE_ATTENTION overrides it). Semantics: DESIGN section 3 and `reference`.
Export and FLOP counting: see `rvos_edge.kernels.attention`.

Importing this package imports torch but not triton (a dev extra, loaded on first use).
"""
from rvos_edge.geometry import allowed_pairs
from rvos_edge.kernels.attention import (
                                         ENV_VAR,
                                         IMPLS,
                                         cube_frame_attention,
                                         prtc_cross_attention,
                                         resolve_impl,
                                         triton_available,
)
from rvos_edge.kernels.reference import cube_frame_mask

__all__ = ["ENV_VAR", "IMPLS", "allowed_pairs", "cube_frame_attention", "cube_frame_mask",
           "prtc_cross_attention", "resolve_impl", "triton_available"]
