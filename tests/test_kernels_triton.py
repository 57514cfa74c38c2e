"""Triton kernels (CF-MSA forward/backward, PRTC split-K) against float64 dense references.

On the CPU they run in the Triton interpreter (TRITON_INTERPRET=1, set by `make test`),
which executes every program in Python, so the matrix is split (all cases vs the float64
dense reference; fp32 atol 1e-5, fp16 atol 2e-3):
  - everything at small sizes: Tc {1, 2} x (H, W) {(4, 4), (5, 7)} x Mw {2, 3, 4} x
    shift {0, Mw//2}, fp32, B = heads = 1, d = 16;
  - a representative subset of the rest: Tc = 6, (11, 11), d = 32, B = 2, heads = 3,
    fp16, partial border cubes, a 12x12 cube split into several query tiles;
  - gradients (fp32 atol 1e-5; fp16 atol 1e-2) on four geometries;
  - the hand-worked key sets of test_kernels.py.
bf16 (absent from the interpreter), the vit-b16 and vit-l14 shapes and the awkward ones
(Tc=1, Tc=36, B=8, grids no multiple of the cube) run in the CUDA tests below, marked
`gpu` (`make gpu-check` runs them), which skip without a GPU.
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch
from test_kernels import HAND_WORKED, attended_keys, dense_attention, design_allows, qkv

from rvos_edge.kernels import cube_frame_attention, prtc_cross_attention, resolve_impl

needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="Triton needs CUDA or TRITON_INTERPRET=1 (make test sets it)")


def gpu(test):
    """CUDA only: marked `gpu` (what `make gpu-check` runs) and skipped without a GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


pytestmark = needs_triton

SMALL = [(tc, h, w, mw, s) for tc, (h, w), mw in itertools.product((1, 2), ((4, 4), (5, 7)), (2, 3, 4))
         for s in (0, mw // 2)]


def check_forward(b, heads, tc, h, w, mw, s, d, dtype=torch.float32, device="cpu"):
    grid, n = (tc, h, w), tc * h * w
    q, k, v = (x.to(device, dtype) for x in qkv(b, heads, n, d, seed=n + mw))
    out = cube_frame_attention(q, k, v, grid, mw, s, impl="triton")
    assert out.dtype == dtype and out.shape == (b, heads, n, d)
    atol = 1e-5 if dtype == torch.float32 else 2e-3
    expected = dense_attention(q, k, v, design_allows(grid, mw, s).to(device))
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("tc,h,w,mw,s", SMALL)
def test_forward_small(tc, h, w, mw, s):
    check_forward(1, 1, tc, h, w, mw, s, 16)


@pytest.mark.parametrize("b,heads,tc,h,w,mw,s,d,dtype", [
    (1, 1, 6, 11, 11, 4, 2, 32, torch.float32),     # Tc=6 and partial cubes on an 11x11 grid
    (1, 1, 6, 5, 7, 3, 1, 16, torch.float32),
    (2, 3, 2, 5, 7, 3, 1, 16, torch.float32),       # batch and heads
    (1, 3, 2, 11, 11, 2, 1, 32, torch.float32),
    (2, 1, 2, 11, 11, 3, 0, 16, torch.float32),
    (1, 1, 2, 13, 13, 12, 6, 32, torch.float32),    # 144-token cube: three 64-query tiles
    (1, 1, 2, 5, 7, 3, 1, 32, torch.float16),
    (1, 1, 6, 4, 4, 2, 0, 16, torch.float16),
    (1, 2, 2, 11, 11, 4, 2, 16, torch.float16),
])
def test_forward_representative(b, heads, tc, h, w, mw, s, d, dtype):
    check_forward(b, heads, tc, h, w, mw, s, d, dtype)


@pytest.mark.parametrize("grid,mw,s,query,keys", HAND_WORKED)
def test_hand_worked_key_sets(grid, mw, s, query, keys):
    assert attended_keys("triton", grid, mw, s, query) == set(keys)


@pytest.mark.parametrize("b,heads,tc,h,w,mw,s,d,dtype", [
    (1, 1, 2, 5, 7, 3, 1, 16, torch.float32),
    (1, 2, 6, 4, 4, 4, 2, 32, torch.float32),
    (1, 1, 1, 11, 11, 4, 0, 16, torch.float32),
    (2, 1, 2, 4, 4, 2, 1, 16, torch.float16),
])
def test_gradients_match_reference(b, heads, tc, h, w, mw, s, d, dtype):
    grid, n = (tc, h, w), tc * h * w
    q, k, v = (x.to(dtype) for x in qkv(b, heads, n, d, seed=11))
    g = torch.randn(b, heads, n, d, generator=torch.Generator().manual_seed(12)).to(dtype)
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    dense_attention(*ref, design_allows(grid, mw, s)).backward(g.double())
    ins = [x.clone().requires_grad_() for x in (q, k, v)]
    cube_frame_attention(*ins, grid, mw, s, impl="triton").backward(g)
    atol = 1e-5 if dtype == torch.float32 else 1e-2
    for x, r in zip(ins, ref):
        torch.testing.assert_close(x.grad.double(), r.grad, atol=atol, rtol=0)


@pytest.mark.parametrize("b,heads,nq,nk,d,target", [
    (1, 1, 8, 70, 16, 256),       # one key block
    (2, 3, 24, 300, 32, 256),     # several splits of one block each
    (1, 2, 72, 300, 16, 2),       # two query blocks, splits of several key blocks
])
def test_prtc_triton(monkeypatch, b, heads, nq, nk, d, target):
    from rvos_edge.kernels import triton_prtc
    monkeypatch.setattr(triton_prtc, "TARGET_PROGRAMS", target)
    gen = torch.Generator().manual_seed(nq)
    q, k, v = torch.randn(b, heads, nq, d, generator=gen), torch.randn(b, heads, nk, d, generator=gen), \
        torch.randn(b, heads, nk, d, generator=gen)
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    expected = dense_attention(*ref, torch.ones(nq, nk, dtype=torch.bool))
    expected.sum().backward()
    ins = [x.clone().requires_grad_() for x in (q, k, v)]
    out = prtc_cross_attention(*ins, impl="triton")
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    out.sum().backward()
    for x, r in zip(ins, ref):
        torch.testing.assert_close(x.grad.double(), r.grad, atol=1e-5, rtol=0)
    out16 = prtc_cross_attention(*(x.half() for x in (q, k, v)), impl="triton")
    torch.testing.assert_close(out16.double(), dense_attention(*(x.half() for x in (q, k, v)),
                                                               torch.ones(nq, nk, dtype=torch.bool)),
                               atol=2e-3, rtol=0)


# ---------------------------------------------------------------- CUDA only (make gpu-check)

# (B, Tc, H, W, Mw): the vit-b16 and vit-l14 STR geometries, then awkward ones: one frame,
# 36 frames, batch 8, and a non-square grid that is no multiple of the cube (partial border
# cubes even at shift 0). Each runs at shift 0 and Mw//2.
CUDA_GEOMETRIES = [(1, 6, 22, 22, 11), (2, 6, 24, 24, 12), (1, 1, 22, 22, 11), (1, 36, 22, 22, 11),
                   (8, 6, 22, 22, 11), (2, 3, 20, 17, 12)]
CUDA_DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]


@gpu
def test_cuda_auto_is_triton():
    assert resolve_impl("auto", torch.device("cuda")) == "triton"


@gpu
@pytest.mark.parametrize("dtype,atol", CUDA_DTYPES)
@pytest.mark.parametrize("b,tc,h,w,mw", CUDA_GEOMETRIES)
def test_cuda_forward_backward(dtype, atol, b, tc, h, w, mw):
    """Triton forward and backward against the fp32 decomposed impl (itself checked against the
    dense reference to 1e-5 on the CPU), 8 heads of d=32 as in the STR; flex too below fp32."""
    n = tc * h * w
    q, k, v = (x.cuda() for x in qkv(b, 8, n, 32, seed=5))
    g = torch.randn_like(q)
    for s in (0, mw // 2):
        ref = [x.clone().requires_grad_() for x in (q, k, v)]
        expected = cube_frame_attention(*ref, (tc, h, w), mw, s, impl="decomposed")
        expected.backward(g)
        ins = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = cube_frame_attention(*ins, (tc, h, w), mw, s, impl="triton")
        torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)
        out.backward(g.to(dtype))
        for x, r in zip(ins, ref):
            torch.testing.assert_close(x.grad.float(), r.grad, atol=10 * atol, rtol=0)
        if dtype != torch.float32:
            flex = cube_frame_attention(*(x.detach() for x in ins), (tc, h, w), mw, s, impl="flex")
            torch.testing.assert_close(flex.float(), expected, atol=atol, rtol=0)


@gpu
@pytest.mark.parametrize("b,tc,h,w,mw", [(1, 2, 5, 7, 3), (1, 2, 13, 13, 12)])
def test_cuda_matches_dense_reference(b, tc, h, w, mw):
    """On small grids, Triton on CUDA against the float64 dense reference directly."""
    n = tc * h * w
    q, k, v = qkv(b, 2, n, 32, seed=7)
    for s in (0, mw // 2):
        out = cube_frame_attention(q.cuda(), k.cuda(), v.cuda(), (tc, h, w), mw, s, impl="triton")
        torch.testing.assert_close(out.double().cpu(), dense_attention(q, k, v, design_allows((tc, h, w), mw, s)),
                                   atol=1e-5, rtol=0)


@gpu
@pytest.mark.parametrize("dtype,atol", CUDA_DTYPES)
@pytest.mark.parametrize("b,nq,nk", [(8, 6 * 4, 6 * 485), (1, 36 * 4, 36 * 485), (2, 6 * 4, 6 * 577)])
def test_cuda_prtc(dtype, atol, b, nq, nk):
    """PRTC split-K kernel, forward and backward, at the vit-b16 (Tc=6, B=8 and Tc=36) and
    vit-l14 (577 tokens a frame) vision-layer shapes, against the fp32 reference."""
    gen = torch.Generator().manual_seed(nq)
    q, k, v = (torch.randn(b, 12, n, 64, generator=gen).cuda() for n in (nq, nk, nk))
    g = torch.randn(b, 12, nq, 64, generator=gen).cuda()
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    expected = prtc_cross_attention(*ref, impl="reference")
    expected.backward(g)
    ins = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = prtc_cross_attention(*ins, impl="triton")
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)
    out.backward(g.to(dtype))
    for x, r in zip(ins, ref):
        torch.testing.assert_close(x.grad.float(), r.grad, atol=10 * atol, rtol=0)
