"""Naming the nodes of an exported graph: layer groups and pattern-matchable paths.

The dynamo exporter names nodes after the aten op (``node_MatMul_90``,
``node_conv2d_8``); the module a node comes from is in its metadata
(``pkg.torch.onnx.name_scopes``). That metadata cannot tell every node apart on
its own: the Stage-1 MCA and PRTC call a vision layer's weights outside the
layer's own ``forward`` (so their nodes have no module scope, or the scope of a
sub-module such as ``...resblocks.1.attn.out_proj``), and identical constants
are shared between layers. So `node_groups` walks the nodes in graph order
(the exporter keeps execution order) and tracks where the model is:

- the clip graph starts in vision layer 0 (patch embedding, prompt projections);
- a node under ``model.clip.visual.transformer.resblocks.<l>.*`` starts vision
  layer l, except that a node whose scopes include the block
  ``...resblocks.<l>`` itself is the PRTC encoder after layer l (PRTC calls the
  block as a module; the Stage-1 layer calls its parts), and sub-module nodes
  of layer l that follow it belong to the PRTC decoder;
- ``model.vlff``, ``model.reasoner`` and ``model.head`` start VLFF, STR and the head;
- nodes without a module scope take the group of the node before them (so
  ``ln_post`` and CLIP's projection close the last vision quarter, the history
  pooling follows the head).

Groups: ``text_encoder`` (the whole text graph), ``vision_q1`` .. ``vision_q4``
(the vision layers split into four contiguous quarters as numpy.array_split
does; with fewer than four layers the last quarters are empty), ``prtc``,
``vlff``, ``str``, ``head``.

A node's path, which ``--exclude`` patterns match (fnmatch, case-sensitive), is
``<graph>/<group>/<module or ->/<op type>/<node name>``, e.g.
``clip_model/head/model.head.out/Conv/node_conv2d_8`` or
``text_encoder/text_encoder/model.clip.transformer.resblocks.0.attn/MatMul/node_MatMul_12``.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from typing import Iterable

import numpy as np
import onnx

from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER

GROUPS = ("text_encoder", "vision_q1", "vision_q2", "vision_q3", "vision_q4", "prtc", "vlff", "str", "head")
_BLOCK = re.compile(r"^model\.clip\.visual\.transformer\.resblocks\.(\d+)(\.|$)")
_PARTS = {"model.vlff": "vlff", "model.reasoner": "str", "model.head": "head"}
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})


def name_scopes(node: onnx.NodeProto) -> list[str]:
    """The exporter's scope list of `node` (module paths, then the op's own name); [] when absent."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes if isinstance(s, str)]
    return []


def module_path(node: onnx.NodeProto) -> str:
    """The innermost module `node` was traced in ("" for code outside any module)."""
    scopes = [s for s in name_scopes(node)[:-1] if s.startswith("model")]
    return scopes[-1] if scopes else ""


def vision_quarters(layers: int) -> list[int]:
    """Quarter index (0..3) of each vision layer: contiguous, earlier quarters one layer larger."""
    return [q for q, part in enumerate(np.array_split(np.arange(layers), 4)) for _ in part]


def node_groups(model: onnx.ModelProto, graph: str) -> dict[str, str]:
    """{node name: group} for every node of `graph` (TEXT_ENCODER or CLIP_MODEL); see the module docstring."""
    if graph == TEXT_ENCODER:
        return {n.name: "text_encoder" for n in model.graph.node}
    if graph != CLIP_MODEL:
        raise ValueError(f"unknown graph {graph!r}")
    layers = [m for n in model.graph.node if (m := _BLOCK.match(module_path(n)))]
    quarters = vision_quarters(1 + max((int(m[1]) for m in layers), default=0))
    state: tuple[str, int] = ("vision", 0)
    groups = {}
    for node in model.graph.node:
        path = module_path(node)
        block = _BLOCK.match(path)
        part = next((g for prefix, g in _PARTS.items() if path == prefix or path.startswith(prefix + ".")), None)
        if part is not None:
            state = (part, -1)
        elif block is not None:
            layer = int(block[1])
            if f"model.clip.visual.transformer.resblocks.{layer}" in name_scopes(node):
                state = ("prtc", layer)
            elif state != ("prtc", layer):
                state = ("vision", layer)
        kind, layer = state
        groups[node.name] = f"vision_q{quarters[layer] + 1}" if kind == "vision" else kind
    return groups


def node_paths(model: onnx.ModelProto, graph: str) -> dict[str, str]:
    """{node name: "<graph>/<group>/<module or ->/<op type>/<node name>"} in graph order."""
    groups = node_groups(model, graph)
    return {n.name: f"{graph}/{groups[n.name]}/{module_path(n) or '-'}/{n.op_type}/{n.name}" for n in model.graph.node}


def matching(paths: dict[str, str], patterns: Iterable[str]) -> set[str]:
    """Names of the nodes whose path matches any of the fnmatch `patterns`."""
    patterns = list(patterns)
    return {name for name, path in paths.items() if any(fnmatch.fnmatchcase(path, p) for p in patterns)}


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` where every node computed from initializers only is replaced by its value.

    The exporter leaves weight transposes and slices (``Transpose(in_proj_weight)``)
    as nodes; quantizers need weights as initializers. Nodes are evaluated with
    onnx's reference evaluator; node names and metadata of the other nodes stay.
    """
    from onnx.reference import ReferenceEvaluator

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    values = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if not inputs or not all(i in values for i in inputs) or node.op_type in _NONDETERMINISTIC:
            keep.append(node)
            continue
        single = onnx.helper.make_graph([node], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None)
                                                            for o in node.output], [values[i] for i in inputs])
        fold_model = onnx.helper.make_model(single, opset_imports=folded.opset_import)
        for name, value in zip(node.output, ReferenceEvaluator(fold_model).run(None, {})):
            values[name] = onnx.numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(values[name])
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return folded
