"""TensorRT on a GPU: build tiny and demo engines in FP32 / FP16 / INT8 and compare them with ONNX Runtime FP32
(FP32 max abs error <= 1e-3, FP16 mask IoU >= 0.98, INT8 mask IoU >= 0.95, through `rvos-edge check`); the
device-side history and CUDA graphs against the plain path; the CubeFrameAttention plugin; the refusal of
engines from another TensorRT version. Skips (with the reason) without TensorRT, Polygraphy or a CUDA GPU."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

tensorrt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'rvos-edge[trt]')")
pytest.importorskip("polygraphy", reason="Polygraphy is not installed (pip install 'rvos-edge[trt]')")

from rvos_edge.artifacts.manifest import load_manifest, write_manifest  # noqa: E402
from rvos_edge.cli import main  # noqa: E402
from rvos_edge.engines.trt.cuda import select_device  # noqa: E402
from rvos_edge.engines.trt.plan import TrtVersion  # noqa: E402
from rvos_edge.errors import UserError  # noqa: E402
from rvos_edge.model import build_model, save_checkpoint  # noqa: E402
from rvos_edge.runtime import Segmenter, open_engines  # noqa: E402


def _has_gpu() -> bool:
    try:
        select_device(0)
    except UserError:
        return False
    return True


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")]
VERSION = TrtVersion.parse(tensorrt.__version__)
TOLERANCE = {"fp32": ("max_abs", 1e-3), "fp16": ("iou", 0.98), "int8": ("iou", 0.95)}


@pytest.fixture(scope="module", params=["tiny", "demo"])
def art(request, tmp_path_factory) -> Path:
    """An exported folder (random weights of the preset) with FP16 and INT8 (Q/DQ + caches) ONNX variants."""
    tmp = tmp_path_factory.mktemp(request.param)
    ckpt = tmp / "model.safetensors"
    save_checkpoint(build_model(request.param, seed=0), ckpt)
    folder = tmp / "art"
    assert main(["export", str(ckpt), "--out", str(folder)]) == 0
    assert main(["build", str(folder), "--backend", "ort", "--precision", "fp16"]) == 0
    assert main(["calib", str(folder), "--data", "synthetic:1:8", "--samples", "8",
                 "--trt-version", str(VERSION)]) == 0
    return folder


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_match_onnx_runtime(art: Path, precision: str, tmp_path: Path) -> None:
    assert main(["build", str(art), "--backend", "trt", "--precision", precision, "--max-batch", "2"]) == 0
    m = load_manifest(art)
    entry = m.tensorrt["engines"][precision]
    assert entry["tensorrt_version"] == tensorrt.__version__ and entry["strongly_typed"] == (VERSION.major >= 11)
    assert (art / entry["log"]).read_text().startswith(f"TensorRT {VERSION}, {precision}")
    assert Path(entry["timing_cache"]).stat().st_size > 0
    report = tmp_path / "check.json"
    main(["check", str(art), "--backend", "trt", "--precision", precision, "--json", str(report)])
    row = json.loads(report.read_text())["rows"][0]
    metric, bound = TOLERANCE[precision]
    assert row["status"] == "ok", row
    assert row[metric] <= bound if metric == "max_abs" else row[metric] >= bound


def _segment(engines, frames: list[np.ndarray]) -> list:
    seg = Segmenter(engines)
    seg.set_expression("the red circle moving left")
    return [r for f in frames for r in seg.push(f)] + seg.flush()


def test_device_history_and_cuda_graphs_match_onnx_runtime(art: Path) -> None:
    assert main(["build", str(art), "--backend", "trt", "--precision", "fp32"]) == 0
    frames = [np.random.default_rng(i).integers(0, 256, (120, 160, 3), dtype=np.uint8) for i in range(20)]
    want = _segment(open_engines(art, "ort"), frames)
    for cuda_graph in (False, True):
        engines = open_engines(art, "trt", "fp32", cuda_graph=cuda_graph)
        got = _segment(engines, frames)
        assert engines.clip.keeps_history
        agree = np.mean([np.mean(a.mask == b.mask) for a, b in zip(got, want)])
        assert [r.index for r in got] == [r.index for r in want] and agree > 0.999
        if cuda_graph:
            assert engines.clip._graph is not None


def test_engines_from_another_tensorrt_are_refused(art: Path) -> None:
    assert main(["build", str(art), "--backend", "trt", "--precision", "fp32"]) == 0
    m = load_manifest(art)
    engines = {**m.tensorrt["engines"], "fp32": {**m.tensorrt["engines"]["fp32"], "tensorrt_version": "9.9.9"}}
    write_manifest(art, dataclasses.replace(m, tensorrt={**m.tensorrt, "engines": engines}))
    try:
        with pytest.raises(UserError, match=f"built with TensorRT 9.9.9 but TensorRT {tensorrt.__version__}"):
            open_engines(art, "trt")
    finally:
        write_manifest(art, m)


@pytest.mark.skipif(VERSION.python_plugins is None, reason=f"TensorRT {VERSION} has no Python plugins (needs >= 10.6)")
def test_plugin_engines_match_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="the plugin's kernel needs triton")
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=1), ckpt)
    art = tmp_path / "art"
    assert main(["export", str(ckpt), "--out", str(art), "--attention", "plugin"]) == 0
    assert main(["build", str(art), "--backend", "trt", "--precision", "fp32"]) == 0
    entry = load_manifest(art).tensorrt["engines"]["fp32"]
    assert entry["plugin"] == VERSION.python_plugins and entry["onnx"]["clip_model"]["file"] == "clip_model.plugin.onnx"
    report = tmp_path / "check.json"
    assert main(["check", str(art), "--backend", "trt", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["rows"][0]["max_abs"] <= 1e-3


@pytest.mark.skipif(VERSION.python_plugins is None, reason=f"TensorRT {VERSION} has no Python plugins (needs >= 10.6)")
def test_plugin_is_registered() -> None:
    from rvos_edge.engines.trt.plugin import register_plugin

    register_plugin(aot=VERSION.python_plugins == "aot")
    names = {(c.name, c.plugin_namespace) for c in tensorrt.get_plugin_registry().all_creators}
    assert ("CubeFrameAttention", "rvos_edge") in names


@pytest.mark.skipif(VERSION.major >= 11, reason=f"TensorRT {VERSION} removed implicit INT8 (calibration caches)")
def test_int8_from_the_calibration_cache(art: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cache-only"
    shutil.copytree(art, folder)
    m = load_manifest(folder)
    write_manifest(folder, dataclasses.replace(m, variants={p: v for p, v in m.variants.items() if p != "int8"}))
    assert main(["build", str(folder), "--backend", "trt", "--precision", "int8"]) == 0
    entry = load_manifest(folder).tensorrt["engines"]["int8"]
    assert any("calibration caches" in n for n in entry["notices"])
    assert entry["onnx"]["clip_model"]["file"] == "clip_model.onnx"
    report = tmp_path / "check.json"
    main(["check", str(folder), "--backend", "trt", "--precision", "int8", "--json", str(report)])
    assert json.loads(report.read_text())["rows"][0]["iou"] >= 0.95
