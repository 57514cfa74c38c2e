"""Fused Triton kernels for cube-frame attention (forward and backward).

Tiling: one program per (batch*head, query tile), where a query tile is (a sub-block of) one
cube of one frame. All queries of a tile then share the same key set:
  1. the H*W keys of their frame t, in blocks of BLOCK_N;
  2. the same cube's keys in the Tc-1 other frames, one cube tile at a time.
The forward keeps an online softmax (running max m, running sum l, fp32 accumulator) over
both loops, as in FlashAttention, and writes the output and the logsumexp; no N x N score
or mask ever exists. Scores are kept in log2 units (scale * log2(e)) so exp2 can be used.

The attend relation is symmetric (t == t' or same cube), so the keys of a tile are
attended by exactly the queries a query tile of the same place attends: the dK/dV kernel
runs the same two loops with the roles of queries and keys swapped, and the dQ kernel the
same loops as the forward. Both recompute P = exp(S - lse) from the saved logsumexp.

Tensors are contiguous [B*heads, Tc*H*W, d]; H, W, Mw, shift and d are compile-time
constants, Tc is a run-time argument.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rvos_edge.geometry import cube_offset, segment_lengths

LOG2E = tl.constexpr(1.4426950408889634)    # scores are kept in log2 units inside the kernels


@triton.jit
def _cube_tokens(t, cube_id, local, H: tl.constexpr, W: tl.constexpr, MW: tl.constexpr,
                 P0: tl.constexpr, NCX: tl.constexpr):
    """Flat token indices of cube-local positions `local` of cube `cube_id` in frame t, and
    whether they exist (inside the cube and inside the grid)."""
    y = (cube_id // NCX) * MW - P0 + local // MW
    x = (cube_id % NCX) * MW - P0 + local % MW
    ok = (local < MW * MW) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    return t * (H * W) + y * W + x, ok


@triton.jit
def online_softmax_step(q, K, V, tok, ok, offs_d, m_i, l_i, acc, qk_scale, D: tl.constexpr, PREC: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) with the keys/values at tokens `tok`."""
    ptr = tok[:, None] * D + offs_d[None, :]
    msk = ok[:, None] & (offs_d[None, :] < D)
    k = tl.load(K + ptr, mask=msk, other=0.0)
    v = tl.load(V + ptr, mask=msk, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _cf_fwd(Q, K, V, O, LSE, Tc, qk_scale, H: tl.constexpr, W: tl.constexpr, MW: tl.constexpr,
            P0: tl.constexpr, NCX: tl.constexpr, NC: tl.constexpr, N_SUB: tl.constexpr, D: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    # program (pid, bh): query tile `sub` of cube `c` in frame `t`, for batch*head `bh`
    pid, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t, c, sub = pid // (NC * N_SUB), pid // N_SUB % NC, pid % N_SUB
    off = bh * Tc * H * W * D
    Q, K, V, O, LSE = Q + off, K + off, V + off, O + off, LSE + bh * Tc * H * W
    offs_m, offs_n, offs_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q_tok, q_ok = _cube_tokens(t, c, sub * BLOCK_M + offs_m, H, W, MW, P0, NCX)
    q_ptr, q_msk = q_tok[:, None] * D + offs_d[None, :], q_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + q_ptr, mask=q_msk, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # 1. every key of frame t (the first block already makes m_i finite on every row)
    for start in range(0, H * W, BLOCK_N):
        m_i, l_i, acc = online_softmax_step(q, K, V, t * H * W + start + offs_n, start + offs_n < H * W,
                                            offs_d, m_i, l_i, acc, qk_scale, D, PREC)
    # 2. cube c in each other frame t2 != t, one cube tile at a time
    for j in range(0, (Tc - 1) * N_SUB):
        t2 = j // N_SUB + (j // N_SUB >= t).to(tl.int32)
        k_tok, k_ok = _cube_tokens(t2, c, j % N_SUB * BLOCK_M + offs_m, H, W, MW, P0, NCX)
        m_i, l_i, acc = online_softmax_step(q, K, V, k_tok, k_ok, offs_d, m_i, l_i, acc, qk_scale, D, PREC)
    tl.store(O + q_ptr, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=q_msk)
    tl.store(LSE + q_tok, (m_i + tl.log2(l_i)) / LOG2E, mask=q_ok)


@triton.jit
def _dq_step(q, do, lse2, delta, K, V, tok, ok, offs_d, dq, qk_scale, D: tl.constexpr, PREC: tl.constexpr):
    """dQ += dS K for the keys at tokens `tok`, with P = exp2(S - lse2), dS = P (dO V^T - delta)."""
    ptr = tok[:, None] * D + offs_d[None, :]
    msk = ok[:, None] & (offs_d[None, :] < D)
    k = tl.load(K + ptr, mask=msk, other=0.0)
    v = tl.load(V + ptr, mask=msk, other=0.0)
    p = tl.where(ok[None, :], tl.exp2(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lse2[:, None]), 0.0)
    ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC)


@triton.jit
def _dkdv_step(k, v, Q, DO, LSE, DELTA, tok, ok, offs_d, dk, dv, qk_scale, D: tl.constexpr, PREC: tl.constexpr):
    """dK += dS^T Q and dV += P^T dO for the queries at tokens `tok` (transposed: keys are rows)."""
    ptr = tok[:, None] * D + offs_d[None, :]
    msk = ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + ptr, mask=msk, other=0.0)
    do = tl.load(DO + ptr, mask=msk, other=0.0)
    lse2 = tl.load(LSE + tok, mask=ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + tok, mask=ok, other=0.0)
    pt = tl.where(ok[None, :], tl.exp2(tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale - lse2[None, :]), 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
    dst = pt * (tl.dot(v, tl.trans(do), input_precision=PREC) - delta[None, :])
    return dk + tl.dot(dst.to(q.dtype), q, input_precision=PREC), dv


@triton.jit
def _cf_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, Tc, scale, qk_scale, H: tl.constexpr, W: tl.constexpr,
               MW: tl.constexpr, P0: tl.constexpr, NCX: tl.constexpr, NC: tl.constexpr, N_SUB: tl.constexpr,
               D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               PREC: tl.constexpr):
    # same tiles and key loops as _cf_fwd
    pid, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t, c, sub = pid // (NC * N_SUB), pid // N_SUB % NC, pid % N_SUB
    off = bh * Tc * H * W * D
    Q, K, V, DO, DQ, LSE, DELTA = Q + off, K + off, V + off, DO + off, DQ + off, \
        LSE + bh * Tc * H * W, DELTA + bh * Tc * H * W
    offs_m, offs_n, offs_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q_tok, q_ok = _cube_tokens(t, c, sub * BLOCK_M + offs_m, H, W, MW, P0, NCX)
    q_ptr, q_msk = q_tok[:, None] * D + offs_d[None, :], q_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + q_ptr, mask=q_msk, other=0.0)
    do = tl.load(DO + q_ptr, mask=q_msk, other=0.0)
    lse2 = tl.load(LSE + q_tok, mask=q_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + q_tok, mask=q_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, H * W, BLOCK_N):
        dq = _dq_step(q, do, lse2, delta, K, V, t * H * W + start + offs_n, start + offs_n < H * W, offs_d,
                      dq, qk_scale, D, PREC)
    for j in range(0, (Tc - 1) * N_SUB):
        t2 = j // N_SUB + (j // N_SUB >= t).to(tl.int32)
        k_tok, k_ok = _cube_tokens(t2, c, j % N_SUB * BLOCK_M + offs_m, H, W, MW, P0, NCX)
        dq = _dq_step(q, do, lse2, delta, K, V, k_tok, k_ok, offs_d, dq, qk_scale, D, PREC)
    tl.store(DQ + q_ptr, (dq * scale).to(DQ.dtype.element_ty), mask=q_msk)


@triton.jit
def _cf_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, Tc, scale, qk_scale, H: tl.constexpr, W: tl.constexpr,
                 MW: tl.constexpr, P0: tl.constexpr, NCX: tl.constexpr, NC: tl.constexpr, N_SUB: tl.constexpr,
                 D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 PREC: tl.constexpr):
    # program = one key tile (sub-block of cube c in frame t); loops over the queries attending it
    pid, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t, c, sub = pid // (NC * N_SUB), pid // N_SUB % NC, pid % N_SUB
    off = bh * Tc * H * W * D
    Q, K, V, DO, DK, DV, LSE, DELTA = Q + off, K + off, V + off, DO + off, DK + off, DV + off, \
        LSE + bh * Tc * H * W, DELTA + bh * Tc * H * W
    offs_m, offs_n, offs_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    k_tok, k_ok = _cube_tokens(t, c, sub * BLOCK_M + offs_m, H, W, MW, P0, NCX)
    k_ptr, k_msk = k_tok[:, None] * D + offs_d[None, :], k_ok[:, None] & (offs_d[None, :] < D)
    k = tl.load(K + k_ptr, mask=k_msk, other=0.0)
    v = tl.load(V + k_ptr, mask=k_msk, other=0.0)
    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # 1. every query of frame t
    for start in range(0, H * W, BLOCK_N):
        dk, dv = _dkdv_step(k, v, Q, DO, LSE, DELTA, t * H * W + start + offs_n, start + offs_n < H * W,
                            offs_d, dk, dv, qk_scale, D, PREC)
    # 2. the queries of cube c in the other frames
    for j in range(0, (Tc - 1) * N_SUB):
        t2 = j // N_SUB + (j // N_SUB >= t).to(tl.int32)
        q_tok, q_ok = _cube_tokens(t2, c, j % N_SUB * BLOCK_M + offs_m, H, W, MW, P0, NCX)
        dk, dv = _dkdv_step(k, v, Q, DO, LSE, DELTA, q_tok, q_ok, offs_d, dk, dv, qk_scale, D, PREC)
    tl.store(DK + k_ptr, (dk * scale).to(DK.dtype.element_ty), mask=k_msk)
    tl.store(DV + k_ptr, dv.to(DV.dtype.element_ty), mask=k_msk)


def _config(h: int, w: int, cube: int, shift: int, d: int, dtype: torch.dtype) -> tuple[int, dict]:
    """(number of query tiles per frame, compile-time constants) for one geometry."""
    m = cube * cube
    # cube tile: the power of two (16..128) that wastes the fewest padding slots, larger on ties
    block_m = max(16, triton.next_power_of_2(m)) if m <= 64 else min((64, 128), key=lambda b: (-(-m // b) * b, -b))
    ncx, ncy = len(segment_lengths(w, cube, shift)), len(segment_lengths(h, cube, shift))
    n_sub = -(-m // block_m)
    return ncx * ncy * n_sub, dict(
        H=h, W=w, MW=cube, P0=cube_offset(cube, shift), NCX=ncx, NC=ncx * ncy, N_SUB=n_sub, D=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=block_m,
        BLOCK_N=min(128, max(16, triton.next_power_of_2(h * w))),
        PREC="ieee" if dtype == torch.float32 else "tf32", num_warps=4 if block_m <= 64 else 8)


def forward(q: Tensor, k: Tensor, v: Tensor, h: int, w: int, cube: int, shift: int,
            scale: float) -> tuple[Tensor, Tensor]:
    """q, k, v [B, heads, Tc*H*W, d] -> (out like q, logsumexp [B, heads, Tc*H*W] fp32)."""
    b, heads, n, d = q.shape
    q, k, v = (x.contiguous() for x in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(b, heads, n, device=q.device, dtype=torch.float32)
    tiles, meta = _config(h, w, cube, shift, d, q.dtype)
    tc = n // (h * w)
    _cf_fwd[(tc * tiles, b * heads)](q, k, v, out, lse, tc, scale * LOG2E.value, **meta)
    return out, lse


def backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, h: int, w: int,
             cube: int, shift: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv), each like q, from dO = grad and the forward's out and logsumexp."""
    b, heads, n, d = q.shape
    grad, q, k, v = (x.contiguous() for x in (grad, q, k, v))
    delta = (grad.float() * out.float()).sum(-1)                                  # rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    tiles, meta = _config(h, w, cube, shift, d, q.dtype)
    tc = n // (h * w)
    lse = lse.contiguous()
    _cf_bwd_dq[(tc * tiles, b * heads)](q, k, v, grad, lse, delta, dq, tc, scale, scale * LOG2E.value, **meta)
    _cf_bwd_dkdv[(tc * tiles, b * heads)](q, k, v, grad, lse, delta, dk, dv, tc, scale, scale * LOG2E.value, **meta)
    return dq, dk, dv
