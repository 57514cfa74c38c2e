"""The CubeFrameAttention plugin's kernel: the fused Triton CF-MSA forward in TensorRT's calling convention.

    geo = Geometry(height=4, width=4, cube=2, shift=1, head_dim=32, scale=32 ** -0.5, dtype="fp32")
    launch(q, k, v, out, lse, geo)              # just in time: on torch CUDA tensors (TRT's buffers)
    kernel = compile_ptx(geo)                   # ahead of time: PTX, launch geometry, shared memory

`cube_frame_plugin_kernel` runs `_cf_fwd` of `rvos_edge.kernels.triton_cube_frame`
(the kernel the PyTorch model uses, DESIGN section 3) with its parameters in the
order TensorRT passes them to an ahead-of-time plugin kernel: the input pointers
(q, k, v), the extra integer arguments (Tc), then the output pointers (out, lse).
The softmax scale is a compile-time constant, since TensorRT's extra arguments
are integers only. Tensors are contiguous [B, heads, Tc*H*W, d]; the launch grid
is (Tc * tiles per frame, B * heads).

Triton appends hidden pointer parameters to every kernel it compiles (Triton 3.9:
a global-scratch and a profile-scratch pointer, which its own launcher fills);
TensorRT does not pass them, so `compile_ptx` removes them from the PTX entry,
which is safe exactly when the kernel needs no scratch memory and never reads them
(checked). Written against Triton 3.9 (``ASTSource(fn, signature, constexprs)``).
Importing this module imports torch and triton.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from rvos_edge.kernels.triton_cube_frame import LOG2E, _cf_fwd, _config

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TRT_PARAMS = 6          # q, k, v, Tc, out, lse


@triton.jit
def cube_frame_plugin_kernel(Q, K, V, Tc, O, LSE, QK_SCALE: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                             MW: tl.constexpr, P0: tl.constexpr, NCX: tl.constexpr, NC: tl.constexpr,
                             N_SUB: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    _cf_fwd(Q, K, V, O, LSE, Tc, QK_SCALE, H, W, MW, P0, NCX, NC, N_SUB, D, BLOCK_D, BLOCK_M, BLOCK_N, PREC)


@dataclass(frozen=True)
class Geometry:
    """What the compiled kernel is specialised for: grid (H, W), cube Mw, shift, head dim, scale, dtype."""

    height: int
    width: int
    cube: int
    shift: int
    head_dim: int
    scale: float
    dtype: str = "fp32"

    def config(self) -> tuple[int, dict, int]:
        """(query tiles per frame, compile-time constants, num_warps)."""
        tiles, meta = _config(self.height, self.width, self.cube, self.shift, self.head_dim, DTYPES[self.dtype])
        meta = dict(meta)
        warps = meta.pop("num_warps")
        return tiles, {"QK_SCALE": self.scale * LOG2E.value, **meta}, warps


def launch(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, geo: Geometry) -> None:
    """Write CF-MSA of q, k, v [B, heads, Tc*H*W, d] (contiguous) into out (like q) and lse [B, heads, N] fp32."""
    b, heads, n, _ = q.shape
    tiles, meta, warps = geo.config()
    tc = n // (geo.height * geo.width)
    cube_frame_plugin_kernel[(tc * tiles, b * heads)](q, k, v, tc, out, lse, num_warps=warps, **meta)


@dataclass(frozen=True)
class CompiledKernel:
    """An ahead-of-time compiled kernel: entry name, PTX, tiles per frame, threads per block, shared memory bytes."""

    name: str
    ptx: str
    tiles: int
    threads: int
    shared: int


def compile_ptx(geo: Geometry, target: object | None = None) -> CompiledKernel:
    """Compile the plugin kernel for `geo` to PTX (target: a triton GPUTarget; None: the current GPU)."""
    from triton.compiler import ASTSource

    tiles, meta, warps = geo.config()
    ptr = f"*{geo.dtype}"
    signature = {"Q": ptr, "K": ptr, "V": ptr, "Tc": "i32", "O": ptr, "LSE": "*fp32",
                 **{name: "constexpr" for name in meta}}
    compiled = triton.compile(ASTSource(fn=cube_frame_plugin_kernel, signature=signature, constexprs=meta),
                              target=target, options={"num_warps": warps})
    md = compiled.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise RuntimeError("the CubeFrameAttention kernel needs Triton scratch memory, which TensorRT plugins "
                           "cannot provide")
    ptx = strip_trailing_params(compiled.asm["ptx"], md.name, TRT_PARAMS)
    return CompiledKernel(md.name, ptx, tiles, md.num_warps * 32, md.shared)


def entry_params(ptx: str, name: str) -> list[str]:
    """The parameter declarations of the PTX entry `name`."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise RuntimeError(f"no PTX entry {name}")
    return [p.strip() for p in m[1].split(",") if p.strip()]


def strip_trailing_params(ptx: str, name: str, keep: int) -> str:
    """`ptx` with the entry `name` cut to its first `keep` parameters; the others must be unused."""
    params = entry_params(ptx, name)
    for p in params[keep:]:
        pname = p.split()[-1]
        if len(re.findall(rf"\b{re.escape(pname)}\b", ptx)) != 1:
            raise RuntimeError(f"PTX parameter {pname} of {name} is used, it cannot be dropped")
    m = re.search(rf"(\.entry\s+{re.escape(name)}\s*\()(.*?)(\))", ptx, re.S)
    kept = ",\n".join(f"\t{p}" for p in params[:keep])
    return ptx[:m.start(2)] + f"\n{kept}\n" + ptx[m.end(2):]
