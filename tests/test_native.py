"""The native runtime (native/, built by `make native`) from Python: its C API through ctypes,
rvos-edge-run's bad-input behaviour, and the tokenizer cases file its ctest tests read.

The native tests need build/native (RVOS_EDGE_NATIVE_BUILD overrides it). Without it they
skip, saying to run `make native`, unless RVOS_EDGE_NATIVE_REQUIRED=1 (set by `make test`,
which builds it first), where a missing build fails instead.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny

from rvos_edge.runtime import Segmenter

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("RVOS_EDGE_NATIVE_BUILD", REPO / "build" / "native"))
LIBRARY = BUILD / "native" / "librvos_edge.so"
TOOL = BUILD / "native" / "rvos-edge-run"
CASES = REPO / "native" / "tests" / "data" / "tokenizer_cases.json"
OK, INVALID_ARGUMENT, BAD_ARTIFACTS = 0, 1, 2


def _native_built() -> None:
    if LIBRARY.is_file() and TOOL.is_file():
        return
    message = f"the native runtime is not built ({LIBRARY} missing): run `make native` first"
    if os.environ.get("RVOS_EDGE_NATIVE_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


class Result(ctypes.Structure):
    _fields_ = [("index", ctypes.c_int64), ("height", ctypes.c_int32), ("width", ctypes.c_int32),
                ("mask", ctypes.POINTER(ctypes.c_uint8)), ("score", ctypes.c_double)]


class Options(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_char_p), ("precision", ctypes.c_char_p), ("device", ctypes.c_char_p),
                ("device_id", ctypes.c_int), ("threads", ctypes.c_int), ("clip_len", ctypes.c_int)]


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    _native_built()
    lib = ctypes.CDLL(str(LIBRARY))
    handle = ctypes.c_void_p
    out = ctypes.POINTER(ctypes.c_void_p)
    signatures = {
        "rvos_edge_version": ([], ctypes.c_char_p),
        "rvos_edge_last_error": ([], ctypes.c_char_p),
        "rvos_edge_options_default": ([ctypes.POINTER(Options)], None),
        "rvos_edge_open": ([ctypes.c_char_p, ctypes.POINTER(Options), out], ctypes.c_int),
        "rvos_edge_close": ([handle], None),
        "rvos_edge_clip_len": ([handle], ctypes.c_int),
        "rvos_edge_set_expression": ([handle, ctypes.c_char_p, out], ctypes.c_int),
        "rvos_edge_push": ([handle, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_size_t, out], ctypes.c_int),
        "rvos_edge_flush": ([handle, out], ctypes.c_int),
        "rvos_edge_reset": ([handle], ctypes.c_int),
        "rvos_edge_results_count": ([handle], ctypes.c_size_t),
        "rvos_edge_results_get": ([handle, ctypes.c_size_t, ctypes.POINTER(Result)], ctypes.c_int),
        "rvos_edge_results_free": ([handle], None),
    }
    for name, (args, restype) in signatures.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = restype
    return lib


@pytest.fixture(scope="module")
def tiny_art(tmp_path_factory: pytest.TempPathFactory, tiny_export: Path) -> Path:
    return export_tiny(tmp_path_factory.mktemp("native"), tiny_export)


def _take(lib: ctypes.CDLL, results: ctypes.c_void_p) -> list[tuple[int, np.ndarray, float]]:
    """(index, mask copy bool [H, W], score) of each result; frees `results`."""
    out = []
    try:
        for i in range(lib.rvos_edge_results_count(results)):
            r = Result()
            assert lib.rvos_edge_results_get(results, i, ctypes.byref(r)) == OK
            mask = np.ctypeslib.as_array(r.mask, shape=(r.height, r.width)).copy()
            assert set(np.unique(mask)) <= {0, 255}
            out.append((r.index, mask > 0, r.score))
    finally:
        lib.rvos_edge_results_free(results)
    return out


def test_c_api_gives_the_python_segmenters_masks(lib, tiny_art):
    seg, results = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.rvos_edge_open(str(tiny_art).encode(), None, ctypes.byref(seg)) == OK, lib.rvos_edge_last_error()
    reference = Segmenter.open(tiny_art, threads=None)
    try:
        assert lib.rvos_edge_clip_len(seg) == reference.clip_len
        text = "the red circle on the left"
        assert lib.rvos_edge_set_expression(seg, text.encode(), ctypes.byref(results)) == OK
        assert _take(lib, results) == []
        reference.set_expression(text)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (48 + i, 80 - i, 3), dtype=np.uint8) for i in range(reference.clip_len * 2 + 1)]
        got, want = [], []
        for frame in frames:
            assert lib.rvos_edge_push(seg, frame.ctypes.data, frame.shape[0], frame.shape[1], frame.strides[0],
                                      ctypes.byref(results)) == OK
            got += _take(lib, results)
            want += reference.push(frame)
        assert lib.rvos_edge_flush(seg, ctypes.byref(results)) == OK
        got += _take(lib, results)
        want += reference.flush()
        assert [g[0] for g in got] == [w.index for w in want] == list(range(len(frames)))
        assert any(0 < w.mask.mean() < 1 for w in want), "all masks empty or full: the comparison shows little"
        for (index, mask, score), w in zip(got, want):
            assert mask.shape == frames[index].shape[:2]
            assert np.array_equal(mask, w.mask), f"frame {index}"
            assert score == pytest.approx(w.score, abs=1e-6)
        assert lib.rvos_edge_reset(seg) == OK
    finally:
        lib.rvos_edge_close(seg)


def test_c_api_reports_errors_with_a_status_and_one_line(lib, tiny_art, tmp_path):
    seg, results = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.rvos_edge_open(str(tmp_path / "missing").encode(), None, ctypes.byref(seg)) == BAD_ARTIFACTS
    assert seg.value is None
    assert b"is not a folder" in lib.rvos_edge_last_error()
    options = Options()
    lib.rvos_edge_options_default(ctypes.byref(options))
    options.backend = b"nope"
    assert lib.rvos_edge_open(str(tiny_art).encode(), ctypes.byref(options), ctypes.byref(seg)) == INVALID_ARGUMENT
    assert lib.rvos_edge_last_error() == b"unknown backend 'nope' (choose from ort, trt)"

    assert lib.rvos_edge_open(str(tiny_art).encode(), None, ctypes.byref(seg)) == OK
    try:
        frame = np.zeros((8, 8, 3), np.uint8)
        assert lib.rvos_edge_push(seg, frame.ctypes.data, 8, 8, 24, ctypes.byref(results)) == INVALID_ARGUMENT
        assert results.value is None
        assert b"no expression set" in lib.rvos_edge_last_error()
        assert lib.rvos_edge_set_expression(seg, b"  \n", ctypes.byref(results)) == INVALID_ARGUMENT
        assert b"the expression is empty" in lib.rvos_edge_last_error()
        assert lib.rvos_edge_set_expression(seg, b"caf\xc3", ctypes.byref(results)) == INVALID_ARGUMENT
        assert b"not valid UTF-8" in lib.rvos_edge_last_error()
        assert lib.rvos_edge_set_expression(seg, b"a dog", ctypes.byref(results)) == OK
        lib.rvos_edge_results_free(results)
        assert lib.rvos_edge_push(seg, frame.ctypes.data, 8, 8, 10, ctypes.byref(results)) == INVALID_ARGUMENT
        assert b"stride" in lib.rvos_edge_last_error()
        assert lib.rvos_edge_push(seg, None, 8, 8, 24, ctypes.byref(results)) == INVALID_ARGUMENT
    finally:
        lib.rvos_edge_close(seg)
    assert lib.rvos_edge_clip_len(None) == -1
    assert lib.rvos_edge_version().decode().count(".") == 2


def _video(path: Path, frames: int) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (32, 24))
    for i in range(frames):
        writer.write(np.full((24, 32, 3), 40 * i % 256, np.uint8))
    writer.release()
    return path


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOL), *args], capture_output=True, text=True)


@pytest.mark.parametrize("case", ["missing video", "empty expression", "not an artifact folder", "unknown option",
                                  "output folder of other files"])
def test_rvos_edge_run_bad_input_is_one_line_and_exit_2(case, tiny_art, tmp_path):
    _native_built()
    video = _video(tmp_path / "v.avi", 4)
    out = tmp_path / "out"
    if case == "output folder of other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    args = {"missing video": [str(tiny_art), "--video", str(tmp_path / "nope.mp4"), "--expr", "a dog"],
            "empty expression": [str(tiny_art), "--video", str(video), "--expr", " "],
            "not an artifact folder": [str(tmp_path), "--video", str(video), "--expr", "a dog"],
            "unknown option": [str(tiny_art), "--video", str(video), "--expr", "a dog", "--fast"],
            "output folder of other files": [str(tiny_art), "--video", str(video), "--expr", "a dog"]}[case]
    proc = _run_tool(*args, "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("rvos-edge-run: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    if case == "output folder of other files":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["v.avi", *(["out"] if out.exists() else [])])


def test_rvos_edge_run_writes_the_run_layout_as_one_unit(tiny_art, tmp_path):
    _native_built()
    video = _video(tmp_path / "v.avi", 5)
    out = tmp_path / "out"
    proc = _run_tool(str(tiny_art), "--video", str(video), "--expr", "a dog", "--expr", "The Cat!", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 5 and summary["fps"]["end_to_end"] > 0
    assert [e["masks"] for e in summary["expressions"]] == ["masks/0_a-dog", "masks/1_the-cat"]
    for folder in ("masks/0_a-dog", "masks/1_the-cat"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert (out / "overlay.mp4").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # a second run replaces the first, its stale files and all
    proc = _run_tool(str(tiny_art), "--video", str(video), "--expr", "a dog", "--max-frames", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000.png", "00001.png"]
    assert json.loads((out / "summary.json").read_text())["frames"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "v.avi"]


def test_tokenizer_cases_file_is_current():
    spec = importlib.util.spec_from_file_location("native_fixtures", REPO / "native" / "tests" / "fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    assert json.loads(CASES.read_text(encoding="utf-8")) == fixtures.tokenizer_cases(), (
        f"{CASES} is stale: python native/tests/fixtures.py tokenizer-cases {CASES}")


def test_rvos_edge_run_stops_between_frames_on_sigterm(tiny_art, tmp_path):
    _native_built()
    import signal
    import time

    video = _video(tmp_path / "v.avi", 3000)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(TOOL), str(tiny_art), "--video", str(video), "--expr", "a dog", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".out.staging-*/masks/00010.png")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 10 <= summary["frames"] < 3000
    assert summary["stopped_at"] == summary["frames"] == len(list((out / "masks").iterdir()))
