"""FP16 graphs: which ops stay FP32, dtypes at the graph boundary, ORT parity with FP32, the build command."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import export_tiny
from onnx import TensorProto, helper, numpy_helper

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.calib.fp16 import build_fp16, ort_cpu_fp32_ops, to_fp16
from rvos_edge.calib.graph import module_path
from rvos_edge.cli import main
from rvos_edge.data import SyntheticDataset
from rvos_edge.eval.evaluate import segment
from rvos_edge.runtime import Segmenter

FP32_KEPT = {"LayerNormalization", "Softmax", "InstanceNormalization", "ReduceSum", "ReduceL2"}


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory, tiny_export: Path) -> Path:
    return export_tiny(tmp_path_factory.mktemp("fp16"), tiny_export)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _io(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(v.name, v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]]


def test_fp16_keeps_the_listed_ops_in_fp32(art: Path) -> None:
    base = onnx.load(str(art / "clip_model.onnx"))
    model = to_fp16(base)
    onnx.checker.check_model(model, full_check=True)
    assert _io(model) == _io(base)
    types = _types(model)
    by_name = {n.name: n for n in model.graph.node}
    kept = [n for n in model.graph.node if n.op_type in FP32_KEPT]
    assert {n.op_type for n in kept} == FP32_KEPT
    for node in kept:
        floats = [t for t in [*node.input, *node.output] if t and types[t] in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert floats and all(types[t] == TensorProto.FLOAT for t in floats), node.name
    # the cosine similarity: F.normalize's divisions and the product they feed
    producers = {o: n for n in model.graph.node for o in n.output}
    divs = [n for n in model.graph.node if n.op_type == "Div" and any(
        producers.get(i) is not None and producers[i].op_type in ("Clip", "Expand") for i in n.input)]
    assert len(divs) == 2 and all(types[n.output[0]] == TensorProto.FLOAT for n in divs)
    # the logits conv keeps FP32 weights; every other conv and every MatMul weight is FP16
    out = next(n for n in base.graph.node if module_path(n) == "model.head.out")
    assert all(types[i] == TensorProto.FLOAT for i in by_name[out.name].input)
    weights = {t.name for t in model.graph.initializer}
    heavy = [n for n in model.graph.node if n.op_type in ("MatMul", "Conv", "ConvTranspose") and n.name != out.name]
    assert heavy and all(types[n.input[0]] == TensorProto.FLOAT16 for n in heavy)
    assert all(types[n.input[1]] == TensorProto.FLOAT16 for n in heavy if n.input[1] in weights)
    fp16_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    assert fp16_bytes < 0.6 * sum(t.ByteSize() for t in base.graph.initializer)


def test_fp16_text_encoder_keeps_its_interface(art: Path) -> None:
    base = onnx.load(str(art / "text_encoder.onnx"))
    model = to_fp16(base)
    onnx.checker.check_model(model)
    assert _io(model) == _io(base)
    ops = ort_cpu_fp32_ops(model)
    assert ops == sorted(set(ops)) and set(ops) <= {n.op_type for n in model.graph.node}


def test_constants_are_clamped_and_stored_once_per_precision() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [])
    c = numpy_helper.from_array(np.array([1e6, -np.inf], np.float32), "c")
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["s"], name="add"),
                               helper.make_node("Mul", ["s", "c"], ["y"], name="mul"),
                               helper.make_node("ReduceSum", ["c"], ["z"], name="sum", keepdims=0)],
                              "g", [x], [y, z], [c])
    model = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), logits=None)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(inits) == {"c", "c__fp16"}
    np.testing.assert_array_equal(inits["c__fp16"], np.array([65504, -np.inf], np.float16))
    assert inits["c"].dtype == np.float32 and _io(model) == _io(helper.make_model(graph))


def test_build_fp16_matches_fp32_and_is_recorded(art: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(art, tmp_path / "art"))
    build = build_fp16(folder, progress=False)
    assert build.max_abs_diff["mask_logits"] < 0.05 and build.max_abs_diff["history_out"] < 0.05
    assert build.max_abs_diff["text_feats"] < 0.05 and build.mask_agreement > 0.99
    m = load_manifest(folder)
    assert m.graph_files("fp16") == {"text_encoder": "text_encoder.fp16.onnx", "clip_model": "clip_model.fp16.onnx"}
    assert {"text_encoder.fp16.onnx", "clip_model.fp16.onnx"} <= set(m.files)
    sample = SyntheticDataset(20240917, 1)[0]
    ref = segment(Segmenter.open(folder, "ort", "fp32"), sample)
    got = segment(Segmenter.open(folder, "ort", "fp16"), sample)
    assert (ref == got).mean() > 0.99


def test_cli_build(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = Path(shutil.copytree(art, tmp_path / "art"))
    assert main(["build", str(folder), "--backend", "ort", "--precision", "fp16"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "built fp16 graphs" in line and "mask pixels agree" in line
    assert main(["build", str(folder), "--backend", "ort", "--precision", "fp32"]) == 0
    assert "nothing to build" in capsys.readouterr().out
    assert main(["build", str(folder), "--backend", "ort", "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--calib" in err
    assert main(["build", str(tmp_path / "missing"), "--backend", "ort", "--precision", "fp16"]) == 2
