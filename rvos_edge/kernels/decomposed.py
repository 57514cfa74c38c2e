"""Cube-frame attention with standard ops only: exportable to ONNX, with a dynamic Tc.

Algorithm (N = Tc*H*W tokens, cube size Mw, shift s, M = Mw*Mw):
  1. Pad the grid by p = (Mw - s) % Mw rows/columns at the top/left (and enough at the
     bottom/right) so that every cube, partial ones included, becomes a full Mw x Mw tile;
     regroup tokens cube-major: [BH, nC, Tc, M, d] ("cube layout").
  2. Frame block: the queries of cube c in frame t score the H*W keys of frame t.
  3. Cube block: they score the Tc*M tokens of cube c in all frames, with the keys of their
     own frame (already in the frame block) and padding set to -inf, so each allowed key
     is counted once.
  Both blocks come from one matmul against a per-tile key list [frame t keys | cube c
  keys] of length L = H*W + Tc*M, so the scores are [BH, nC, Tc, M, L].
  4. One softmax over L, one matmul with the matching value list, back to (t, y, x)
     order, padding dropped.
H, W, Mw and s are Python ints (they fix the graph); Tc is only ever read from tensor
shapes, so torch.export / ONNX keep it symbolic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_edge.geometry import cube_offset, segment_lengths


def to_cubes(x: Tensor, h: int, w: int, cube: int, shift: int) -> Tensor:
    """[BH, Tc*H*W, d] -> [BH, nC, Tc, Mw*Mw, d], cube-major, padding positions zero."""
    bh, d = x.shape[0], x.shape[-1]
    p = cube_offset(cube, shift)
    ny, nx = len(segment_lengths(h, cube, shift)), len(segment_lengths(w, cube, shift))
    x = F.pad(x.reshape(bh, -1, h, w, d), (0, 0, p, nx * cube - w - p, p, ny * cube - h - p))
    x = x.reshape(bh, -1, ny, cube, nx, cube, d).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(bh, ny * nx, -1, cube * cube, d)


def from_cubes(x: Tensor, h: int, w: int, cube: int, shift: int) -> Tensor:
    """Inverse of `to_cubes`: [BH, nC, Tc, Mw*Mw, d] -> [BH, Tc*H*W, d]."""
    bh, d = x.shape[0], x.shape[-1]
    p = cube_offset(cube, shift)
    ny, nx = len(segment_lengths(h, cube, shift)), len(segment_lengths(w, cube, shift))
    x = x.reshape(bh, ny, nx, -1, cube, cube, d).permute(0, 3, 1, 4, 2, 5, 6)
    x = x.reshape(bh, -1, ny * cube, nx * cube, d)[:, :, p:p + h, p:p + w]
    return x.reshape(bh, -1, d)


def _keys(x: Tensor, h: int, w: int, cube: int, shift: int) -> Tensor:
    """[BH, Tc*H*W, d] -> [BH, nC, Tc, H*W + Tc*M, d]: for the query tile (cube c, frame t)
    the H*W tokens of frame t, then the Tc*M tokens of cube c in all frames (steps 2, 3)."""
    frame = x.reshape(x.shape[0], 1, -1, h * w, x.shape[-1])                        # [BH, 1, Tc, HW, d]
    cubes = to_cubes(x, h, w, cube, shift).flatten(2, 3).unsqueeze(2)             # [BH, nC, 1, Tc*M, d]
    return torch.cat([frame.expand(-1, cubes.shape[1], -1, -1, -1), cubes.expand(-1, -1, frame.shape[2], -1, -1)], 3)


def _allowed(tc: int | torch.SymInt, h: int, w: int, cube: int, shift: int, device: torch.device) -> Tensor:
    """Bool [nC, Tc, 1, H*W + Tc*M] over the `_keys` axis: the frame block is all allowed; in
    the cube block, keys of the query's own frame (already in the frame block) and padding are not."""
    t = torch.arange(tc, device=device)
    real = to_cubes(torch.ones(1, h * w, 1, device=device), h, w, cube, shift)[0, :, 0, :, 0] > 0    # [nC, M]
    cubes = (t[:, None, None] != t[None, :, None]) & real[:, None, None, :]                      # [nC, Tc, Tc, M]
    frame = torch.ones(1, 1, h * w, dtype=torch.bool, device=device).expand(cubes.shape[0], tc, -1)
    return torch.cat([frame, cubes.flatten(-2)], dim=-1)[:, :, None, :]


def _probabilities(qc: Tensor, kk: Tensor, allowed: Tensor, with_lse: bool) -> tuple[Tensor, Tensor | None]:
    """Softmax over the allowed keys of `qc @ kk^T` (step 4), fp32, and optionally its logsumexp.

    The logsumexp comes without another exp pass: P = exp(S - lse) at the largest score
    gives lse = max(S) - log(max(P)), with max(P) >= 1/L.
    """
    s = (qc @ kk.transpose(-1, -2)).float().masked_fill_(~allowed, float("-inf"))  # [BH, nC, Tc, M, L]
    p = torch.softmax(s, dim=-1)
    return p, (s.amax(dim=-1) - p.amax(dim=-1).log() if with_lse else None)


def decomposed_attention(q: Tensor, k: Tensor, v: Tensor, h: int, w: int, cube: int, shift: int,
                         scale: float, with_lse: bool = False) -> tuple[Tensor, Tensor | None]:
    """Cube-frame attention. q, k, v [B, heads, Tc*H*W, d] -> (out [B, heads, Tc*H*W, d],
    logsumexp [B, heads, Tc*H*W] fp32 if `with_lse` else None).

    The normalisation is a plain Softmax node, the form ONNX/TensorRT attention fusions
    recognise.
    """
    qc = to_cubes(q.flatten(0, 1), h, w, cube, shift) * scale                     # [BH, nC, Tc, M, d]
    kk, vv = (_keys(x.flatten(0, 1), h, w, cube, shift) for x in (k, v))
    p, lse = _probabilities(qc, kk, _allowed(qc.shape[2], h, w, cube, shift, q.device), with_lse)
    out = from_cubes(p.to(v.dtype) @ vv, h, w, cube, shift).reshape(q.shape)
    if with_lse:
        lse = from_cubes(lse[..., None], h, w, cube, shift).reshape(q.shape[:-1])
    return out, lse


def _keys_grad(dkk: Tensor, h: int, w: int, cube: int, shift: int) -> Tensor:
    """Adjoint of `_keys`: [BH, nC, Tc, H*W + Tc*M, d] -> [BH, Tc*H*W, d], summing the frame
    block over the cubes and the cube block over the query frames."""
    frame = dkk[:, :, :, :h * w].sum(1).flatten(1, 2)
    cubes = dkk[:, :, :, h * w:].sum(2).unflatten(2, (-1, cube * cube))
    return frame + from_cubes(cubes, h, w, cube, shift)


def decomposed_attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                                  h: int, w: int, cube: int, shift: int,
                                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of `decomposed_attention`, all [B, heads, Tc*H*W, d], fp32 math.

    Recomputes P in the cube layout, then with delta = rowsum(dO * O):
      dS = P * (dO V^T - delta),  dQ = dS K * scale,  dK = dS^T Q * scale,  dV = P^T dO,
    and `_keys_grad` brings dK, dV back from the per-tile key lists. Padding rows carry
    dO = 0, hence dS = 0.
    """
    qc = to_cubes(q.flatten(0, 1).float(), h, w, cube, shift) * scale
    kk, vv = (_keys(x.flatten(0, 1).float(), h, w, cube, shift) for x in (k, v))
    p, _ = _probabilities(qc, kk, _allowed(qc.shape[2], h, w, cube, shift, q.device), with_lse=False)
    g = to_cubes(grad.flatten(0, 1).float(), h, w, cube, shift)                      # [BH, nC, Tc, M, d]
    delta = to_cubes((grad.float() * out.float()).sum(-1, keepdim=True).flatten(0, 1), h, w, cube, shift)
    ds = p * (g @ vv.transpose(-1, -2) - delta)
    dq = from_cubes(ds @ kk, h, w, cube, shift) * scale
    dk = _keys_grad(ds.transpose(-1, -2) @ qc, h, w, cube, shift)
    dv = _keys_grad(p.transpose(-1, -2) @ g, h, w, cube, shift)
    return dq.reshape(q.shape).to(q.dtype), dk.reshape(k.shape).to(k.dtype), dv.reshape(v.shape).to(v.dtype)
