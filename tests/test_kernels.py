"""Cube-frame / PRTC attention: semantics, the decomposed and flex impls, API, FLOP counting.

Ground truth is DESIGN section 3 itself: a pure-Python per-pair rule (`design_allows`) and
hand-worked key sets, a float64 dense masked softmax written here, and autograd through it.
The decomposed impl runs the whole required matrix: Tc {1, 2, 6} x (H, W) {(4, 4), (5, 7),
(11, 11)} x Mw {2, 3, 4} x shift {0, Mw//2} x d {16, 32} x B {1, 2} x heads {1, 3} in fp32
(atol 1e-5) and fp16 (atol 2e-3). The Triton kernels are in test_kernels_triton.py, ONNX
export in test_kernels_export.py.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rvos_edge.errors import UserError
from rvos_edge.kernels import (
    ENV_VAR,
    IMPLS,
    allowed_pairs,
    cube_frame_attention,
    cube_frame_mask,
    prtc_cross_attention,
    resolve_impl,
)

GRIDS = [(4, 4), (5, 7), (11, 11)]
GEOMETRIES = [(tc, h, w, mw, s) for tc, (h, w), mw in itertools.product((1, 2, 6), GRIDS, (2, 3, 4))
              for s in (0, mw // 2)]


def design_allows(grid, mw: int, s: int) -> torch.Tensor:
    """DESIGN section 3 verbatim, one (query, key) pair at a time, Python floor division."""
    tc, h, w = grid
    tokens = [(t, y, x) for t in range(tc) for y in range(h) for x in range(w)]
    cube = {(y, x): ((y - s) // mw, (x - s) // mw) for y in range(h) for x in range(w)}
    return torch.tensor([[t2 == t or cube[y2, x2] == cube[y, x] for (t2, y2, x2) in tokens]
                         for (t, y, x) in tokens])


def dense_attention(q, k, v, mask, scale=None):
    """softmax(q k^T / sqrt(d) masked) v in float64, differentiable."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v.double()


def qkv(b, heads, n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, n, d, generator=g).to(dtype) for _ in range(3)]


# ---------------------------------------------------------------- semantics

@pytest.mark.parametrize("grid,mw,s", [((2, 4, 4), 2, 0), ((2, 4, 4), 3, 1), ((2, 5, 7), 3, 1),
                                        ((3, 5, 7), 4, 2), ((1, 11, 11), 4, 2), ((2, 6, 5), 2, 1)])
def test_mask_matches_design_rule(grid, mw, s):
    mask = cube_frame_mask(grid, mw, s)
    assert torch.equal(mask, design_allows(grid, mw, s))
    assert allowed_pairs(grid, mw, s) == int(mask.sum())


def test_allowed_pairs_closed_form():
    for tc, h, w, mw, s in GEOMETRIES:
        assert allowed_pairs((tc, h, w), mw, s) == int(design_allows((tc, h, w), mw, s).sum())
    tc, hw, mw = 6, 22 * 22, 11     # vit-b16: divisible grid, paper's count Tc*HW*((Tc-1)*Mw^2 + HW)
    assert allowed_pairs((tc, 22, 22), mw, 0) == tc * hw * ((tc - 1) * mw * mw + hw)


# Hand-worked key sets on 2x4x4, token index = 16*t + 4*y + x.
# Mw=3, s=1: cube rows/cols are {0} and {1, 2, 3} (cube index (y-1)//3 = -1 for y = 0).
FRAME0, FRAME1 = list(range(16)), list(range(16, 32))
HAND_WORKED = [
    # (grid, Mw, shift, query (t, y, x), attended keys)
    ((1, 4, 4), 2, 0, (0, 1, 2), FRAME0),                                         # one frame: all of it
    ((1, 4, 4), 3, 1, (0, 3, 3), FRAME0),
    ((2, 4, 4), 2, 0, (0, 1, 1), FRAME0 + [16, 17, 20, 21]),                      # cube rows 0-1, cols 0-1
    ((2, 4, 4), 2, 0, (1, 2, 3), FRAME1 + [10, 11, 14, 15]),                      # cube rows 2-3, cols 2-3
    ((2, 4, 4), 2, 1, (0, 0, 0), FRAME0 + [16]),                                  # shift 1: corner cube is 1x1
    ((2, 4, 4), 2, 1, (0, 2, 1), FRAME0 + [21, 22, 25, 26]),                      # rows 1-2, cols 1-2
    ((2, 4, 4), 2, 1, (1, 3, 0), FRAME1 + [12]),                                  # row 3 col 0: 1x1
    ((2, 4, 4), 2, 1, (0, 3, 2), FRAME0 + [29, 30]),                              # row 3, cols 1-2
    ((2, 4, 4), 3, 1, (0, 0, 0), FRAME0 + [16]),
    ((2, 4, 4), 3, 1, (0, 0, 2), FRAME0 + [17, 18, 19]),                          # row 0, cols 1-3
    ((2, 4, 4), 3, 1, (0, 2, 2), FRAME0 + [21, 22, 23, 25, 26, 27, 29, 30, 31]),  # rows 1-3, cols 1-3
    ((2, 4, 4), 3, 1, (1, 2, 0), FRAME1 + [4, 8, 12]),                            # rows 1-3, col 0
]


def attended_keys(impl: str, grid, mw: int, s: int, query) -> set[int]:
    """Probe an impl: with q = 0 every allowed key gets the same weight, and v = identity
    makes output row i the attention weights of query i. Also checks each key counts once."""
    tc, h, w = grid
    n = tc * h * w
    eye = torch.eye(n)[None, None]
    out = cube_frame_attention(torch.zeros(1, 1, n, n), torch.randn(1, 1, n, n), eye, grid, mw, s,
                               impl=impl, scale=0.0)
    t, y, x = query
    row = out[0, 0, t * h * w + y * w + x]
    keys = set(torch.nonzero(row).flatten().tolist())
    torch.testing.assert_close(row[sorted(keys)], torch.full((len(keys),), 1 / len(keys)), atol=1e-6, rtol=0)
    return keys


@pytest.mark.parametrize("impl", ["reference", "decomposed", "flex"])
@pytest.mark.parametrize("grid,mw,s,query,keys", HAND_WORKED)
def test_hand_worked_key_sets(impl, grid, mw, s, query, keys):
    assert attended_keys(impl, grid, mw, s, query) == set(keys)


# ---------------------------------------------------------------- decomposed vs reference

@pytest.mark.parametrize("tc,h,w,mw,s", GEOMETRIES)
def test_decomposed_matches_reference(tc, h, w, mw, s):
    """Every (d, B, heads, dtype) of the matrix: B=1 / heads=1 cases are slices of the B=2,
    heads=3 inputs (attention is independent per batch and head), each run separately."""
    grid, n = (tc, h, w), tc * h * w
    mask = design_allows(grid, mw, s)
    for d in (16, 32):
        q, k, v = qkv(2, 3, n, d, seed=tc * 1000 + h * 10 + mw)
        for dtype, atol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            qd, kd, vd = (x.to(dtype) for x in (q, k, v))
            expected = dense_attention(qd, kd, vd, mask)
            for b, heads in itertools.product((1, 2), (1, 3)):
                out = cube_frame_attention(qd[:b, :heads], kd[:b, :heads], vd[:b, :heads], grid, mw, s,
                                           impl="decomposed")
                assert out.dtype == dtype and out.shape == (b, heads, n, d)
                torch.testing.assert_close(out.double(), expected[:b, :heads], atol=atol, rtol=0)


@pytest.mark.parametrize("impl", ["decomposed", "reference", "flex"])
@pytest.mark.parametrize("tc,h,w,mw,s", [(2, 5, 7, 3, 1), (6, 4, 4, 2, 1), (1, 11, 11, 4, 0), (6, 11, 11, 4, 2)])
def test_gradients_match_reference(impl, tc, h, w, mw, s):
    grid, n = (tc, h, w), tc * h * w
    q, k, v = qkv(2, 3, n, 16, seed=7)
    g = torch.randn(2, 3, n, 16, generator=torch.Generator().manual_seed(8))
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    dense_attention(*ref, design_allows(grid, mw, s)).backward(g.double())
    ins = [x.clone().requires_grad_() for x in (q, k, v)]
    cube_frame_attention(*ins, grid, mw, s, impl=impl).backward(g)
    for x, r in zip(ins, ref):
        torch.testing.assert_close(x.grad.double(), r.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tc,h,w,mw,s", [(2, 5, 7, 3, 1), (6, 4, 4, 2, 0), (2, 11, 11, 4, 2), (1, 4, 4, 3, 1)])
def test_flex_matches_reference(tc, h, w, mw, s):
    grid, n = (tc, h, w), tc * h * w
    for b, heads, d in ((1, 1, 16), (2, 3, 32)):
        q, k, v = qkv(b, heads, n, d, seed=3)
        out = cube_frame_attention(q, k, v, grid, mw, s, impl="flex")
        torch.testing.assert_close(out.double(), dense_attention(q, k, v, design_allows(grid, mw, s)),
                                   atol=1e-5, rtol=0)


def test_custom_ops_pass_opcheck():
    q, k, v = (x.requires_grad_() for x in qkv(2, 3, 2 * 5 * 7, 16))
    torch.library.opcheck(torch.ops.rvos_edge.cube_frame_attention.default, (q, k, v, 5, 7, 3, 1, 0.25, "decomposed"))
    torch.library.opcheck(torch.ops.rvos_edge.prtc_cross_attention.default,
                          (torch.randn(2, 3, 8, 16, requires_grad=True), k, v, 0.25, "reference"))


# ---------------------------------------------------------------- PRTC reference

def test_prtc_reference_matches_dense_and_gradients():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 3, 12, 16, generator=g), torch.randn(2, 3, 70, 16, generator=g), \
        torch.randn(2, 3, 70, 16, generator=g)
    full = torch.ones(12, 70, dtype=torch.bool)
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    expected = dense_attention(*ref, full)
    expected.sum().backward()
    for impl in ("auto", "reference", "decomposed", "flex"):     # all but triton are the plain softmax
        ins = [x.clone().requires_grad_() for x in (q, k, v)]
        out = prtc_cross_attention(*ins, impl=impl)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
        out.sum().backward()
        for x, r in zip(ins, ref):
            torch.testing.assert_close(x.grad.double(), r.grad, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- FLOP counting

@pytest.mark.parametrize("impl", ["decomposed", "reference", "auto"])
def test_flop_counter_gives_closed_form(impl):
    b, heads, d, tc, h, w, mw = 2, 3, 16, 3, 4, 6, 2        # H, W divisible by Mw: the paper's formula
    q, k, v = (x.requires_grad_() for x in qkv(b, heads, tc * h * w, d))
    hw, c = h * w, heads * d
    paper_macs = 2 * tc * hw * ((tc - 1) * mw ** 2 + hw) * c   # per clip, multiply-adds
    with FlopCounterMode(display=False) as counter:
        out = cube_frame_attention(q, k, v, (tc, h, w), mw, 0, impl=impl)
    assert counter.get_total_flops() == 2 * b * paper_macs
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * 2 * b * paper_macs
    # partial cubes (shift): 2*B*heads*d*2 FLOPs per allowed pair, counted by brute force
    with FlopCounterMode(display=False) as counter:
        cube_frame_attention(q, k, v, (tc, h, w), 3, 1, impl=impl)
    assert counter.get_total_flops() == 2 * b * heads * d * 2 * int(design_allows((tc, h, w), 3, 1).sum())


def test_flop_counter_prtc():
    q, k, v = torch.randn(2, 8, 24, 32), torch.randn(2, 8, 300, 32), torch.randn(2, 8, 300, 32)
    with FlopCounterMode(display=False) as counter:
        prtc_cross_attention(q, k, v)
    assert counter.get_total_flops() == 2 * 2 * 8 * 32 * 2 * 24 * 300


# ---------------------------------------------------------------- impl selection and errors

def test_auto_resolution_and_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_impl("auto", torch.device("cpu")) == "decomposed"
    assert set(IMPLS) == {"auto", "reference", "decomposed", "triton", "flex", "plugin"}
    assert resolve_impl("plugin", torch.device("cpu")) == "decomposed"     # an export choice; eagerly decomposed
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_impl("auto", torch.device("cpu")) == "reference"
    assert resolve_impl("decomposed", torch.device("cpu")) == "decomposed"   # only "auto" is overridden
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(UserError, match=ENV_VAR):
        resolve_impl("auto", torch.device("cpu"))


def test_triton_off_cuda_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = qkv(1, 1, 16, 16)
    with pytest.raises(UserError, match="TRITON_INTERPRET"):
        cube_frame_attention(q, k, v, (1, 4, 4), 2, 0, impl="triton")


@pytest.mark.parametrize("call,match", [
    (lambda q: cube_frame_attention(q, q, q, (2, 4, 4), 2, 0, impl="fast"), "unknown attention impl"),
    (lambda q: cube_frame_attention(q, q, q, (3, 4, 4), 2, 0), "do not fill the grid"),
    (lambda q: cube_frame_attention(q, q, q, (2, 4, 4), 3, 2), "shift 0 or cube//2"),
    (lambda q: cube_frame_attention(q, q[:, :, :16], q, (2, 4, 4), 2, 0), "one shape"),
    (lambda q: cube_frame_attention(q, q, q.double(), (2, 4, 4), 2, 0), "dtype"),
    (lambda q: cube_frame_attention(q[0], q[0], q[0], (2, 4, 4), 2, 0), "one shape"),
    (lambda q: prtc_cross_attention(q, q[:, :1], q), "prtc_cross_attention needs"),
    (lambda q: prtc_cross_attention(q, q, q, impl="dense"), "unknown attention impl"),
])
def test_bad_input_raises_user_error(call, match):
    with pytest.raises(UserError, match=match):
        call(torch.randn(1, 2, 32, 16))


def test_reference_refuses_huge_mask():
    q = torch.zeros(1, 1, 129 * 128, 8)                     # mask 129*128 squared bytes > 256 MiB
    with pytest.raises(UserError, match="MiB"):
        cube_frame_attention(q, q, q, (1, 129, 128), 2, 0, impl="reference")
