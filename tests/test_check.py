"""`rvos-edge check`: every backend and precision of a folder against ONNX Runtime FP32, on fake artifact
folders whose variants differ from FP32 by known offsets (tests/fake_artifacts.py), and TensorRT rows through
the fake TensorRT of tests/fake_tensorrt.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_artifacts import TINY, make_fake_artifacts, ref_clip, ref_text
from fake_tensorrt import FakeTrt
from test_tensorrt_backend import add_engines, entry, install_fake_tensorrt

from rvos_edge.artifacts.precision import PRECISIONS, Tolerance
from rvos_edge.check import check_inputs, mask_iou
from rvos_edge.cli import main

HAS_TRT = __import__("importlib").util.find_spec("tensorrt") is not None


def run(capsys: pytest.CaptureFixture, *argv) -> tuple[int, str, str]:
    rc = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def expected_logits(offset: float, clips: int = 2) -> np.ndarray:
    """mask_logits of the fake clip graph over check's inputs, chaining the history (numpy reference)."""
    tokens, frames = check_inputs(TINY, TINY.clip_len, clips, seed=0)
    text = ref_text(tokens, offset=offset)
    history, out = np.zeros((2, 64)), []
    for i, f in enumerate(frames):
        logits, history = ref_clip(f[0], text, history, float(i > 0))
        out.append(logits)
    return np.stack(out)


def test_rows_against_independent_references(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art", variants={"fp16": 2e-3, "int8": 5.0})
    rc, out, err = run(capsys, art, "--backend", "ort", "--json", tmp_path / "check.json")
    assert rc == 1 and err == ""
    rows = {r["precision"]: r for r in json.loads((tmp_path / "check.json").read_text())["rows"]}
    ref = expected_logits(0.0)
    for precision, offset in (("fp16", 2e-3), ("int8", 5.0)):
        got = expected_logits(offset)
        assert rows[precision]["max_abs"] == pytest.approx(offset, abs=1e-5)
        assert rows[precision]["iou"] == pytest.approx(mask_iou(got > 0, ref > 0), abs=1e-6)
    assert 0.98 <= rows["fp16"]["iou"] < 1 and rows["fp16"]["status"] == "ok"
    assert rows["int8"]["iou"] < 0.95 and rows["int8"]["status"] == "off"
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["backend", "precision", "max", "abs"]
    assert lines[1].split()[:2] == ["ort", "fp16"] and lines[1].endswith("ok")
    assert lines[2].split()[:2] == ["ort", "int8"] and "off: mask IoU" in lines[2] and "IoU >= 0.95" in lines[2]
    assert lines[-1].startswith(f"check {art}: 1 of 2 within tolerance of ONNX Runtime FP32; failing: ort int8")


def test_all_within_tolerance_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art", variants={"fp16": 0.0, "int8": 0.0})
    rc, out, _ = run(capsys, art, "--backend", "ort", "--precision", "int8", "--clips", "3")
    assert rc == 0 and len(out.splitlines()) == 3
    assert out.splitlines()[-1] == f"check {art}: 1 of 1 within tolerance of ONNX Runtime FP32"


def test_nothing_to_check_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    rc, out, err = run(capsys, art, "--backend", "ort")           # openvino would run the FP32 graphs
    assert rc == 2 and out == "" and err.count("\n") == 1 and "nothing to check" in err
    rc, _, err = run(capsys, art, "--clips", "0")
    assert rc == 2 and "--clips must be >= 1" in err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_trt_rows_are_skipped_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art", variants={"fp16": 0.0})
    add_engines(art, entry("fp16", art))
    rc, out, _ = run(capsys, art, "--backend", "ort", "--backend", "trt")
    assert rc == 0
    assert "trt      fp16" in out and "skipped: TensorRT is not installed: pip install 'rvos-edge[trt]'" in out
    assert "skipped 1 (TensorRT is not installed" in out.splitlines()[-1]


@pytest.fixture()
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> FakeTrt:
    return install_fake_tensorrt(monkeypatch)[0]


def test_trt_rows_run_and_stale_engines_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   fake_tensorrt: FakeTrt) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    add_engines(art, entry("fp32", art))
    add_engines(art, entry("int8", art, tensorrt_version="10.1.0"))
    rc, out, _ = run(capsys, art, "--backend", "trt")
    lines = out.splitlines()
    assert rc == 1
    assert lines[1].split()[:4] == ["trt", "fp32", "0.00e+00", "1.0000"] and lines[1].endswith("ok")
    assert lines[2].startswith("trt      int8") and "error: the int8 engines" in lines[2]
    assert "built with TensorRT 10.1.0 but TensorRT 10.3.0 is installed" in lines[2]


def test_tolerances() -> None:
    assert PRECISIONS["fp32"].tolerance.failures(2e-3, 1.0) == ["max abs error 2.00e-03 > 1e-03"]
    assert PRECISIONS["fp32"].tolerance.failures(1e-3, 0.5) == []                  # FP32 is judged on the error only
    assert PRECISIONS["fp16"].tolerance.failures(9.0, 0.98) == [] and PRECISIONS["int8"].tolerance.failures(0.0, 0.949) != []
    assert PRECISIONS["bf16"].tolerance.failures(9.0, 0.97) == [] and PRECISIONS["bf16"].tolerance.failures(0.0, 0.969) != []
    assert str(Tolerance(max_abs=1e-3, min_iou=0.9)) == "max abs <= 1e-03, IoU >= 0.9"
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    assert mask_iou(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
