"""The CubeFrameAttention plugin: one ONNX custom node per CF-MSA, and its TensorRT plugin.

ONNX side (``rvos-edge export --attention plugin``): `export_plugin_graph` exports
the clip graph with every CF-MSA of the STR as one node

    CubeFrameAttention(q, k, v) -> (out, lse)       domain "rvos_edge", opset version 1
    q, k, v, out: [B, heads, Tc*H*W, d] float; lse: [B, heads, Tc*H*W] float32 (unused by the model)
    attributes: grid = [H, W] (Tc follows from the token count), cube = Mw, shift (0 or Mw//2),
                heads, scale (1/sqrt(d)), plugin_namespace = "rvos_edge" (for TensorRT's ONNX parser)

with DESIGN section 3's semantics. The exporter normally traces CF-MSA as standard
ops (`rvos_edge.kernels.attention` does so whenever it is exporting);
`plugin_attention` makes the STR call the `rvos_edge::cube_frame_attention` custom
op instead, and the dynamo exporter's ``custom_translation_table`` maps that op to
the node. The rest of the graph is the normal export's. TensorRT's ONNX parser
looks the node up in the plugin registry by op type and ``plugin_namespace``
(nodes it has no importer for fall back to plugins); ONNX Runtime has no kernel
for it, so the plugin graph is for TensorRT only and the folder keeps the
decomposed graphs, which every backend runs and TensorRT falls back to.

TensorRT side: `register_plugin` registers ``rvos_edge::CubeFrameAttention`` with
``tensorrt.plugin`` (quickly deployable plugins): the shape function; a
just-in-time implementation (TensorRT >= 10.6) that launches the Triton kernel
on TensorRT's buffers and stream through torch; and, with TensorRT >= 10.9, an
ahead-of-time implementation returning the kernel compiled to PTX, which TensorRT
bakes into the engine so that it runs without Python. Both run
`rvos_edge.engines.trt.plugin_kernel` (the fused Triton kernel the model uses).
Importing this module imports onnx and numpy only.
"""
import contextlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt
import onnx

from rvos_edge.artifacts.manifest import GraphSpec
from rvos_edge.artifacts.tensorrt import PLUGIN_OP

DOMAIN, OP_TYPE = PLUGIN_OP.split("::")
PLUGIN_FILE = "clip_model.plugin.onnx"
MIN_TRITON = (3, 3)          # ASTSource(fn, signature, constexprs) for the ahead-of-time kernel
_registered: set[str] = set()


def op_schema() -> onnx.defs.OpSchema:
    """The node's ONNX schema (registered with onnx so the exporter and onnx.checker know it)."""
    param, attr, kind = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute, onnx.defs.OpSchema.AttrType
    return onnx.defs.OpSchema(
        OP_TYPE, DOMAIN, 1,
        doc="Cube-frame multi-head self-attention (rvos-edge DESIGN section 3); a TensorRT plugin node.",
        inputs=[param("q", "T", "[B, heads, Tc*H*W, d]"), param("k", "T", "like q"), param("v", "T", "like q")],
        outputs=[param("out", "T", "like q"), param("lse", "tensor(float)", "logsumexp [B, heads, Tc*H*W]")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "q, k, v and out")],
        attributes=[attr("grid", kind.INTS, "[H, W] of the token grid"), attr("cube", kind.INT, "cube size Mw"),
                    attr("shift", kind.INT, "0 or Mw//2"), attr("heads", kind.INT, "attention heads"),
                    attr("scale", kind.FLOAT, "softmax scale"),
                    attr("plugin_namespace", kind.STRING, "TensorRT plugin namespace")])


def _register_schema() -> None:
    if not onnx.defs.has(OP_TYPE, DOMAIN):
        onnx.defs.register_schema(op_schema())


def _translate(q: Any, k: Any, v: Any, height: int, width: int, cube: int, shift: int, scale: float,
               impl: str) -> Any:
    """`rvos_edge::cube_frame_attention` (out, lse) -> one CubeFrameAttention node (impl is the eager choice)."""
    from onnxscript.values import Opset

    return getattr(Opset(DOMAIN, 1), OP_TYPE)(q, k, v, grid=[height, width], cube=cube, shift=shift,
                                               heads=int(q.shape[1]), scale=scale, plugin_namespace=DOMAIN,
                                               _outputs=2)


@contextlib.contextmanager
def plugin_attention() -> Iterator[None]:
    """Within the block, the STR's CF-MSA records the custom op (so that export keeps it as one node)."""
    import torch

    import rvos_edge.model.str as str_module
    from rvos_edge.kernels.reference import default_scale

    def as_custom_op(q, k, v, grid, cube, shift=0, impl="auto", scale=None):
        _, h, w = grid
        return torch.ops.rvos_edge.cube_frame_attention(q, k, v, h, w, cube, shift, default_scale(q, scale),
                                                        "decomposed")[0]

    original = str_module.cube_frame_attention
    str_module.cube_frame_attention = as_custom_op
    try:
        yield
    finally:
        str_module.cube_frame_attention = original


def plugin_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The CubeFrameAttention nodes of `model`: {"name", "inputs", "outputs", **attributes}, in graph order."""
    return [{"name": n.name, "inputs": list(n.input), "outputs": list(n.output),
             **{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}}
            for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def export_plugin_graph(model: Any, spec: GraphSpec, inputs: dict, path: Path, clip_len: tuple[int, int]) -> None:
    """Export `model`'s clip graph to `path` with one CubeFrameAttention node per CF-MSA (checked)."""
    import torch

    from rvos_edge.export.onnx_export import ClipModelGraph, _export_graph

    _register_schema()
    with plugin_attention():
        _export_graph(ClipModelGraph(model), spec, inputs, path, clip_len,
                      translation={torch.ops.rvos_edge.cube_frame_attention.default: _translate})
    cfg = model.config
    nodes = plugin_nodes(onnx.load(str(path), load_external_data=False))
    want = [(i % 2) * (cfg.cube // 2) for i in range(cfg.str_blocks)]
    if [n["shift"] for n in nodes] != want:
        raise RuntimeError(f"{path.name} has CubeFrameAttention shifts {[n['shift'] for n in nodes]}, expected {want}")


# ---------------------------------------------------------------- TensorRT plugin

def plugin_blocker() -> str | None:
    """Why this machine cannot build or run the plugin apart from the TensorRT version; None if it can."""
    for module in ("torch", "triton"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    import triton

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < MIN_TRITON:
        return f"triton {triton.__version__} is older than {MIN_TRITON[0]}.{MIN_TRITON[1]}"
    return None


def _geometry(q: Any, grid: np.ndarray, cube: int, shift: int, scale: float, head_dim: int) -> Any:
    import tensorrt as trt

    from rvos_edge.engines.trt.plugin_kernel import Geometry

    return Geometry(int(grid[0]), int(grid[1]), int(cube), int(shift), int(head_dim), float(scale),
                    "fp16" if q.dtype == trt.float16 else "fp32")


def register_plugin(aot: bool) -> None:
    """Register ``rvos_edge::CubeFrameAttention`` with tensorrt.plugin (once per process).

    aot: also register the ahead-of-time implementation (TensorRT >= 10.9; the
    network then needs NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS,
    since the plugin has both implementations).
    """
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if PLUGIN_OP not in _registered:
        @trtp.register(PLUGIN_OP)
        def desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, grid: npt.NDArray[np.int32], cube: int,
                 shift: int, heads: int, scale: float) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
            lse = trtp.from_shape_expr((q.shape_expr[0], q.shape_expr[1], q.shape_expr[2]), dtype=trt.float32)
            return q.like(), lse

        @trtp.autotune(PLUGIN_OP)
        def autotune(q, k, v, outputs) -> list[trtp.AutoTuneCombination]:
            # weakly typed builds (TensorRT 10.x with FP16) may pick either; lse stays FP32
            return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32")]

        @trtp.impl(PLUGIN_OP)
        def impl(q, k, v, grid, cube, shift, scale, outputs, stream) -> None:
            import torch

            from rvos_edge.engines.trt.plugin_kernel import launch

            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                tq, tk, tv, out, lse = (torch.as_tensor(t, device="cuda") for t in (q, k, v, *outputs))
                launch(tq, tk, tv, out, lse, _geometry(q, grid, cube, shift, scale, q.shape[3]))

        _registered.add(PLUGIN_OP)
    if aot and f"{PLUGIN_OP}/aot" not in _registered:
        @trtp.aot_impl(PLUGIN_OP)
        def aot_impl(q, k, v, grid, cube, shift, scale, outputs, tactic) -> tuple[
                str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
            from rvos_edge.engines.trt.plugin_kernel import compile_ptx

            geo = _geometry(q, grid, cube, shift, scale, q.shape_expr[3].constant_value())
            kernel = compile_ptx(geo)
            frames = q.shape_expr[2] // (geo.height * geo.width)
            params = trtp.KernelLaunchParams()
            params.grid_x = frames * kernel.tiles
            params.grid_y = q.shape_expr[0] * q.shape_expr[1]
            params.block_x = kernel.threads
            params.shared_mem = kernel.shared
            return kernel.name, kernel.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(frames)])

        _registered.add(f"{PLUGIN_OP}/aot")
