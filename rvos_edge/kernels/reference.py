"""Reference implementations and the geometry of cube-frame attention (DESIGN section 3).

Tokens live on a grid (t, y, x), t < Tc, y < H, x < W, flattened row-major. With cube
size Mw and shift s:  cube(y, x) = ((y - s) // Mw, (x - s) // Mw)  (floor division).
Query (t, y, x) attends key (t', y', x') iff  t' == t  or  cube(y', x') == cube(y, x).
Border cubes may be partial, nothing wraps around.

Everything here is plain PyTorch and builds the dense N x N mask: it is the ground truth the
other implementations are tested against, not something to run at scale.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rvos_edge.errors import UserError

MAX_MASK_BYTES = 256 * 2**20    # the reference refuses grids whose bool mask would exceed this


def cube_offset(cube: int, shift: int) -> int:
    """Rows/columns to pad at the top/left so cubes start on multiples of Mw.

    Padding by p = (Mw - s) % Mw gives (y + p) // Mw == (y - s) // Mw + (1 if s else 0):
    the same grouping as DESIGN's cube(y, x), with non-negative indices.
    """
    return (cube - shift) % cube


def segment_lengths(length: int, cube: int, shift: int) -> list[int]:
    """Sizes of the (possibly partial) cube segments along one axis of `length` cells."""
    first = cube_offset(cube, shift)
    n = -(-(length + first) // cube)
    return [min((i + 1) * cube, length + first) - max(i * cube, first) for i in range(n)]


def allowed_pairs(grid: tuple[int, int, int], cube: int, shift: int) -> int:
    """Number of (query, key) pairs cube-frame attention scores on a (Tc, H, W) grid.

    Every query sees its frame's H*W keys plus its cube's keys in the Tc-1 other frames, so
    pairs = Tc*(H*W)^2 + Tc*(Tc-1)*sum_cubes |cube|^2, and the sum over cubes factorises
    into (sum of squared row-segment lengths) * (sum of squared column-segment lengths).
    For H, W divisible by Mw and shift 0 this is Tc*HW*((Tc-1)*Mw^2 + HW).
    """
    tc, h, w = grid
    rows = sum(n * n for n in segment_lengths(h, cube, shift))
    cols = sum(n * n for n in segment_lengths(w, cube, shift))
    return tc * (h * w) ** 2 + tc * (tc - 1) * rows * cols


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
