"""Cube-frame attention with standard ops only: exportable to ONNX, with a dynamic Tc.

Algorithm (tokens on a (Tc, H, W) grid, cube size Mw, shift s; DESIGN section 3). The cubes
are the tiles of `cube_tiles`: rows by columns of `segment_lengths`, border cubes at their
true, partial size. For each cube c, of m cells, one at a time:
  1. its queries in every frame, [BH, Tc, m, d], score a key list per query frame t:
     [the H*W keys of frame t | the Tc*m keys of cube c in all frames], L = H*W + Tc*m
     (frame block, then cube block);
  2. in the cube block the keys of the query's own frame, already in the frame block, are
     -inf, so each allowed key is counted once;
  3. one softmax over L, one matmul with the matching value list.
The cubes' outputs are concatenated back into (t, y, x) order.

Why one cube at a time: the scores of a cube, [BH, Tc, m, L] fp32, are freed before the next
cube's are made, so a layer never holds more than one cube's. vit-b16 (22 x 22 grid, Mw 11,
a shifted layer has 9 cubes) holds the largest cube's 28 MB instead of the 241 MB that
all cubes padded to Mw x Mw took at once, and no padding cell is scored (484 query cells
instead of 1089): a vit-b16 FP32 process on ONNX Runtime peaks at 1.44 GB instead of 2.35 GB
(benchmarks/results/intel-xeon-2c/memory_ort_fp32.md).
The graph has one small subgraph per cube (at most 9 for every preset).

H, W, Mw and s are Python ints (they fix the graph); Tc is only ever read from tensor
shapes, so torch.export / ONNX keep it symbolic.
"""
from __future__ import annotations

from itertools import accumulate

import torch
from torch import Tensor

from rvos_edge.geometry import segment_lengths

Tile = tuple[slice, slice]


def _segments(length: int, cube: int, shift: int) -> list[slice]:
    """The cube segments of one grid axis as slices, in order."""
    edges = list(accumulate(segment_lengths(length, cube, shift), initial=0))
    return [slice(a, b) for a, b in zip(edges, edges[1:])]


def cube_tiles(h: int, w: int, cube: int, shift: int) -> list[list[Tile]]:
    """The cubes of an H x W grid as (rows, columns) slices, one list per row of cubes."""
    columns = _segments(w, cube, shift)
    return [[(rows, cols) for cols in columns] for rows in _segments(h, cube, shift)]


def _untile(parts: list[list[Tensor]]) -> Tensor:
    """Per-cube tensors [..., my, mx, c] laid out as `cube_tiles` -> the grid [..., H, W, c]."""
    return torch.cat([torch.cat(row, dim=-2) for row in parts], dim=-3)


def _grid(x: Tensor, h: int, w: int) -> Tensor:
    """[B, heads, Tc*H*W, d] -> [B*heads, Tc, H, W, d]."""
    return x.reshape(x.shape[0] * x.shape[1], -1, h, w, x.shape[-1])


def _key_list(frame: Tensor, cube: Tensor) -> Tensor:
    """Frame keys [BH, Tc, H*W, d] and one cube's keys [BH, Tc, my, mx, d] -> the key list of
    that cube's queries in each frame, [BH, Tc, H*W + Tc*m, d] (step 1)."""
    tc = frame.shape[1]
    return torch.cat([frame, cube.reshape(cube.shape[0], 1, -1, cube.shape[-1]).expand(-1, tc, -1, -1)], dim=2)


def _allowed(tc: int | torch.SymInt, hw: int, m: int, device: torch.device) -> Tensor:
    """Bool [Tc, 1, H*W + Tc*m] over `_key_list`'s axis for queries of frame t (the first axis):
    the frame block is all allowed; in the cube block the keys of frame t are not (step 2)."""
    t = torch.arange(tc, device=device)
    others = (t[:, None, None] != t[None, :, None]).expand(-1, -1, m).reshape(tc, 1, -1)
    return torch.cat([torch.ones(tc, 1, hw, dtype=torch.bool, device=device), others], dim=-1)


def _probabilities(q: Tensor, keys: Tensor, allowed: Tensor, with_lse: bool) -> tuple[Tensor, Tensor | None]:
    """Softmax over the allowed keys of `q @ keys^T` (step 3), fp32: q [BH, Tc, m, d], keys
    [BH, Tc, L, d] -> P [BH, Tc, m, L], and optionally its logsumexp [BH, Tc, m].

    The logsumexp comes without another exp pass: P = exp(S - lse) at the largest score
    gives lse = max(S) - log(max(P)), with max(P) >= 1/L.
    """
    s = (q @ keys.transpose(-1, -2)).float().masked_fill_(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return p, (s.amax(dim=-1) - p.amax(dim=-1).log() if with_lse else None)


def decomposed_attention(q: Tensor, k: Tensor, v: Tensor, h: int, w: int, cube: int, shift: int,
                         scale: float, with_lse: bool = False) -> tuple[Tensor, Tensor | None]:
    """Cube-frame attention. q, k, v [B, heads, Tc*H*W, d] -> (out [B, heads, Tc*H*W, d],
    logsumexp [B, heads, Tc*H*W] fp32 if `with_lse` else None).

    The normalisation is a plain Softmax node, the form ONNX/TensorRT attention fusions
    recognise.
    """
    qg, kg, vg = _grid(q * scale, h, w), _grid(k, h, w), _grid(v, h, w)          # [BH, Tc, H, W, d]
    frame_k, frame_v = kg.flatten(2, 3), vg.flatten(2, 3)                        # [BH, Tc, HW, d]
    outs, lses = [], []
    for row in cube_tiles(h, w, cube, shift):
        outs.append([]), lses.append([])
        for ys, xs in row:
            qc = qg[:, :, ys, xs]                                                # [BH, Tc, my, mx, d]
            m = qc.shape[2] * qc.shape[3]
            p, lse = _probabilities(qc.flatten(2, 3), _key_list(frame_k, kg[:, :, ys, xs]),
                                    _allowed(qc.shape[1], h * w, m, q.device), with_lse)
            out = p.to(v.dtype) @ _key_list(frame_v, vg[:, :, ys, xs])          # [BH, Tc, m, d]
            outs[-1].append(out.unflatten(2, qc.shape[2:4]))
            if with_lse:
                lses[-1].append(lse.unflatten(2, qc.shape[2:4])[..., None])
    out = _untile(outs).reshape(q.shape)
    return out, (_untile(lses).reshape(q.shape[:-1]) if with_lse else None)


def decomposed_attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                                  h: int, w: int, cube: int, shift: int,
                                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of `decomposed_attention`, all [B, heads, Tc*H*W, d], fp32 math.

    Per cube, P is recomputed and with delta = rowsum(dO * O):
      dS = P * (dO V^T - delta),  dQ = dS K * scale,  dK = dS^T Q * scale,  dV = P^T dO
    against the cube's key and value lists. A list's frame block goes back to the frame keys
    (summed over the cubes), its cube block to the cube's cells (summed over the query frames).
    """
    qg, kg, vg, gg = (_grid(x.float(), h, w) for x in (q * scale, k, v, grad))
    delta = _grid((grad.float() * out.float()).sum(-1, keepdim=True), h, w)      # [BH, Tc, H, W, 1]
    frame_k, frame_v = kg.flatten(2, 3), vg.flatten(2, 3)
    hw = h * w
    dq, dk_cube, dv_cube = [], [], []
    dk_frame, dv_frame = torch.zeros_like(frame_k), torch.zeros_like(frame_v)
    for row in cube_tiles(h, w, cube, shift):
        dq.append([]), dk_cube.append([]), dv_cube.append([])
        for ys, xs in row:
            qc, g, dl = (x[:, :, ys, xs].flatten(2, 3) for x in (qg, gg, delta))   # [BH, Tc, m, d | 1]
            cells = qg[:, :, ys, xs].shape[1:4]                                      # (Tc, my, mx)
            keys, values = _key_list(frame_k, kg[:, :, ys, xs]), _key_list(frame_v, vg[:, :, ys, xs])
            p, _ = _probabilities(qc, keys, _allowed(qc.shape[1], hw, qc.shape[2], q.device), with_lse=False)
            ds = p * (g @ values.transpose(-1, -2) - dl)                               # [BH, Tc, m, L]
            dkeys, dvalues = ds.transpose(-1, -2) @ qc, p.transpose(-1, -2) @ g       # [BH, Tc, L, d]
            dq[-1].append((ds @ keys).unflatten(2, cells[1:]) * scale)
            dk_frame += dkeys[:, :, :hw]
            dv_frame += dvalues[:, :, :hw]
            dk_cube[-1].append(dkeys[:, :, hw:].sum(1).unflatten(1, cells))
            dv_cube[-1].append(dvalues[:, :, hw:].sum(1).unflatten(1, cells))
    dk = dk_frame.reshape(kg.shape) + _untile(dk_cube)
    dv = dv_frame.reshape(vg.shape) + _untile(dv_cube)
    return _untile(dq).reshape(q.shape).to(q.dtype), dk.reshape(k.shape).to(k.dtype), dv.reshape(v.shape).to(v.dtype)
