"""INT8 for both graphs: activation statistics, explicit Q/DQ variants, TensorRT implicit-INT8 caches.

    result = calibrate("artifacts/", "synthetic:7:64", method="entropy", samples=64)

Steps (`calibrate`):
1. calibration batches from the data (`rvos_edge.calib.data`), histories by the FP32 model;
2. weights computed by nodes are folded into initializers (`graph.fold_constants`);
3. statistics (`stats.ActivationStats`) of the activation tensors of the
   QUANT_OPS nodes (MatMul, Gemm, Conv, ConvTranspose; their inputs that are
   not weights, and their outputs), from one run of the FP32 graph per batch;
   amax by `method`, except for attention probabilities (Softmax outputs), which
   always take their maximum (`calibrated_amax`);
4. the Q/DQ variant ``<graph>.int8.onnx`` of each graph that has quantized nodes:
   - with NVIDIA ModelOpt's ONNX quantization (``modelopt.onnx.quantization.quantize``,
     its INT8 mode, whose Q/DQ placement follows TensorRT's rules) when
     `quantizer` is "modelopt", or "auto" and ModelOpt is importable. ModelOpt
     calibrates by itself on the same batches (methods entropy and max), is given
     the quantized nodes as ``nodes_to_quantize`` and keeps the rest FP32. This
     branch is not exercised by the tests (ModelOpt is not installed where they run);
   - with onnxruntime.quantization (QDQ format) when `quantizer` is "ort", or "auto"
     without ModelOpt: INT8 symmetric activations per tensor with the amax of `method`,
     INT8 symmetric weights per output channel, biases left in float, no Q/DQ on the
     outputs of the quantized ops (TensorRT's recommendation). Nodes that are not quantized get
     their float inputs back (`strip_unquantized`), so an excluded node never
     touches a Q/DQ pair even when it shares a tensor or a weight with a quantized one;
   - with OpenVINO's NNCF when `quantizer` is "nncf" (the nncf extra; "auto" never picks it):
     ``nncf.quantize`` on its ONNX backend, ONNX in and Q/DQ ONNX out, so ONNX Runtime, OpenVINO and
     TensorRT read the variant as they read the others. NNCF calibrates by itself on the same batches
     (subset_size: all of them) with its own ranges, so `method` only shapes the TensorRT caches:
     weights symmetric INT8 per output channel (min/max), activations per tensor, asymmetric (the
     MIXED preset of ``ModelType.TRANSFORMER``), from the mean over batches of their min and max.
     NNCF places the pairs itself (on the producer side of a Reshape / Transpose / Slice in front of
     a quantized node, on a Resize's input, on the token embedding's weights) and corrects biases
     for the quantization error (fast bias correction). Its IgnoredScope (node names) holds the
     excluded nodes and the products of two activations (`activation_products`), so it quantizes
     the same MatMul / Conv nodes as the others, and `strip_unquantized` follows as above.
     SmoothQuant is off: with NNCF 3.4's default for MatMuls (alpha 0.95) demo's mask IoU against
     FP32 on 8 held-out clips fell from 0.98 to 0.93 (measured; without bias correction: 0.97).
     NNCF imports torch when it is installed, and runs without it. Against onnxruntime.quantization
     (benchmarks/nncf_vs_ort.py, Intel Xeon with AVX-512 VNNI and AMX): better on vit-b16 (random
     weights, 8 clips: mask IoU vs FP32 0.936 against 0.885, as fast on OpenVINO, 15% faster on
     ORT), not on demo (held-out mask IoU 0.953 against 0.972 with 64 clips, 8-13% slower), so it
     is an option, not the default;
5. ``<graph>.calib.cache``: the TensorRT calibration cache from the same statistics
   (scale = amax / 127, `stats.write_trt_cache`) for each quantized graph, whatever the quantizer
   (ModelOpt's and NNCF's own ranges stay in their Q/DQ graphs); it covers every calibrated tensor,
   attention products' inputs included (in implicit mode TensorRT chooses which layers run in INT8);
6. the manifest: variant "int8" (a graph with nothing to quantize, e.g. an
   excluded text encoder, names its FP32 file) and "calibration" (method, samples,
   seed, data, exclude patterns, "quantizer" (ort, modelopt or nncf), "tool" (its name and
   version, e.g. "nncf 3.4.0"), TensorRT version, caches).

Quantized nodes: every `quantizable_nodes` node of both graphs (Conv,
ConvTranspose, and MatMul / Gemm with a weight operand) whose path (see
`rvos_edge.calib.graph`) matches none of `exclude`. LayerNorm, Softmax, the
reductions, attention's activation-by-activation products and every other op
stay float: on ONNX Runtime's CPU provider a product of two dequantized
activations is not fused into an integer kernel (Q/DQ only costs time), and
attention probabilities lose the most in INT8.
DEFAULT_EXCLUDE keeps the head's last conv (the logits) in float; add
``text_encoder/*`` to keep the text encoder in float.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import helper
from tqdm import tqdm

from rvos_edge.artifacts.manifest import CLIP_MODEL, GRAPH_NAMES, Manifest
from rvos_edge.artifacts.precision import CALIBRATION_METHODS, QUANTIZERS
from rvos_edge.calib.artifacts import add_variant, open_folder, save_graph, variant_file
from rvos_edge.calib.data import CalibrationData, calibration_data
from rvos_edge.calib.graph import fold_constants, matching, node_paths
from rvos_edge.calib.stats import DEFAULT_TRT_VERSION, ActivationStats, write_trt_cache
from rvos_edge.data import open_dataset
from rvos_edge.engines import open_engines
from rvos_edge.engines.ort.session import ort_session
from rvos_edge.errors import UserError
from rvos_edge.extras import require

QUANT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
DEFAULT_EXCLUDE = ("*/model.head.out/*",)
_TOOLS = {"ort": ("onnxruntime.quantization", "onnxruntime"), "modelopt": ("modelopt", "nvidia-modelopt"),
          "nncf": ("nncf", "nncf")}
"""Each resolved quantizer -> its name in the manifest's "tool" and the distribution whose version follows."""
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Where", "Slice", "Concat",
                           "Expand", "Split", "Cast"})


@dataclass
class GraphCalibration:
    """One graph: its folded FP32 model, node paths, statistics and what was quantized."""

    folded: onnx.ModelProto
    paths: dict[str, str]
    stats: ActivationStats
    quantized: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


@dataclass
class CalibrationResult:
    """What `calibrate` did: the manifest written, per-graph calibration, the amax used, the quantizer."""

    manifest: Manifest
    graphs: dict[str, GraphCalibration]
    amax: dict[str, dict[str, float]]
    quantizer: str
    data: CalibrationData
    directory: str

    def summary(self) -> str:
        """One line: data, method, nodes quantized and excluded per graph, quantizer, caches."""
        c = self.manifest.calibration or {}
        parts = ", ".join(f"{g} {len(r.quantized)} quantized / {len(r.excluded)} excluded" for g, r in self.graphs.items())
        return (f"calibrated {self.directory} on {c['data']} ({c['samples']} clips, {c['method']}) with {c['tool']}: "
                f"weighted MatMul/Gemm and Conv/ConvTranspose nodes {parts}; TensorRT {c['trt_version']} calibration caches: "
                f"{', '.join(c['cache'].values()) or 'none'}")


def modelopt_available() -> bool:
    """Whether NVIDIA ModelOpt's ONNX quantization can be imported."""
    try:
        return importlib.util.find_spec("modelopt.onnx.quantization") is not None
    except ModuleNotFoundError:
        return False


def resolve_quantizer(quantizer: str) -> str:
    """"ort", "modelopt" or "nncf" for `quantizer` ("auto": ModelOpt when installed, never NNCF)."""
    if quantizer not in QUANTIZERS:
        raise UserError(f"unknown quantizer {quantizer!r} (choose from {', '.join(QUANTIZERS)})")
    if quantizer == "auto":
        return "modelopt" if modelopt_available() else "ort"
    if quantizer == "modelopt" and not modelopt_available():
        raise UserError("NVIDIA ModelOpt is not installed (pip install nvidia-modelopt[onnx]); use --quantizer ort")
    if quantizer == "nncf":
        require("nncf", "--quantizer nncf")
    return quantizer


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes INT8 may quantize, in graph order: Conv and ConvTranspose, and MatMul / Gemm with a
    weight (an initializer operand, so run `fold_constants` first). Products of two activations (attention's
    QK^T and AV) stay float."""
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")
            or (n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input[:2]))]


def list_node_paths(directory: str | os.PathLike[str]) -> list[str]:
    """Paths of the quantizable nodes of both graphs of an artifact folder (what ``--exclude`` patterns match)."""
    manifest = open_folder(directory)
    out = []
    for name in GRAPH_NAMES:
        base = onnx.load(str(Path(directory) / manifest.graph_files()[name]))
        paths = node_paths(base, name)
        out += [paths[n] for n in quantizable_nodes(fold_constants(base))]
    return out


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float tensors calibrated: the non-weight inputs and the outputs of QUANT_OPS nodes (folded model)."""
    weights = {t.name for t in model.graph.initializer}
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in QUANT_OPS:
            for name in (*node.input[:2], node.output[0]):
                if name and name not in weights:
                    names[name] = None
    return list(names)


def softmax_outputs(model: onnx.ModelProto) -> set[str]:
    """Tensors that carry a Softmax's output, also through shape and selection ops (attention probabilities)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    todo = list(found)
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.op_type in _PASS_THROUGH:
                new = set(node.output) - found
                found |= new
                todo += new
    return found


def calibrated_amax(model: onnx.ModelProto, stats: ActivationStats, method: str, percentile: float) -> dict[str, float]:
    """amax of every calibrated tensor by `method`; attention probabilities (`softmax_outputs`) always use
    their maximum: they are bounded by 1 and their few large values are the ones that matter."""
    amax = stats.amax(method, percentile)
    exact = stats.amax("minmax")
    return {name: exact[name] if name in softmax_outputs(model) else value for name, value in amax.items()}


def collect_stats(model: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]], tensors: Iterable[str],
                  desc: str = "statistics", progress: bool = True, threads: int | None = None) -> ActivationStats:
    """Run `model` with `tensors` as extra outputs on every batch and gather their statistics."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    wanted = [t for t in tensors if t not in present]
    augmented.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in wanted)
    sess = ort_session(augmented.SerializeToString(), threads)
    names = [o.name for o in sess.get_outputs()]
    keep = set(tensors)
    stats = ActivationStats()
    for feeds in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        inputs = {i.name: feeds[i.name] for i in sess.get_inputs()}
        stats.update({n: v for n, v in zip(names, sess.run(names, inputs)) if n in keep})
    return stats


def _own_weights(model: onnx.ModelProto, quantized: set[str]) -> None:
    """Give nodes that stay float their own copy of any weight they share with a quantized node."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    shared = {i for n in graph.node if n.name in quantized for i in n.input if i in weights}
    for node in graph.node:
        if node.name in quantized:
            continue
        for k, name in enumerate(node.input):
            if name in shared:
                copy = onnx.TensorProto()
                copy.CopyFrom(weights[name])
                copy.name = f"{name}__float_{node.name}"
                graph.initializer.append(copy)
                node.input[k] = copy.name


def strip_unquantized(model: onnx.ModelProto, quantized: set[str]) -> onnx.ModelProto:
    """Rewire nodes outside `quantized` (and not Q/DQ themselves) past any DequantizeLinear(QuantizeLinear(x))
    on their inputs, then drop nodes and initializers nothing uses."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        alive = [n for n in graph.node if any(o in used for o in n.output)]
        if len(alive) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(alive)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def quantize_ort(folded: onnx.ModelProto, amax: dict[str, float], nodes: Iterable[str]) -> onnx.ModelProto:
    """Q/DQ `nodes` of the folded FP32 model with onnxruntime.quantization (see the module docstring)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    nodes = set(nodes)
    model = onnx.ModelProto()
    model.CopyFrom(folded)
    if not nodes:
        return model
    _own_weights(model, nodes)
    ranges = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(-a), highest=np.float32(a)) for name, a in amax.items()})
    quantizer = QDQQuantizer(
        model, True, False, QuantType.QInt8, QuantType.QInt8, ranges, sorted(nodes), [], list(QUANT_OPS),
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
         "OpTypesToExcludeOutputQuantization": list(QUANT_OPS)})
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    return strip_unquantized(quantizer.model.model, nodes)


def quantize_modelopt(folded: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]], method: str,
                      nodes: Iterable[str]) -> onnx.ModelProto:
    """Q/DQ with NVIDIA ModelOpt (INT8, TensorRT placement, FP32 elsewhere); it calibrates on `batches` itself."""
    from modelopt.onnx.quantization import quantize

    if method == "percentile":
        raise UserError("ModelOpt calibrates with entropy or minmax only; use --method entropy|minmax "
                        "or --quantizer ort for percentile")
    inputs = [i.name for i in folded.graph.input]
    data = {name: np.concatenate([b[name] for b in batches]) for name in inputs}
    with tempfile.TemporaryDirectory(prefix="rvos-edge-modelopt-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(folded, str(src))
        quantize(onnx_path=str(src), quantize_mode="int8", calibration_data=data,
                 calibration_method="entropy" if method == "entropy" else "max",
                 op_types_to_quantize=list(QUANT_OPS), nodes_to_quantize=[f"^{re.escape(n)}$" for n in nodes],
                 high_precision_dtype="fp32", output_path=str(dst))
        return onnx.load(str(dst))


def activation_products(model: onnx.ModelProto) -> list[str]:
    """QUANT_OPS nodes of the folded `model` that `quantizable_nodes` leaves out: products of two activations
    (attention's QK^T and AV)."""
    weighted = set(quantizable_nodes(model))
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.name not in weighted]


@contextlib.contextmanager
def _quiet_nncf(progress: bool) -> Iterator[None]:
    """NNCF's INFO log off and its progress bars (rich, on stdout) on stderr, or nowhere without `progress`,
    so stdout keeps the command's one summary line; numpy warnings of its statistics are silenced."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def quantize_nncf(folded: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]], ignored: Iterable[str],
                  progress: bool = False) -> onnx.ModelProto:
    """Q/DQ with OpenVINO's NNCF on its ONNX backend (see the module docstring); it calibrates on `batches`
    itself and never touches the `ignored` nodes, which `quantize_calibrated` makes the excluded ones and the
    products of two activations."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    ignored = set(ignored)
    model = onnx.ModelProto()
    model.CopyFrom(folded)
    others = {n.name for n in model.graph.node} - ignored
    _own_weights(model, others)
    inputs = [i.name for i in model.graph.input]
    dataset = nncf.Dataset(batches, lambda feeds: {name: feeds[name] for name in inputs})
    with _quiet_nncf(progress):
        out = nncf.quantize(model, dataset, subset_size=len(batches), model_type=nncf.ModelType.TRANSFORMER,
                            ignored_scope=nncf.IgnoredScope(names=sorted(ignored)),
                            advanced_parameters=AdvancedQuantizationParameters(
                                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)))
    return strip_unquantized(out, others)


def quantize_calibrated(tool: str, graph: GraphCalibration, amax: dict[str, float],
                        batches: Sequence[dict[str, np.ndarray]], method: str, progress: bool) -> onnx.ModelProto:
    """The Q/DQ model of one calibrated graph by `tool` ("ort", "modelopt" or "nncf")."""
    if tool == "ort":
        return quantize_ort(graph.folded, amax, graph.quantized)
    if tool == "modelopt":
        return quantize_modelopt(graph.folded, batches, method, graph.quantized)
    return quantize_nncf(graph.folded, batches, graph.excluded + activation_products(graph.folded), progress)


def tool_name(tool: str) -> str:
    """The manifest's "tool" of quantizer `tool`: its name and its distribution's version."""
    label, distribution = _TOOLS[tool]
    return f"{label} {metadata.version(distribution)}"


def calibrate(directory: str | os.PathLike[str], data: str, method: str = "entropy", samples: int = 64,
              seed: int = 0, exclude: Sequence[str] | None = None, split: str | None = None,
              quantizer: str = "auto", trt_version: str = DEFAULT_TRT_VERSION, clips_per_video: int = 4,
              percentile: float = 99.99, threads: int | None = None, progress: bool = True) -> CalibrationResult:
    """Calibrate an artifact folder on `data` and write its int8 variant and TensorRT caches (module docstring).

    exclude: fnmatch patterns of node paths kept in float (None: DEFAULT_EXCLUDE; [] quantizes every
    quantizable node); a pattern that matches no quantizable node is a UserError (a typo would quantize it).
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r} (choose from {', '.join(CALIBRATION_METHODS)})")
    tool = resolve_quantizer(quantizer)
    exclude = list(DEFAULT_EXCLUDE if exclude is None else exclude)
    directory = Path(directory)
    manifest = open_folder(directory)
    bases = {name: onnx.load(str(directory / manifest.graph_files()[name])) for name in GRAPH_NAMES}
    folded = {name: fold_constants(bases[name]) for name in GRAPH_NAMES}
    paths = {name: node_paths(bases[name], name) for name in GRAPH_NAMES}
    candidates = {name: {n: paths[name][n] for n in quantizable_nodes(folded[name])} for name in GRAPH_NAMES}
    unused = [p for p in exclude if not any(matching(c, [p]) for c in candidates.values())]
    if unused:
        raise UserError(f"--exclude {' '.join(unused)} matches no quantizable node; patterns match paths such as "
                        f"{next(iter(candidates[CLIP_MODEL].values()))} (see rvos-edge calib DIR --list-nodes)")
    fp32 = open_engines(directory, "ort", "fp32", threads=threads)
    calib = calibration_data(fp32, open_dataset(data, split), samples, seed, clips_per_video, progress=progress)
    batches = {"text_encoder": calib.text, CLIP_MODEL: calib.clip}
    graphs, amax, files, written, caches = {}, {}, {}, [], {}
    for name in GRAPH_NAMES:
        stats = collect_stats(folded[name], batches[name], activation_tensors(folded[name]), f"statistics {name}",
                              progress, threads)
        excluded = matching(candidates[name], exclude)
        g = graphs[name] = GraphCalibration(folded[name], paths[name], stats,
                                            [n for n in candidates[name] if n not in excluded],
                                            [n for n in candidates[name] if n in excluded])
        amax[name] = calibrated_amax(folded[name], stats, method, percentile)
        if not g.quantized:
            files[name] = manifest.graph_files()[name]
            continue
        model = quantize_calibrated(tool, g, amax[name], batches[name], method, progress)
        files[name] = variant_file(name, "int8")
        caches[name] = f"{name}.calib.cache"
        save_graph(model, directory / files[name])
        write_trt_cache(directory / caches[name], amax[name], trt_version)
        written += [files[name], caches[name]]
    calibration = {"method": method, "samples": len(calib.clip), "seed": seed, "data": data,
                   **({"split": split} if split else {}), "exclude": exclude,
                   "quantizer": tool, "tool": tool_name(tool), "trt_version": trt_version, "cache": caches}
    manifest = add_variant(directory, manifest, "int8", files, written, calibration=calibration)
    return CalibrationResult(manifest, graphs, amax, tool, calib, str(directory))
