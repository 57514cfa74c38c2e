"""FP16 variant of an ONNX graph: FP16 weights and activations, FP32 where FP16 loses accuracy.

    model16 = to_fp16(onnx.load("clip_model.onnx"))

What stays FP32 (`fp32_nodes`):
- normalisations and statistics: LayerNormalization, InstanceNormalization (the
  exported GroupNorm), GroupNormalization, BatchNormalization, Softmax,
  LogSoftmax, every Reduce* op, and Pow / Sqrt (the variance path of a
  decomposed normalisation; this exporter writes LayerNormalization itself);
- the cosine similarity: each ReduceL2 (F.normalize) and everything computed
  from it up to and including the next reduction (clip, divide, multiply, sum);
- the final logits: the last compute node before ``mask_logits`` (the head's 1x1
  conv) and everything downstream of it (the logits and the history pooling).
Every other node that computes on floats runs in FP16. Float initializers (and
Constant nodes) are stored once per precision their consumers need: FP16
copies are clamped to +-65504 (infinities stay infinite). Casts are inserted
where a tensor crosses between the two precisions, and graph inputs and outputs
keep their dtypes (a Cast right after a float input, right before a float
output). Inputs whose type the op fixes (Resize's roi and scales), and inputs
of ops that take any type (Shape, Cast, Size), are left as they are.
"""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from rvos_edge.artifacts.manifest import CLIP_MODEL, GRAPH_NAMES, TEXT_ENCODER, Manifest
from rvos_edge.calib.artifacts import add_variant, engines_from_models, open_folder, save_graph, variant_file
from rvos_edge.calib.data import calibration_data
from rvos_edge.data import SyntheticDataset
from rvos_edge.engines import open_engines
from rvos_edge.engines.ort.session import ort_session

FP32_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
                      "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                      "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin", "ReduceProd", "Pow", "Sqrt"})
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten"})
_ANY_TYPE_INPUTS = frozenset({"Shape", "Cast", "Size"})
_FIXED_INPUTS = {"Resize": {1, 2}}
_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor of the graph (inferred types, inputs, outputs, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    infos = [*inferred.value_info, *inferred.input, *inferred.output]
    names = {v.name for v in infos if v.type.tensor_type.elem_type == _FLOAT}
    names |= {t.name for t in model.graph.initializer if t.data_type == _FLOAT}
    return names


def _closure(seeds: list[onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]],
             stop_at_reduce: bool) -> set[str]:
    """Names of `seeds` and the nodes downstream of them (stopping after a Reduce* node when asked)."""
    seen: set[str] = set()
    todo = list(seeds)
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if stop_at_reduce and node.op_type.startswith("Reduce") and node.op_type != "ReduceL2":
            continue
        todo += [c for o in node.output for c in consumers.get(o, [])]
    return seen


def fp32_nodes(model: onnx.ModelProto, logits: str | None = "mask_logits") -> set[str]:
    """Names of the nodes that `to_fp16` keeps in FP32 (see the module docstring).

    logits: the graph output whose producing compute node and everything after it
    stay FP32; None (or an output the graph lacks) for none.
    """
    graph = model.graph
    consumers = _consumers(graph)
    keep = {n.name for n in graph.node if n.op_type in FP32_OPS}
    keep |= _closure([n for n in graph.node if n.op_type == "ReduceL2"], consumers, stop_at_reduce=True)
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get(logits) if logits else None
    while node is not None and node.op_type in _SHAPE_OPS:
        node = producers.get(node.input[0])
    if node is not None:
        keep |= _closure([node], consumers, stop_at_reduce=False)
    return keep


def _unique_node_names(graph: onnx.GraphProto) -> None:
    """Name unnamed nodes (the FP32 selection and the caches are keyed by node name)."""
    used = {n.name for n in graph.node}
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in used:
                node.name += "_"
            used.add(node.name)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Float Constant nodes become initializers, so that constants are converted in one place."""
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.data_type == _FLOAT:
            tensor = TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _half(tensor: TensorProto, name: str) -> TensorProto:
    array = numpy_helper.to_array(tensor)
    finite = np.isfinite(array)
    array = np.where(finite, np.clip(array, -_FP16_MAX, _FP16_MAX), array).astype(np.float16)
    return numpy_helper.from_array(array, name)


def to_fp16(model: onnx.ModelProto, logits: str | None = "mask_logits") -> onnx.ModelProto:
    """An FP16 copy of `model` (see the module docstring); `model` is not changed."""
    model16 = onnx.ModelProto()
    model16.CopyFrom(model)
    graph = model16.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ValueError("graphs with sub-graphs (If, Loop, Scan) are not supported by the FP16 transform")
    _unique_node_names(graph)
    _constants_to_initializers(graph)
    floats = _float_tensors(model16)
    keep32 = fp32_nodes(model16, logits)
    producers = {o: n for n in graph.node for o in n.output}

    def precision(node: onnx.NodeProto) -> int:
        return _FLOAT if node.name in keep32 else _HALF

    # graph outputs produced in FP16 get a Cast back to FP32 under their own name
    tail = []
    rename = {}
    for out in graph.output:
        node = producers.get(out.name)
        if out.name in floats and node is not None and precision(node) == _HALF:
            rename[out.name] = f"{out.name}__fp16"
            tail.append(helper.make_node("Cast", [rename[out.name]], [out.name], to=_FLOAT, name=f"{out.name}__to_fp32"))
    for node in graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.input[:] = [rename.get(i, i) for i in node.input]
    floats |= set(rename.values())

    initializers = {t.name: t for t in graph.initializer}
    halves: dict[str, TensorProto] = {}
    casts: dict[tuple[str, int], str] = {}
    domain = {i.name: _FLOAT for i in graph.input}         # float tensors: the precision they are held in
    nodes = []
    for node in graph.node:
        want = precision(node)
        for i, name in enumerate(node.input):
            if (not name or name not in floats or node.op_type in _ANY_TYPE_INPUTS
                    or i in _FIXED_INPUTS.get(node.op_type, ())):
                continue
            if name in initializers:
                if want == _HALF:
                    if name not in halves:
                        halves[name] = _half(initializers[name], f"{name}__fp16")
                    node.input[i] = halves[name].name
                continue
            if domain.get(name, _FLOAT) != want:
                key = (name, want)
                if key not in casts:
                    casts[key] = f"{name}__to_{'fp16' if want == _HALF else 'fp32'}"
                    nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want, name=casts[key]))
                node.input[i] = casts[key]
        if want == _HALF:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
                    attr.i = _HALF
                elif node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == _FLOAT:
                    attr.t.CopyFrom(_half(attr.t, attr.t.name))
        for out in node.output:
            if out in floats:
                domain[out] = want
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes + tail)

    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [t for t in halves.values()])
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model16, strict_mode=False)


def ort_cpu_fp32_ops(model16: onnx.ModelProto) -> list[str]:
    """Op types of `model16`'s FP16 nodes for which ONNX Runtime's CPU provider has no FP16 kernel.

    Each op type is tried alone (one node, its FP16 inputs as graph inputs): ORT
    runs such a node in FP32 between Casts it inserts itself, which shows in the
    session's optimized model. Results are the same numerics as FP16 storage with
    FP32 arithmetic for those ops.
    """
    inferred = onnx.shape_inference.infer_shapes(model16, strict_mode=False).graph
    infos = {v.name: v for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    weights = {t.name: t for t in inferred.initializer}
    missing, tried = [], set()
    for node in inferred.node:
        names = [i for i in node.input if i]
        if (node.op_type in tried or node.op_type == "Cast" or not all(i in infos or i in weights for i in [*names, *node.output])
                or not any(i in infos and infos[i].type.tensor_type.elem_type == _HALF for i in names)):
            continue
        tried.add(node.op_type)
        graph = helper.make_graph([node], "probe", [infos[i] for i in names if i not in weights],
                                  [infos[o] for o in node.output], [weights[i] for i in names if i in weights])
        probe = helper.make_model(graph, opset_imports=model16.opset_import, ir_version=model16.ir_version)
        with tempfile.TemporaryDirectory(prefix="rvos-edge-fp16-") as tmp:
            ort_session(probe.SerializeToString(), optimize=False, optimized_model=f"{tmp}/probe.onnx")
            if any(n.op_type == "Cast" for n in onnx.load(f"{tmp}/probe.onnx").graph.node):
                missing.append(node.op_type)
    return sorted(missing)


@dataclass
class Fp16Build:
    """What `build_fp16` wrote and how the FP16 graphs compare with FP32 (ORT CPU, two real clips).

    max_abs_diff: per output; mask_agreement: fraction of mask pixels (logit > 0) that agree;
    cpu_fp32_ops: per graph, op types ORT's CPU provider runs in FP32 (`ort_cpu_fp32_ops`).
    """

    manifest: Manifest
    files: dict[str, str]
    max_abs_diff: dict[str, float]
    mask_agreement: float
    cpu_fp32_ops: dict[str, list[str]]


def build_fp16(directory: str | os.PathLike[str], threads: int | None = None, progress: bool = True) -> Fp16Build:
    """Write ``<graph>.fp16.onnx`` for both graphs of an FP32 artifact folder and record variant "fp16".

    Before writing, the FP16 graphs are run against the FP32 ones in ONNX Runtime
    (CPU) on the first two clips of synthetic video 0 of world 0, the second with
    the first one's history.
    """
    directory = Path(directory)
    manifest = open_folder(directory)
    steps = tqdm(GRAPH_NAMES, desc="fp16", unit="graph", disable=not progress, leave=False)
    models = {g: to_fp16(onnx.load(str(directory / manifest.graph_files()[g]))) for g in steps}
    fp32 = open_engines(directory, "ort", "fp32", threads=threads)
    fp16 = engines_from_models(manifest, models[TEXT_ENCODER], models[CLIP_MODEL], "fp16", str(directory), threads)
    calib = calibration_data(fp32, SyntheticDataset(0, 1), samples=2, progress=False)
    diffs: dict[str, float] = {}
    agree = []
    pairs = [(fp32.text, fp16.text, calib.text[0]), *((fp32.clip, fp16.clip, feeds) for feeds in calib.clip)]
    for ref_runner, runner, feeds in pairs:
        ref, out = ref_runner.run(feeds), runner.run(feeds)
        for name, value in ref.items():
            if value.dtype == np.float32:
                diffs[name] = max(diffs.get(name, 0.0), float(np.abs(out[name].astype(np.float32) - value).max()))
        if "mask_logits" in ref:
            agree.append(float(np.mean((ref["mask_logits"] > 0) == (out["mask_logits"] > 0))))
    files = {g: variant_file(g, "fp16") for g in GRAPH_NAMES}
    for g in GRAPH_NAMES:
        save_graph(models[g], directory / files[g])
    manifest = add_variant(directory, manifest, "fp16", files, list(files.values()))
    return Fp16Build(manifest, files, diffs, float(np.mean(agree)), {g: ort_cpu_fp32_ops(models[g]) for g in GRAPH_NAMES})
