"""Reference implementations and the geometry of cube-frame attention (DESIGN section 3).

Tokens live on a grid (t, y, x), t < Tc, y < H, x < W, flattened row-major. With cube
size Mw and shift s:  cube(y, x) = ((y - s) // Mw, (x - s) // Mw)  (floor division).
Query (t, y, x) attends key (t', y', x') iff  t' == t  or  cube(y', x') == cube(y, x).
Border cubes may be partial, nothing wraps around.

Everything here is plain PyTorch and builds the dense N x N mask: it is the ground truth the
other implementations are tested against, not something to run at scale. The cube geometry
itself (offsets, segment lengths, pair counts) is torch-free, in rvos_edge.geometry.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rvos_edge.errors import UserError
from rvos_edge.geometry import cube_offset, segment_lengths

MAX_MASK_BYTES = 256 * 2**20    # the reference refuses grids whose bool mask would exceed this


def cube_frame_mask(grid: tuple[int, int, int], cube: int, shift: int,
                    device: torch.device | str | None = None, max_bytes: int = MAX_MASK_BYTES) -> Tensor:
    """Dense boolean mask [N, N], N = Tc*H*W: True where query (row) may attend key (column)."""
    tc, h, w = grid
    n = tc * h * w
    if n * n > max_bytes:
        raise UserError(f"cube-frame mask for grid {tuple(grid)} needs {n * n / 2**20:.0f} MiB "
                        f"(limit {max_bytes / 2**20:.0f} MiB); use impl 'decomposed' or 'triton'")
    idx = torch.arange(n, device=device)
    t, y, x = idx // (h * w), idx // w % h, idx % w
    p = cube_offset(cube, shift)
    c = (y + p) // cube * len(segment_lengths(w, cube, shift)) + (x + p) // cube    # cube id
    return (t[:, None] == t[None, :]) | (c[:, None] == c[None, :])


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale, masked) v computed in fp32.

    q [..., Nq, d], k/v [..., Nk, d], mask bool [Nq, Nk] or None.
    Returns (out [..., Nq, d] in q's dtype, logsumexp [..., Nq] fp32).
    """
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ v.float()
    return out.to(q.dtype), lse


def masked_attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `masked_attention` w.r.t. q, k, v (shapes as q, k, v), in fp32 then cast.

    With P = exp(S - lse):  dV = P^T dO,  dS = P * (dO V^T - rowsum(dO * O)),
    dQ = dS K * scale,  dK = dS^T Q * scale.
    """
    g, qf, kf, vf = grad.float(), q.float(), k.float(), v.float()
    s = (qf @ kf.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.exp(s - lse[..., None])
    delta = (g * out.float()).sum(-1, keepdim=True)
    ds = p * (g @ vf.transpose(-1, -2) - delta) * scale
    return ((ds @ kf).to(q.dtype), (ds.transpose(-1, -2) @ qf).to(k.dtype),
            (p.transpose(-1, -2) @ g).to(v.dtype))


def default_scale(q: Tensor, scale: float | None) -> float:
    """1/sqrt(head_dim) unless given."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
