"""Public entry points: `cube_frame_attention` and `prtc_cross_attention`.

Eager calls go through the custom ops `rvos_edge::cube_frame_attention` and
`rvos_edge::prtc_cross_attention` (each returning (out, logsumexp)) for every impl, with
  - `register_fake`: shapes for torch.compile / FakeTensor;
  - `register_autograd`: the backward is the custom op `..._backward`, which runs the
    fused Triton backward for impl "triton", the dense formula for "reference" and the
    standard-op decomposed formula otherwise (flex included);
  - `register_flop_formula`: FlopCounterMode counts 4*B*heads*d FLOPs per allowed
    (query, key) pair (Q K^T and P V, one multiply-add = 2 FLOPs), whatever the impl
    does internally, and twice that for the backward (dQ, dK, dV and dP).

While exporting (`torch.compiler.is_exporting()`, true inside torch.export and hence inside
`torch.onnx.export(..., dynamo=True)`) or jit tracing (the deprecated `dynamo=False`
exporter, which still exists in torch 2.13), no custom op is recorded: the standard-op
decomposed function (CF-MSA) and a MatMul-Softmax-MatMul (PRTC) are traced inline,
whatever the impl (they all compute the same function), so the ONNX graph holds only
standard ops and Tc stays symbolic. The one exception is impl "plugin" (CF-MSA only). The recipe, as in tests/test_kernels_export.py:

    batch = torch.export.Dim("batch", min=1, max=64)
    frames = torch.export.Dim("frames", min=1, max=64)
    tokens = {0: batch, 2: frames * (H * W)}           # the token axis is Tc*H*W: a derived dim
    torch.onnx.export(module.eval(), (q, k, v, p), "attention.onnx", dynamo=True, opset_version=20,
                      input_names=["q", "k", "v", "p"], output_names=["out", "prtc"],
                      dynamic_shapes={"q": tokens, "k": tokens, "v": tokens, "p": {0: batch, 2: frames * M_TMP}})

For a whole model, declare `frames` on the frames input's axis 1 ({1: frames}) and pass
grid=(x.shape[1], H, W); the token axes derive from it. Impl "plugin" keeps each CF-MSA
as the custom op instead, which the exporter maps to one node through
`custom_translation_table` (rvos_edge.export.plugin_graph).
"""
from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from rvos_edge.errors import UserError
from rvos_edge.geometry import allowed_pairs
from rvos_edge.kernels.decomposed import decomposed_attention, decomposed_attention_backward
from rvos_edge.kernels.reference import cube_frame_mask, default_scale, masked_attention, masked_attention_backward

IMPLS = ("auto", "reference", "decomposed", "triton", "flex", "plugin")
ENV_VAR = "RVOS_EDGE_ATTENTION"     # overrides what impl "auto" means


def triton_available() -> bool:
    """True when the triton package is installed (it is a dev extra)."""
    return importlib.util.find_spec("triton") is not None


def flex_available() -> bool:
    """True when this torch has FlexAttention with `AuxRequest` (torch >= 2.9)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete impl that `impl` means for tensors on `device`.

    "auto" is $RVOS_EDGE_ATTENTION if set, else "triton" on CUDA (when triton is installed)
    and "decomposed" elsewhere. "triton" off CUDA needs TRITON_INTERPRET=1 (the interpreter).
    """
    if impl not in IMPLS:
        raise UserError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto" and os.environ.get(ENV_VAR):
        impl = os.environ[ENV_VAR]
        if impl not in IMPLS:
            raise UserError(f"{ENV_VAR}={impl!r} is not an attention impl; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "decomposed"
    if impl == "plugin":                 # an export choice (see cube_frame_attention); eagerly it is decomposed
        return "decomposed"
    if impl == "flex" and not flex_available():
        raise UserError(f"attention impl 'flex' needs FlexAttention with AuxRequest (torch >= 2.9; have {torch.__version__})")
    if impl == "triton" and not triton_available():
        raise UserError("attention impl 'triton' needs the triton package (pip install 'rvos-edge[dev]')")
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError(f"attention impl 'triton' needs CUDA tensors (got {device.type}; "
                        "TRITON_INTERPRET=1 runs the kernels on the CPU interpreter)")
    return impl


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


# ---------------------------------------------------------------- cube-frame attention

@torch.library.custom_op("rvos_edge::cube_frame_attention", mutates_args=())
def _cube_frame_op(q: Tensor, k: Tensor, v: Tensor, height: int, width: int, cube: int, shift: int,
                   scale: float, impl: str) -> tuple[Tensor, Tensor]:
    """(out [B, heads, N, d], logsumexp [B, heads, N] fp32) with a concrete impl."""
    if impl == "triton":
        from rvos_edge.kernels import triton_cube_frame
        return triton_cube_frame.forward(q, k, v, height, width, cube, shift, scale)
    if impl == "flex":
        from rvos_edge.kernels.flex import flex_cube_frame_attention
        # detached: the backward is this op's own (FlexAttention refuses grad-requiring CPU inputs)
        return flex_cube_frame_attention(q.detach(), k.detach(), v.detach(), height, width, cube, shift, scale)
    if impl == "reference":
        grid = (q.shape[2] // (height * width), height, width)
        return masked_attention(q, k, v, cube_frame_mask(grid, cube, shift, q.device), scale)
    return decomposed_attention(q, k, v, height, width, cube, shift, scale, with_lse=True)


@_cube_frame_op.register_fake
def _(q, k, v, height, width, cube, shift, scale, impl):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("rvos_edge::cube_frame_attention_backward", mutates_args=())
def _cube_frame_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                            height: int, width: int, cube: int, shift: int, scale: float,
                            impl: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) for the forward's (out, lse)."""
    if impl == "triton":
        from rvos_edge.kernels import triton_cube_frame
        return triton_cube_frame.backward(grad, q, k, v, out, lse, height, width, cube, shift, scale)
    if impl == "reference":
        grid = (q.shape[2] // (height * width), height, width)
        return masked_attention_backward(grad, q, k, v, out, lse, cube_frame_mask(grid, cube, shift, q.device), scale)
    return decomposed_attention_backward(grad, q, k, v, out, height, width, cube, shift, scale)


@_cube_frame_backward_op.register_fake
def _(grad, q, k, v, out, lse, height, width, cube, shift, scale, impl):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _cube_frame_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3], *output)
    ctx.params = inputs[3:]
    ctx.mark_non_differentiable(output[1])


def _cube_frame_grad(ctx, grad: Tensor, _grad_lse: Tensor | None):
    dq, dk, dv = _cube_frame_backward_op(grad, *ctx.saved_tensors, *ctx.params)
    return (dq, dk, dv) + (None,) * len(ctx.params)


_cube_frame_op.register_autograd(_cube_frame_grad, setup_context=_cube_frame_setup)


def _cube_frame_pairs(q_shape, height: int, width: int, cube: int, shift: int) -> int:
    b, heads, n, d = q_shape
    return b * heads * d * allowed_pairs((n // (height * width), height, width), cube, shift)


@register_flop_formula(torch.ops.rvos_edge.cube_frame_attention)
def _cube_frame_flops(q_shape, k_shape, v_shape, height, width, cube, shift, *args, **kwargs) -> int:
    return 4 * _cube_frame_pairs(q_shape, height, width, cube, shift)


@register_flop_formula(torch.ops.rvos_edge.cube_frame_attention_backward)
def _cube_frame_backward_flops(grad_shape, q_shape, k_shape, v_shape, o_shape, lse_shape, height, width,
                               cube, shift, *args, **kwargs) -> int:
    return 8 * _cube_frame_pairs(q_shape, height, width, cube, shift)


def cube_frame_attention(q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int, int], cube: int, shift: int = 0,
                         impl: str = "auto", scale: float | None = None) -> Tensor:
    """Cube-frame multi-head self-attention (DESIGN section 3).

    q, k, v: [B, heads, Tc*H*W, d], tokens in (t, y, x) row-major order; grid = (Tc, H, W)
    (Tc may be symbolic while exporting); cube = Mw; shift = 0 or Mw//2.
    Query (t, y, x) attends key (t', y', x') iff t' == t or cube(y', x') == cube(y, x),
    cube(y, x) = ((y - shift) // Mw, (x - shift) // Mw). Scale defaults to 1/sqrt(d).
    impl: "reference" (dense mask; refuses masks over 256 MiB), "decomposed" (standard
    ops), "triton" (fused kernels), "flex" (FlexAttention), "auto" (see `resolve_impl`) or
    "plugin" (while exporting, the custom op is recorded, so the ONNX graph keeps each CF-MSA
    as one node for TensorRT's plugin; run eagerly, it is "decomposed").
    Returns [B, heads, Tc*H*W, d] in q's dtype.
    """
    tc, h, w = grid
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise UserError(f"cube_frame_attention needs q, k, v of one shape [B, heads, N, d]; "
                        f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype or not q.is_floating_point():
        raise UserError(f"cube_frame_attention needs q, k, v of one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if min(h, w, cube) < 1 or shift not in (0, cube // 2):
        raise UserError(f"cube_frame_attention needs H, W, cube >= 1 and shift 0 or cube//2; "
                        f"got grid {tuple(grid)}, cube {cube}, shift {shift}")
    if q.shape[2] != tc * h * w:
        raise UserError(f"cube_frame_attention: {q.shape[2]} tokens do not fill the grid {tuple(grid)}")
    scale = default_scale(q, scale)
    if _exporting():
        if impl not in IMPLS:
            raise UserError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
        if impl == "plugin":             # recorded as the custom op: one CubeFrameAttention node (TensorRT plugin)
            return _cube_frame_op(q, k, v, h, w, cube, shift, scale, "decomposed")[0]
        return decomposed_attention(q, k, v, h, w, cube, shift, scale)[0]
    return _cube_frame_op(q, k, v, h, w, cube, shift, scale, resolve_impl(impl, q.device))[0]


# ---------------------------------------------------------------- PRTC cross-attention

@torch.library.custom_op("rvos_edge::prtc_cross_attention", mutates_args=())
def _prtc_op(q: Tensor, k: Tensor, v: Tensor, scale: float, impl: str) -> tuple[Tensor, Tensor]:
    """(out [B, heads, Nq, d], logsumexp [B, heads, Nq] fp32); impl "triton" or "reference"."""
    if impl == "triton":
        from rvos_edge.kernels import triton_prtc
        return triton_prtc.forward(q, k, v, scale)
    return masked_attention(q, k, v, None, scale)


@_prtc_op.register_fake
def _(q, k, v, scale, impl):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("rvos_edge::prtc_cross_attention_backward", mutates_args=())
def _prtc_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                      scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), standard ops (the keys are few enough that P fits easily)."""
    return masked_attention_backward(grad, q, k, v, out, lse, None, scale)


@_prtc_backward_op.register_fake
def _(grad, q, k, v, out, lse, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _prtc_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3], *output)
    ctx.scale = inputs[3]
    ctx.mark_non_differentiable(output[1])


def _prtc_grad(ctx, grad: Tensor, _grad_lse: Tensor | None):
    return *_prtc_backward_op(grad, *ctx.saved_tensors, ctx.scale), None, None


_prtc_op.register_autograd(_prtc_grad, setup_context=_prtc_setup)


@register_flop_formula(torch.ops.rvos_edge.prtc_cross_attention)
def _prtc_flops(q_shape, k_shape, *args, **kwargs) -> int:
    b, heads, nq, d = q_shape
    return 4 * b * heads * d * nq * k_shape[2]


@register_flop_formula(torch.ops.rvos_edge.prtc_cross_attention_backward)
def _prtc_backward_flops(grad_shape, q_shape, k_shape, *args, **kwargs) -> int:
    b, heads, nq, d = q_shape
    return 8 * b * heads * d * nq * k_shape[2]


def prtc_cross_attention(q: Tensor, k: Tensor, v: Tensor, impl: str = "auto", scale: float | None = None) -> Tensor:
    """Plain softmax cross-attention for PRTC: few queries over many keys.

    q [B, heads, Nq, d] (Nq = Tc*m_tmp), k/v [B, heads, Nk, d] (Nk = Tc*(1+Np)) -> [B, heads, Nq, d].
    impl takes the same names as `cube_frame_attention`: "triton" is the split-K kernel,
    every other concrete impl is the standard-op softmax attention, "auto" resolves as there.
    """
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise UserError(f"prtc_cross_attention needs q [B, heads, Nq, d] and k, v [B, heads, Nk, d]; "
                        f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype or not q.is_floating_point():
        raise UserError(f"prtc_cross_attention needs q, k, v of one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    scale = default_scale(q, scale)
    if _exporting():
        if impl not in IMPLS:
            raise UserError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
        return (torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1).to(v.dtype)) @ v
    impl = "triton" if resolve_impl(impl, q.device) == "triton" else "reference"
    return _prtc_op(q, k, v, scale, impl)[0]
