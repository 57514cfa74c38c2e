"""INT8 calibration on an exported tiny model: layer groups, calibration batches, Q/DQ graphs, TensorRT caches,
the accuracy report and the `rvos-edge calib` command."""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import export_tiny

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.calib.data import calibration_data
from rvos_edge.calib.graph import GROUPS, fold_constants, module_path, node_paths
from rvos_edge.calib.int8 import QUANT_OPS, activation_products, calibrate, modelopt_available
from rvos_edge.calib.report import accuracy_report, write_report
from rvos_edge.calib.stats import read_trt_cache
from rvos_edge.cli import main
from rvos_edge.data import SyntheticDataset
from rvos_edge.errors import UserError
from rvos_edge.eval.evaluate import segment
from rvos_edge.runtime import Segmenter, open_engines
from rvos_edge.runtime.pipeline import prepare_frame

EXCLUDE = ["*/model.head.out/*", "clip_model/prtc/*"]


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory, tiny_export: Path) -> Path:
    return export_tiny(tmp_path_factory.mktemp("calib"), tiny_export)


def _copy(art: Path, tmp: Path, name: str) -> Path:
    return Path(shutil.copytree(art, tmp / name))


@pytest.fixture(scope="module")
def calibrated(art: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = _copy(art, tmp_path_factory.mktemp("int8"), "art")
    return folder, calibrate(folder, "synthetic:3:4", method="minmax", samples=6, exclude=EXCLUDE, quantizer="ort",
                             clips_per_video=3, progress=False)


def test_groups_follow_the_architecture(art: Path) -> None:
    """QUANT_OPS nodes per group, counted from the model's structure (tiny: 3 vision layers, 2 text layers, 1 STR block)."""
    clip = onnx.load(str(art / "clip_model.onnx"))
    paths = node_paths(clip, "clip_model")
    count = Counter((p.split("/")[1], p.split("/")[3]) for p in paths.values() if p.split("/")[3] in QUANT_OPS)
    stage1, prtc = 10, 12          # qkv, text kv, 2 x (QK, AV), 2 out_proj, fc, proj | encoder 6 + decoder 6
    assert count == {("vision_q1", "MatMul"): stage1 + 3 + 1,          # + per-layer history projections, T = Linear(F_e)
                     ("vision_q1", "Conv"): 1,                           # patch embedding
                     ("vision_q2", "MatMul"): stage1,
                     ("vision_q3", "MatMul"): stage1 + 1,                # + CLIP's visual projection
                     ("prtc", "MatMul"): 2 * prtc,                       # after layers 0 and 1
                     ("vlff", "MatMul"): 5 + 5 + 1,                      # V2L, L2V, fusion linear
                     # guide, text proj; one block: 11 weighted, and CF-MSA's QK and AV for each of the
                     # 4 cubes (2 x 2 on the 4 x 4 grid, shift 0: rvos_edge.kernels.decomposed)
                     ("str", "MatMul"): 2 + 11 + 2 * 4,
                     ("head", "Conv"): 8, ("head", "ConvTranspose"): 2}
    out = next(n for n in clip.graph.node if module_path(n) == "model.head.out")
    assert paths[out.name] == f"clip_model/head/model.head.out/Conv/{out.name}"
    text = node_paths(onnx.load(str(art / "text_encoder.onnx")), "text_encoder")
    assert sum(p.split("/")[3] == "MatMul" for p in text.values()) == 2 * 6 + 1
    assert {p.split("/")[1] for p in text.values()} == {"text_encoder"}
    assert set(GROUPS) >= {p.split("/")[1] for p in paths.values()}


def test_calibration_batches_carry_real_histories(art: Path) -> None:
    fp32 = open_engines(art, "ort", "fp32")
    data = SyntheticDataset(5, 6)
    calib = calibration_data(fp32, data, samples=7, seed=1, clips_per_video=3, progress=False)
    assert len(calib.clip) == 7 and calib.first == [True, False, False] * 2 + [True] and len(calib.text) == 3
    order = [int(i) for i in np.random.default_rng(1).permutation(len(data))]
    assert calib.videos == [data[i].name for i in order[:3]]
    first = data[order[0]]
    expected = np.stack([prepare_frame(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), 64) for f in first.frames[:3]])
    np.testing.assert_array_equal(calib.clip[0]["frames"][0], expected)
    text = fp32.text.run(calib.text[0])
    np.testing.assert_array_equal(calib.clip[1]["text_feats"], text["text_feats"])
    for i, (feeds, is_first) in enumerate(zip(calib.clip, calib.first)):
        assert feeds["frames"].shape == (1, 3, 64, 64, 3) and feeds["frames"].dtype == np.uint8
        if is_first:
            assert not feeds["history"].any() and feeds["has_history"][0, 0] == 0.0
        else:
            assert np.abs(feeds["history"]).min() > 0 and feeds["has_history"][0, 0] == 1.0
            np.testing.assert_allclose(feeds["history"], fp32.clip.run(calib.clip[i - 1])["history_out"], atol=1e-6)
    again = calibration_data(fp32, data, samples=2, seed=1, clips_per_video=1, progress=False)
    other = calibration_data(fp32, data, samples=2, seed=2, clips_per_video=1, progress=False)
    assert again.videos == calib.videos[:2] and other.videos != again.videos


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_qdq_graphs_check_run_and_are_recorded(calibrated) -> None:
    folder, result = calibrated
    m = load_manifest(folder)
    assert m.graph_files("int8") == {"text_encoder": "text_encoder.int8.onnx", "clip_model": "clip_model.int8.onnx"}
    c = m.calibration
    assert c["method"] == "minmax" and c["samples"] == 6 and c["exclude"] == EXCLUDE and c["data"] == "synthetic:3:4"
    assert c["tool"].startswith("onnxruntime.quantization") and c["trt_version"] == "10.3.0"
    assert c["cache"] == {"text_encoder": "text_encoder.calib.cache", "clip_model": "clip_model.calib.cache"}
    for name in ("text_encoder", "clip_model"):
        model = onnx.load(str(folder / f"{name}.int8.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    sample = SyntheticDataset(20240917, 1)[0]
    masks = segment(Segmenter.open(folder, "ort", "int8"), sample)
    assert masks.shape == sample.masks.shape and masks.dtype == bool


def test_excluded_nodes_carry_no_qdq(calibrated) -> None:
    folder, result = calibrated
    g = result.graphs["clip_model"]
    excluded, quantized = set(g.excluded), set(g.quantized)
    # quantizable: 96 MatMul/Conv/ConvTranspose less 28 attention products (QK^T, AV) of two activations
    assert len(excluded) == 1 + 2 * 8 and len(quantized) == 96 - 28 - 17
    assert all(g.paths[n].split("/")[1] == "prtc" or "/model.head.out/" in g.paths[n] for n in excluded)
    model = onnx.load(str(folder / "clip_model.int8.onnx"))
    producers = _producers(model)
    weights = {t.name: t for t in model.graph.initializer}
    float_weights = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sources = [producers.get(i) for i in node.input[:2]]
        if node.name in quantized:
            assert all(s is not None and s.op_type == "DequantizeLinear" for s in sources), node.name
        else:
            assert not any(s is not None and s.op_type == "DequantizeLinear" for s in sources), node.name
        if node.name in excluded:
            float_weights += weights[node.input[1]].data_type == onnx.TensorProto.FLOAT
    assert float_weights == len(excluded)
    assert quantized <= {n.name for n in model.graph.node}
    # weights are per output channel: one scale per column (MatMul) / output channel (Conv)
    conv = next(n for n in model.graph.node if n.name in quantized and n.op_type == "Conv")
    dq = producers[conv.input[1]]
    assert weights[dq.input[0]].data_type == onnx.TensorProto.INT8
    assert onnx.numpy_helper.to_array(weights[dq.input[1]]).shape == (weights[dq.input[0]].dims[0],)


def test_cache_scales_are_amax_over_127_of_the_statistics(calibrated) -> None:
    folder, result = calibrated
    header, scales = read_trt_cache(folder / "clip_model.calib.cache")
    assert header == "TRT-100300-EntropyCalibration2"
    amax = result.amax["clip_model"]
    assert scales == {k: float(np.float32(v / 127)) for k, v in amax.items()}
    # minmax: the amax of a graph input is its largest |value| over the calibration batches, computed here
    expected = max(float(np.abs(b["text_feats"]).max()) for b in result.data.clip)
    assert amax["text_feats"] == pytest.approx(expected, rel=1e-6)
    # the Q/DQ graph quantizes that tensor with the same scale
    model = onnx.load(str(folder / "clip_model.int8.onnx"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "text_feats")
    scale = next(t for t in model.graph.initializer if t.name == q.input[1])
    assert float(onnx.numpy_helper.to_array(scale)) == pytest.approx(scales["text_feats"], rel=1e-6)
    assert set(read_trt_cache(folder / "text_encoder.calib.cache")[1]) == set(result.amax["text_encoder"])


def test_text_encoder_can_stay_float(art: Path, tmp_path: Path) -> None:
    folder = _copy(art, tmp_path, "art")
    result = calibrate(folder, "synthetic:3:2", samples=2, exclude=["text_encoder/*"], quantizer="ort", progress=False)
    m = load_manifest(folder)
    assert m.graph_files("int8") == {"text_encoder": "text_encoder.onnx", "clip_model": "clip_model.int8.onnx"}
    assert m.calibration["cache"] == {"clip_model": "clip_model.calib.cache"} and m.calibration["method"] == "entropy"
    assert not (folder / "text_encoder.int8.onnx").exists() and not result.graphs["text_encoder"].quantized
    # folded weights leave no Transpose of an initializer in front of a MatMul
    folded = fold_constants(onnx.load(str(folder / "clip_model.onnx")))
    inits = {t.name for t in folded.graph.initializer}
    weightless = [n for n in folded.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.input[1] not in inits]
    assert not weightless


def test_report_with_sweep(calibrated, tmp_path: Path) -> None:
    folder, result = calibrated
    report = accuracy_report(folder, "synthetic:20240917:2", calibration=result, speed_repeats=2, progress=False)
    p = report["precisions"]
    assert list(p) == ["fp32", "int8"] and p["fp32"]["mask_iou_vs_fp32"] == 1.0
    assert 0.0 <= p["int8"]["mask_iou_vs_fp32"] <= 1.0 and "J&F" in p["int8"] and "delta_J&F_points" in p["int8"]
    assert isinstance(p["int8"]["target_met"], bool) and p["int8"]["target_max_drop_points"] == 1.0
    rows = {r["group"]: r for r in report["sweep"]["groups"]}
    assert list(rows) == list(GROUPS)
    assert rows["vision_q4"]["nodes"] == 0 and rows["prtc"]["nodes"] == 0      # tiny has 3 layers; PRTC excluded
    assert rows["head"]["nodes"] == 9 and 0.0 <= rows["head"]["mask_iou_vs_fp32"] <= 1.0
    flagged = [g for g, r in rows.items() if r.get("recommend_exclude")]
    assert report["sweep"]["recommended_exclude"] == [
        "text_encoder/*" if g == "text_encoder" else f"clip_model/{g}/*" for g in flagged]
    assert set(report["speed_clip_graph"]["ms"]) == {"fp32", "int8"}
    json_path, md_path = write_report({**report, "note": "random weights"}, tmp_path / "precision.json")
    md = md_path.read_text()
    assert json_path.is_file() and "| int8 |" in md and "| head | 9 |" in md and "Note: random weights" in md
    with pytest.raises(UserError):
        write_report(report, tmp_path / "precision.md")


def test_cli_calib(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _copy(art, tmp_path, "art")
    assert main(["calib", str(folder), "--list-nodes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{68 + 9} quantizable nodes in {folder}" and out[0].startswith("text_encoder/text_encoder/")
    assert main(["calib", str(folder), "--data", "synthetic:3:2", "--samples", "2", "--method", "percentile",
                 "--quantizer", "ort", "--exclude"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "percentile" in line and "clip_model 68 quantized / 0 excluded" in line
    assert load_manifest(folder).calibration["exclude"] == []
    assert main(["calib", str(folder)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["calib", str(folder), "--data", "synthetic:3:2", "--exclude", "head"]) == 2
    assert "matches no quantizable node" in capsys.readouterr().err
    assert main(["calib", str(folder), "--data", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nonsense" in err
    if not modelopt_available():
        assert main(["calib", str(folder), "--data", "synthetic:3:2", "--quantizer", "modelopt"]) == 2
        assert "ModelOpt is not installed" in capsys.readouterr().err


NNCF = importlib.util.find_spec("nncf") is not None
needs_nncf = pytest.mark.skipif(not NNCF, reason="NNCF is not installed (the nncf extra)")
# NNCF's INT8 on tiny (random weights), 4 held-out videos, mask IoU against FP32: 0.92 measured with NNCF 3.4.0,
# where onnxruntime.quantization's Q/DQ of the same nodes and data gets 0.86; 0.88 fails a variant no better than that
NNCF_MIN_IOU = 0.88


def _cli(code: str, *args: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that cannot import torch (calib is torch-free, NNCF included)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", "import sys\nsys.modules['torch'] = None\n" + code, *args],
                          capture_output=True, text=True, env=env, timeout=300)


_CALIB = "from rvos_edge.cli import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.fixture(scope="module")
def nncf_calibrated(art: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`rvos-edge calib --quantizer nncf --method minmax --report` on a copy of `art`, without torch."""
    folder = _copy(art, tmp_path_factory.mktemp("nncf"), "art")
    p = _cli(_CALIB, "calib", str(folder), "--data", "synthetic:3:4", "--samples", "4", "--method", "minmax",
             "--quantizer", "nncf", "--exclude", *EXCLUDE, "--threads", "2", "--report", str(folder / "report.json"),
             "--eval-data", "synthetic:20240917:4", "--no-sweep")
    return folder, p


@needs_nncf
def test_nncf_variant_is_recorded_and_close_to_fp32(nncf_calibrated) -> None:
    folder, p = nncf_calibrated
    assert p.returncode == 0, p.stderr
    tool = f"nncf {version('nncf')}"
    line = p.stdout.strip()
    assert "\n" not in line and f"with {tool}:" in line and "int8 mask IoU vs FP32" in line
    c = load_manifest(folder).calibration
    assert c["quantizer"] == "nncf" and c["tool"] == tool and c["exclude"] == EXCLUDE
    report = json.loads((folder / "report.json").read_text())
    assert report["calibration"] == c and f"INT8: {tool}," in (folder / "report.md").read_text()
    assert report["precisions"]["int8"]["mask_iou_vs_fp32"] >= NNCF_MIN_IOU, report["precisions"]["int8"]
    model = onnx.load(str(folder / "clip_model.int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    producers = _producers(model)
    dequantized = {n.name for n in model.graph.node
                   if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)}
    base = onnx.load(str(folder / "clip_model.onnx"))
    paths = node_paths(base, "clip_model")
    excluded = {n for n, path in paths.items() if any(fnmatch.fnmatchcase(path, e) for e in EXCLUDE)}
    products = set(activation_products(fold_constants(base)))
    # the weighted MatMuls outside PRTC, less those whose activation NNCF quantizes in front of a Transpose
    assert len({n for n in dequantized if paths.get(n, "").split("/")[3:4] == ["MatMul"]}) >= 40
    # activation-by-activation products: 26 in the attentions of CLIP, PRTC, VLFF and STR's decoder, and CF-MSA's
    # QK and AV for each of tiny's 4 cubes (rvos_edge.kernels.decomposed)
    assert len(products) == 26 + 2 * 4 and not dequantized & (excluded | products)


@needs_nncf
def test_nncf_keeps_our_trt_cache(art: Path, nncf_calibrated) -> None:
    """The TensorRT cache comes from rvos-edge's own statistics, not from NNCF: minmax, so the amax of text_feats
    is its largest |value| over the calibration batches."""
    folder, p = nncf_calibrated
    assert p.returncode == 0, p.stderr
    header, scales = read_trt_cache(folder / "clip_model.calib.cache")
    data = calibration_data(open_engines(art, "ort", "fp32"), SyntheticDataset(3, 4), samples=4, progress=False)
    expected = max(float(np.abs(b["text_feats"]).max()) for b in data.clip)
    assert header == "TRT-100300-EntropyCalibration2"
    assert scales["text_feats"] == pytest.approx(expected / 127, rel=1e-6)


def test_missing_nncf_is_one_line(art: Path) -> None:
    p = _cli("sys.modules['nncf'] = None\n" + _CALIB, "calib", str(art), "--data", "synthetic:3:2",
             "--quantizer", "nncf")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "pip install 'rvos-edge[nncf]'" in p.stderr, p.stderr
