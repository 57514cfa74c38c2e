"""Triton kernel for PRTC cross-attention: few queries (Tc*m_tmp) over many keys (Tc*(1+Np)).

With a couple of dozen queries a FlashAttention-style grid (one program per query block)
would leave almost the whole GPU idle, so the keys are split instead ("split-K"):
  1. `_prtc_partial`: program (split, query block, batch*head) runs an online softmax over
     its slice of the keys and writes the normalised partial output o_s and its logsumexp
     lse_s (log2 units);
  2. `_prtc_merge`: one program per (query block, batch*head) combines the splits:
     lse = log2(sum_s 2^lse_s),  o = sum_s 2^(lse_s - lse) o_s.
Tensors are contiguous [B*heads, N, d]; accumulation is fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rvos_edge.kernels.triton_cube_frame import LOG2E, online_softmax_step

TARGET_PROGRAMS = 256    # enough partial programs to fill a large GPU


@triton.jit
def _prtc_partial(Q, K, V, O_PART, LSE_PART, Nq, Nk, keys_per_split, qk_scale, D: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    split, qb, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    Q, K, V = Q + bh * Nq * D, K + bh * Nk * D, V + bh * Nk * D
    part = bh * tl.num_programs(0) + split                      # this program's row of partial results
    offs_m, offs_n, offs_d = qb * BLOCK_M + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q_ptr, q_msk = offs_m[:, None] * D + offs_d[None, :], (offs_m[:, None] < Nq) & (offs_d[None, :] < D)
    q = tl.load(Q + q_ptr, mask=q_msk, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = split * keys_per_split                                 # keys_per_split is a multiple of BLOCK_N
    for start in range(lo, tl.minimum(lo + keys_per_split, Nk), BLOCK_N):
        m_i, l_i, acc = online_softmax_step(q, K, V, start + offs_n, start + offs_n < Nk, offs_d,
                                            m_i, l_i, acc, qk_scale, D, PREC)
    tl.store(O_PART + part * Nq * D + q_ptr, acc / l_i[:, None], mask=q_msk)
    tl.store(LSE_PART + part * Nq + offs_m, m_i + tl.log2(l_i), mask=offs_m < Nq)


@triton.jit
def _prtc_merge(O_PART, LSE_PART, O, LSE, Nq, n_splits, D: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr):
    qb, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs_m, offs_d = qb * BLOCK_M + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    q_ptr, q_msk = offs_m[:, None] * D + offs_d[None, :], (offs_m[:, None] < Nq) & (offs_d[None, :] < D)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(0, n_splits):                               # running max over the splits' lse
        part = bh * n_splits + s
        lse_s = tl.load(LSE_PART + part * Nq + offs_m, mask=offs_m < Nq, other=0.0)
        o_s = tl.load(O_PART + part * Nq * D + q_ptr, mask=q_msk, other=0.0)
        m_new = tl.maximum(m, lse_s)
        alpha, w = tl.exp2(m - m_new), tl.exp2(lse_s - m_new)
        acc = acc * alpha[:, None] + w[:, None] * o_s
        l = l * alpha + w
        m = m_new
    tl.store(O + bh * Nq * D + q_ptr, (acc / l[:, None]).to(O.dtype.element_ty), mask=q_msk)
    tl.store(LSE + bh * Nq + offs_m, (m + tl.log2(l)) / LOG2E, mask=offs_m < Nq)


def forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """q [B, heads, Nq, d], k/v [B, heads, Nk, d] -> (out like q, logsumexp [B, heads, Nq] fp32)."""
    b, heads, nq, d = q.shape
    nk = k.shape[2]
    q, k, v = (x.contiguous() for x in (q, k, v))
    block_m, block_n = min(64, max(16, triton.next_power_of_2(nq))), 64
    q_blocks = triton.cdiv(nq, block_m)
    key_blocks = triton.cdiv(nk, block_n)
    keys_per_split = block_n * triton.cdiv(key_blocks, max(1, TARGET_PROGRAMS // (b * heads * q_blocks)))
    splits = triton.cdiv(nk, keys_per_split)
    o_part = torch.empty(b * heads, splits, nq, d, device=q.device, dtype=torch.float32)
    lse_part = torch.empty(b * heads, splits, nq, device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    lse = torch.empty(b, heads, nq, device=q.device, dtype=torch.float32)
    meta = dict(D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=block_m)
    _prtc_partial[(splits, q_blocks, b * heads)](
        q, k, v, o_part, lse_part, nq, nk, keys_per_split, scale * LOG2E.value, BLOCK_N=block_n,
        PREC="ieee" if q.dtype == torch.float32 else "tf32", **meta)
    _prtc_merge[(q_blocks, b * heads)](o_part, lse_part, out, lse, nq, splits, **meta)
    return out, lse
