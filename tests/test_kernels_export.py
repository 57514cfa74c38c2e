"""ONNX export of the decomposed CF-MSA (and the PRTC softmax attention) with dynamic B and Tc.

One torch.onnx.export(dynamo=True) of a module calling both ops, the recipe documented in
rvos_edge.kernels.attention; the graph must hold only standard ONNX ops, and ONNX Runtime
must match the float64 dense reference at several (B, Tc), none of them the traced one.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_kernels import dense_attention, design_allows

from rvos_edge.kernels import cube_frame_attention, prtc_cross_attention

H, W, MW, SHIFT, HEADS, D, M_TMP = 5, 7, 3, 1, 2, 16, 2


class Attention(torch.nn.Module):
    """CF-MSA over the (Tc, H, W) grid + PRTC queries (M_TMP per frame) over the same keys."""

    def forward(self, q, k, v, p):
        tc = q.shape[2] // (H * W)
        out = cube_frame_attention(q, k, v, grid=(tc, H, W), cube=MW, shift=SHIFT, impl="auto")
        return out, prtc_cross_attention(p, k, v, impl="auto")


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "attention.onnx"
    batch, frames = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("frames", min=1, max=64)
    tokens = {0: batch, 2: frames * (H * W)}
    g = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(2, HEADS, 2 * H * W, D, generator=g) for _ in range(3)) + \
        (torch.randn(2, HEADS, 2 * M_TMP, D, generator=g),)
    torch.onnx.export(Attention().eval(), args, str(path), dynamo=True, opset_version=20, input_names=["q", "k", "v", "p"],
                      output_names=["out", "prtc"],
                      dynamic_shapes={"q": tokens, "k": tokens, "v": tokens, "p": {0: batch, 2: frames * M_TMP}})
    return path


def test_graph_has_only_standard_ops(onnx_path):
    model = onnx.load(str(onnx_path))
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert {"MatMul", "Softmax"} <= {node.op_type for node in model.graph.node}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str), dims     # B and Tc*H*W symbolic


@pytest.mark.parametrize("b,tc", [(1, 1), (3, 4), (1, 6)])
def test_onnxruntime_matches_reference(onnx_path, b, tc):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(tc)
    q, k, v = (torch.randn(b, HEADS, tc * H * W, D, generator=g) for _ in range(3))
    p = torch.randn(b, HEADS, tc * M_TMP, D, generator=g)
    out, prtc = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "p": p.numpy()})
    expected = dense_attention(q, k, v, design_allows((tc, H, W), MW, SHIFT)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    expected = dense_attention(p, k, v, torch.ones(tc * M_TMP, tc * H * W, dtype=torch.bool)).numpy()
    np.testing.assert_allclose(prtc, expected, atol=1e-5, rtol=0)


def test_jit_trace_inlines_standard_ops():
    """torch.jit.trace (the TorchScript exporter's front end) also records no custom op."""
    args = tuple(torch.randn(1, HEADS, 2 * H * W, D) for _ in range(3)) + (torch.randn(1, HEADS, 2 * M_TMP, D),)
    graph = str(torch.jit.trace(Attention().eval(), args).graph)
    assert "rvos_edge::" not in graph and "aten::softmax" in graph


def test_scores_live_one_cube_at_a_time(onnx_path):
    """Each CF-MSA Softmax scores the queries of one cube in every frame, [B*heads, Tc, m, H*W + Tc*m], with no
    padding cell (rvos_edge.kernels.decomposed): its m are the cubes' sizes by DESIGN's rule cube(y, x)."""
    model = onnx.load(str(onnx_path))
    scores = [node.input[0] for node in model.graph.node if node.op_type == "Softmax"]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(s, onnx.TensorProto.FLOAT, None) for s in scores)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    b, tc = 2, 3
    qkv = {name: np.zeros((b, HEADS, tc * H * W, D), np.float32) for name in "qkv"}
    shapes = [s.shape for s in session.run(scores, {**qkv, "p": np.zeros((b, HEADS, tc * M_TMP, D), np.float32)})]
    cubes = [s for s in shapes if s[0] == b * HEADS]                     # PRTC's softmax is [B, heads, ...]
    assert all(s[1] == tc and s[3] == H * W + tc * s[2] for s in cubes), cubes
    sizes = Counter(((y - SHIFT) // MW, (x - SHIFT) // MW) for y in range(H) for x in range(W))
    assert sorted(s[2] for s in cubes) == sorted(sizes.values())
