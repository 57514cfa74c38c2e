"""CF-MSA plugin on the CPU: `export --attention plugin` (one CubeFrameAttention node per CF-MSA, the
manifest saying TensorRT only, the decomposed graphs unchanged), the nodes' semantics (each node replaced
by the dense reference attention of its attributes reproduces the decomposed graph in ONNX Runtime),
and the plugin's Triton kernel (interpreter) and its ahead-of-time PTX."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.artifacts.tensorrt import PLUGIN_OP, plugin_graph_file
from rvos_edge.cli import main
from rvos_edge.engines.trt.plan import ArtifactSet
from rvos_edge.engines.trt.plugin import plugin_blocker
from rvos_edge.export.plugin_graph import PLUGIN_FILE, plugin_nodes
from rvos_edge.kernels.reference import cube_frame_mask, masked_attention
from rvos_edge.kernels.trt_plugin import strip_trailing_params
from rvos_edge.model import build_model, save_checkpoint
from rvos_edge.runtime import Segmenter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """An artifact folder exported with --attention plugin, from the checkpoint of the session's
    tiny_export (tiny, seed 0), so that the two folders differ only by the option."""
    tmp = tmp_path_factory.mktemp("plugin")
    ckpt = tmp / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=0), ckpt)
    assert main(["export", str(ckpt), "--out", str(tmp / "art"), "--attention", "plugin"]) == 0
    return tmp / "art"


def test_one_plugin_node_per_cf_msa(exported: Path) -> None:
    art = exported
    cfg = load_manifest(art).config
    model = onnx.load(str(art / PLUGIN_FILE))
    nodes = plugin_nodes(model)
    head_dim = cfg.str_width // cfg.str_heads
    grid = cfg.image_size // cfg.patch_size
    assert len(nodes) == cfg.str_blocks
    for i, n in enumerate(nodes):
        assert (n["grid"], n["cube"], n["shift"], n["heads"]) == ([grid, grid], cfg.cube, (i % 2) * (cfg.cube // 2),
                                                                  cfg.str_heads)
        assert n["scale"] == pytest.approx(1 / math.sqrt(head_dim)) and n["plugin_namespace"] == b"rvos_edge"
        assert len(n["inputs"]) == 3 and len(n["outputs"]) == 2
        consumers = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
        assert n["outputs"][0] in consumers and n["outputs"][1] not in consumers    # lse is not used
    assert PLUGIN_OP == "rvos_edge::CubeFrameAttention"
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18), ("rvos_edge", 1)}
    assert not model.functions        # a local function would make TensorRT's parser skip the plugin
    assert plugin_nodes(onnx.load(str(art / "clip_model.onnx"))) == []


def test_manifest_says_the_plugin_graph_is_for_tensorrt_only(exported: Path) -> None:
    art = exported
    m = load_manifest(art)                           # checks the sha256 of the plugin graph too
    assert m.attention == "plugin" and PLUGIN_FILE in m.files
    plugin = m.tensorrt["plugin"]
    assert plugin["runs_on"] == "tensorrt" and "ONNX Runtime cannot run" in plugin["note"]
    assert plugin_graph_file(m) == PLUGIN_FILE == ArtifactSet.from_manifest(m, str(art)).plugin_graph
    with pytest.raises(Exception, match="CubeFrameAttention"):
        ort.InferenceSession(str(art / PLUGIN_FILE), providers=["CPUExecutionProvider"])
    seg = Segmenter.open(art, backend="ort")         # ONNX Runtime runs the decomposed graphs of the folder
    seg.set_expression("the red circle")
    assert len([r for _ in range(3) for r in seg.push(np.zeros((64, 64, 3), np.uint8))]) == 3


def test_decomposed_fallback_graphs_equal_the_normal_export(exported: Path, tiny_export: Path) -> None:
    """The folder's ONNX Runtime graphs are those of an export of the same checkpoint without the option."""
    art = exported
    for name in ("text_encoder.onnx", "clip_model.onnx"):
        normal, fallback = onnx.load(str(tiny_export / name)), onnx.load(str(art / name))
        assert normal.graph.SerializeToString() == fallback.graph.SerializeToString(), name
        assert list(normal.opset_import) == list(fallback.opset_import)


class _Reference(torch.nn.Module):
    """DESIGN section 3 as a dense masked softmax, for one node's attributes (static Tc)."""

    def __init__(self, tc: int, node: dict) -> None:
        super().__init__()
        h, w = node["grid"]
        self.register_buffer("mask", cube_frame_mask((tc, h, w), node["cube"], node["shift"], torch.device("cpu")))
        self.scale = node["scale"]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return masked_attention(q, k, v, self.mask, self.scale)[0]


def _splice(model: onnx.ModelProto, node_name: str, sub: onnx.ModelProto, prefix: str) -> None:
    """Replace node `node_name` of `model` by the graph `sub` (inputs q, k, v -> the node's first output)."""
    index, node = next((i, n) for i, n in enumerate(model.graph.node) if n.name == node_name)
    rename = dict(zip([i.name for i in sub.graph.input], node.input))
    rename[sub.graph.output[0].name] = node.output[0]
    name = lambda x: rename.get(x, f"{prefix}{x}" if x else x)
    nodes = []
    for n in sub.graph.node:
        n = onnx.NodeProto.FromString(n.SerializeToString())
        n.input[:] = [name(x) for x in n.input]
        n.output[:] = [name(x) for x in n.output]
        n.name = prefix + n.name
        nodes.append(n)
    for init in sub.graph.initializer:
        init = onnx.TensorProto.FromString(init.SerializeToString())
        init.name = prefix + init.name
        model.graph.initializer.append(init)
    del model.graph.node[index]
    for j, n in enumerate(nodes):
        model.graph.node.insert(index + j, n)


def test_plugin_nodes_compute_cube_frame_attention(exported: Path, tmp_path: Path) -> None:
    art = exported
    cfg = load_manifest(art).config
    tc = cfg.clip_len
    model = onnx.load(str(art / PLUGIN_FILE))
    head_dim = cfg.str_width // cfg.str_heads
    n_tokens = tc * (cfg.image_size // cfg.patch_size) ** 2
    for i, node in enumerate(plugin_nodes(model)):
        qkv = tuple(torch.randn(2, cfg.str_heads, n_tokens, head_dim) for _ in range(3))
        path = tmp_path / f"ref{i}.onnx"
        torch.onnx.export(_Reference(tc, node).eval(), qkv, str(path), dynamo=True, opset_version=18,
                          input_names=["q", "k", "v"], output_names=["out"],
                          dynamic_shapes={n: {0: torch.export.Dim("B", min=1, max=64)} for n in "qkv"})
        _splice(model, node["name"], onnx.load(str(path)), f"ref{i}/")
    rng = np.random.default_rng(0)
    feeds = {"frames": rng.integers(0, 256, (2, tc, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
             "history": rng.normal(size=(2, cfg.history_prompts, cfg.embed_dim)).astype(np.float32),
             "has_history": np.array([[1.0], [0.0]], np.float32)}
    text = ort.InferenceSession(str(art / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    tokens = np.zeros((2, 77), np.int64)
    tokens[:, :4] = [[49406, 1237, 2368, 49407], [49406, 3101, 320, 49407]]
    feeds.update(zip(("text_feats", "text_mask", "text_global"), text.run(None, {"tokens": tokens})))
    spliced = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    decomposed = ort.InferenceSession(str(art / "clip_model.onnx"), providers=["CPUExecutionProvider"])
    for got, want in zip(spliced.run(None, feeds), decomposed.run(None, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-4)


# ---------------------------------------------------------------- the plugin's kernel

@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="Triton needs CUDA or TRITON_INTERPRET=1 (make test sets it)")
def test_plugin_kernel_matches_the_reference() -> None:
    from rvos_edge.kernels.trt_plugin import Geometry, launch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b, heads, tc, h, w, d, cube, shift = 2, 2, 2, 4, 5, 16, 2, 1
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, heads, tc * h * w, d, generator=g).to(device) for _ in range(3))
    out, lse = torch.empty_like(q), torch.empty(b, heads, tc * h * w, device=device)
    launch(q, k, v, out, lse, Geometry(h, w, cube, shift, d, d ** -0.5))
    ref, ref_lse = masked_attention(q, k, v, cube_frame_mask((tc, h, w), cube, shift, q.device), d ** -0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=0)


AOT = """
import json
from triton.backends.compiler import GPUTarget
from rvos_edge.kernels.trt_plugin import Geometry, compile_ptx, entry_params
out = {}
for dtype, arch in (("fp32", 87), ("fp16", 80)):
    geo = Geometry(4, 4, 2, 1, 32, 32 ** -0.5, dtype)
    k = compile_ptx(geo, GPUTarget("cuda", arch, 32))
    tiles, meta, warps = geo.config()
    out[dtype] = {"name": k.name, "params": [p.split()[1] for p in entry_params(k.ptx, k.name)],
                  "target": f".target sm_{arch}" in k.ptx, "tiles": k.tiles == tiles,
                  "threads": k.threads == warps * 32, "shared": k.shared}
print(json.dumps(out))
"""


def test_ahead_of_time_kernel_is_ptx_in_tensorrt_calling_convention() -> None:
    """Compiled without a GPU (Triton's NVIDIA backend targets any sm): q, k, v, Tc, out, lse and nothing else."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}     # compile, not interpret
    p = subprocess.run([sys.executable, "-c", AOT], capture_output=True, text=True, timeout=300,
                       env={**env, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    import json
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for dtype in ("fp32", "fp16"):
        k = out[dtype]
        assert k["name"] == "cube_frame_plugin_kernel" and k["target"] and k["tiles"] and k["threads"]
        assert k["params"] == [".u64", ".u64", ".u64", ".u32", ".u64", ".u64"] and k["shared"] > 0


PTX = """.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3
)
{
\tld.param.b64 %rd1, [k_param_0];
\tld.param.b32 %r1, [k_param_1];
\tld.param.b64 %rd2, [k_param_2];
}
"""


def test_strip_trailing_params() -> None:
    stripped = strip_trailing_params(PTX, "k", 3)
    assert "k_param_3" not in stripped and "k_param_2\n)" in stripped and stripped.endswith(PTX[PTX.index(")"):])
    with pytest.raises(RuntimeError, match="k_param_2 of k is used"):
        strip_trailing_params(PTX, "k", 2)


def test_plugin_is_usable_here() -> None:
    assert plugin_blocker() is None             # torch and triton >= 3.3 are dev dependencies
