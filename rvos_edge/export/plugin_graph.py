"""The CubeFrameAttention plugin graph: one ONNX custom node per CF-MSA, for TensorRT.

``rvos-edge export --attention plugin`` (rvos_edge.export.onnx_export) writes the clip
graph with every CF-MSA of the STR as one node

    CubeFrameAttention(q, k, v) -> (out, lse)       domain "rvos_edge", opset version 1
    q, k, v, out: [B, heads, Tc*H*W, d] float; lse: [B, heads, Tc*H*W] float32 (unused by the model)
    attributes: grid = [H, W] (Tc follows from the token count), cube = Mw, shift (0 or Mw//2),
                heads, scale (1/sqrt(d)), plugin_namespace = "rvos_edge" (for TensorRT's ONNX parser)

with DESIGN section 3's semantics. The exporter normally traces CF-MSA as standard
ops (`rvos_edge.kernels.attention` does so whenever it is exporting); with the
model's attention switched to "plugin" it records the `rvos_edge::cube_frame_attention`
custom op instead, and the dynamo exporter's ``custom_translation_table`` maps that op
to the node (`translate`). The rest of the graph is the normal export's. TensorRT's ONNX parser
looks the node up in the plugin registry by op type and ``plugin_namespace``
(nodes it has no importer for fall back to plugins); ONNX Runtime has no kernel
for it, so the plugin graph is for TensorRT only and the folder keeps the
decomposed graphs, which every backend runs and TensorRT falls back to.

The TensorRT side (the plugin's registration with ``tensorrt.plugin``) is
`rvos_edge.engines.trt.plugin`. Importing this module imports onnx only.
"""
from typing import Any

import onnx

from rvos_edge.artifacts.tensorrt import PLUGIN_OP

DOMAIN, OP_TYPE = PLUGIN_OP.split("::")
PLUGIN_FILE = "clip_model.plugin.onnx"


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


def register_schema() -> None:
    """Register the node's schema with onnx (once), so the exporter and onnx.checker know it."""
    if not onnx.defs.has(OP_TYPE, DOMAIN):
        onnx.defs.register_schema(op_schema())


def translate(q: Any, k: Any, v: Any, height: int, width: int, cube: int, shift: int, scale: float,
               impl: str) -> Any:
    """`rvos_edge::cube_frame_attention` (out, lse) -> one CubeFrameAttention node (impl is the eager choice)."""
    from onnxscript.values import Opset

    return getattr(Opset(DOMAIN, 1), OP_TYPE)(q, k, v, grid=[height, width], cube=cube, shift=shift,
                                               heads=int(q.shape[1]), scale=scale, plugin_namespace=DOMAIN,
                                               _outputs=2)


def plugin_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The CubeFrameAttention nodes of `model`: {"name", "inputs", "outputs", **attributes}, in graph order."""
    return [{"name": n.name, "inputs": list(n.input), "outputs": list(n.output),
             **{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}}
            for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
