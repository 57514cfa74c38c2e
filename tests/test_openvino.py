"""The OpenVINO backend (rvos_edge.engines.openvino) against ONNX Runtime on a tiny export: FP32 logits,
INT8 from the Q/DQ variant, BF16 where the CPU has it, the compiled-model cache, hints and threads read
back from the compiled models, and the one-line errors (bf16 elsewhere, no BF16, no openvino)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny
from fake_artifacts import make_fake_artifacts

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.artifacts.precision import PRECISIONS
from rvos_edge.check import check_folder, check_inputs, mask_iou, run_clips
from rvos_edge.cli import main
from rvos_edge.engines import Engines, open_engines
from rvos_edge.engines.openvino.runner import (CACHE_FOLDER, check_bf16, cpu_capabilities, import_openvino,
                                               shared_core)
from rvos_edge.engines.trt.plan import ArtifactSet, TrtVersion, plan_build
from rvos_edge.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_BF16 = HAS_OPENVINO and "BF16" in cpu_capabilities(shared_core())
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed (pip install "
                                                             "'rvos-edge[openvino]')")


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory, tiny_export: Path) -> Path:
    """A tiny export with an INT8 (Q/DQ) variant, no OpenVINO cache yet."""
    from rvos_edge.calib.int8 import calibrate

    folder = export_tiny(tmp_path_factory.mktemp("openvino"), tiny_export)
    calibrate(folder, "synthetic:3:2", method="minmax", samples=2, quantizer="ort", progress=False)
    return folder


@pytest.fixture(scope="module")
def inputs(art: Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(tokens, two clips of frames, ORT FP32 mask_logits over them)."""
    reference = open_engines(art, "ort", "fp32", threads=1)
    tokens, clips = check_inputs(reference.config, reference.resolve_clip_len(None), 2, seed=0)
    return tokens, clips, run_clips(reference, tokens, clips)


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """`code` (after `import sys`) run with `args` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", "import sys\n" + code, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def _logits(engines: Engines, inputs: tuple[np.ndarray, list[np.ndarray], np.ndarray]) -> np.ndarray:
    tokens, clips, _ = inputs
    return run_clips(engines, tokens, clips)


def _runtime_precisions(engines: Engines) -> set[str]:
    """The precisions OpenVINO's CPU plugin runs the clip graph's nodes in (the runtime model's rt_info)."""
    ops = engines.clip.compiled.get_runtime_model().get_ordered_ops()
    return {op.get_rt_info()["runtimePrecision"].astype(str) for op in ops if "runtimePrecision" in op.get_rt_info()}


@needs_openvino
def test_fp32_matches_ort(art: Path, inputs) -> None:
    engines = open_engines(art, "openvino", "fp32", threads=1)
    assert (engines.backend, engines.precision, engines.learnt_tokens) == ("openvino", "fp32",
                                                                           load_manifest(art).learnt_tokens)
    got, expected = _logits(engines, inputs), inputs[2]
    assert np.abs(got - expected).max() <= 1e-4
    assert mask_iou(got > 0, expected > 0) == 1.0
    assert engines.clip.compiled.get_property("INFERENCE_PRECISION_HINT") == import_openvino().Type.f32
    assert "bf16" not in _runtime_precisions(engines)


@needs_openvino
def test_int8_runs_the_qdq_variant_in_int8(art: Path, inputs) -> None:
    engines = open_engines(art, "openvino", "int8", threads=1)
    assert {"i8", "u8"} & _runtime_precisions(engines)                     # quantized kernels, not FP32 ones
    got, expected = _logits(engines, inputs), inputs[2]
    ort_int8 = run_clips(open_engines(art, "ort", "int8", threads=1), *inputs[:2])
    # the same Q/DQ graph, as close to FP32 as in ONNX Runtime (the tiny random-weight logits sit near 0,
    # so their masks flip under any INT8: mask IoU is no measure here)
    assert 0 < np.abs(got - expected).mean() <= 1.25 * np.abs(ort_int8 - expected).mean()


@pytest.mark.skipif(not HAS_BF16, reason="OpenVINO is not installed or this CPU has no BF16 (its "
                                         "OPTIMIZATION_CAPABILITIES)")
def test_bf16_agrees_by_mask_iou(art: Path, inputs) -> None:
    open_engines(art, "openvino", "fp32", threads=1)     # its cached blob once made a bf16 open run NaN
    engines = open_engines(art, "openvino", "bf16", threads=1)
    assert engines.clip.compiled.get_property("INFERENCE_PRECISION_HINT") == import_openvino().Type.bf16
    assert "bf16" in _runtime_precisions(engines)
    got, expected = _logits(engines, inputs), inputs[2]
    assert 0 < np.abs(got - expected).max() and mask_iou(got > 0, expected > 0) >= PRECISIONS["bf16"].tolerance.min_iou


def test_bf16_is_refused_in_one_line_without_bf16() -> None:
    class NoBf16Core:
        def get_property(self, device: str, name: str):
            return {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"], "FULL_DEVICE_NAME": "Old Xeon"}[name]

    with pytest.raises(UserError, match=r"^this CPU \(Old Xeon\) has no BF16 \(OpenVINO's CPU capabilities: "
                                        r"FP32, INT8\): use --precision fp32 or int8$"):
        check_bf16(NoBf16Core())


_OPEN_TWICE = """
import sys
from rvos_edge.engines import open_engines
for threads in (1, 1, 2):
    e = open_engines(sys.argv[1], "openvino", "fp32", threads=threads)
    print(e.text.compiled.get_property("LOADED_FROM_CACHE"), e.clip.compiled.get_property("LOADED_FROM_CACHE"),
          e.clip.compiled.get_property("INFERENCE_NUM_THREADS"))
"""


@needs_openvino
def test_the_cache_is_written_then_reused(art: Path, tmp_path: Path) -> None:
    folder = tmp_path / "art"
    shutil.copytree(art, folder, ignore=shutil.ignore_patterns(CACHE_FOLDER))
    p = _python(_OPEN_TWICE, str(folder))
    assert p.returncode == 0, p.stderr
    # compiled, then both graphs from the cache, which a thread count of its own also loads
    assert p.stdout.splitlines() == ["False False 1", "True True 1", "True True 2"]
    blobs = sorted((folder / CACHE_FOLDER).rglob("*.blob"))
    assert [b.parent.name.split("-", 1)[0] for b in blobs] == ["clip_model.onnx", "text_encoder.onnx"]
    stamps = [b.stat().st_mtime_ns for b in blobs]
    p = _python(_OPEN_TWICE, str(folder))
    assert p.stdout.splitlines() == ["True True 1", "True True 1", "True True 2"]
    assert sorted((folder / CACHE_FOLDER).rglob("*.blob")) == blobs and [b.stat().st_mtime_ns for b in blobs] == stamps


_SIGNAL_AFTER_CLOSE = """
import signal, subprocess
from rvos_edge.engines import open_engines
signal.signal(signal.SIGCHLD, lambda *_: None)      # a Python handler (SA_ONSTACK), as torch's DataLoader leaves
first = open_engines(sys.argv[1], "openvino", "fp32", threads=1)
second = open_engines(sys.argv[1], "openvino", "int8", threads=1)
del first, second                                   # closed in the order they were opened
subprocess.run(["true"], check=True)                # its exit: a SIGCHLD for the main thread
print("delivered")
"""


@needs_openvino
def test_a_signal_after_engines_are_closed_is_delivered(art: Path) -> None:
    """A Core per open once left the main thread on an unmapped sigaltstack (runner.shared_core): this
    child then died of SIGSEGV at the SIGCHLD, as pytest did."""
    p = _python(_SIGNAL_AFTER_CLOSE, str(art))
    assert (p.returncode, p.stdout) == (0, "delivered\n"), (p.returncode, p.stderr)


@needs_openvino
def test_hints_and_threads_reach_the_compiled_models(art: Path) -> None:
    default = open_engines(art, "openvino", "fp32", threads=1)
    fast = open_engines(art, "openvino", "fp32", threads=2, hint="throughput")
    for runner in (default.text, default.clip):
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert str(runner.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    for runner in (fast.text, fast.clip):
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 2
        assert str(runner.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    with pytest.raises(UserError, match=r"unknown OpenVINO hint 'fastest' \(choose from latency, throughput\)"):
        open_engines(art, "openvino", "fp32", hint="fastest")
    with pytest.raises(UserError, match=r"the openvino backend runs on cpu, not 'cuda'"):
        open_engines(art, "openvino", "fp32", device="cuda")


@needs_openvino
def test_check_has_openvino_rows(art: Path) -> None:
    rows = {r.precision: r for r in check_folder(art, backends=["openvino"], clips=1, threads=1)}
    assert list(rows) == ["fp32", "int8", "bf16"]
    assert rows["fp32"].status == "ok" and rows["fp32"].max_abs <= 1e-4
    assert rows["bf16"].status == ("ok" if HAS_BF16 else "skipped")


def test_bf16_elsewhere_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    for backend in ("ort", "trt"):
        assert main(["build", str(art), "--backend", backend, "--precision", "bf16"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert (f"bf16 is an execution precision of the openvino backend (the FP32 graphs with a bf16 inference "
                f"hint), not a graph variant: the {backend} backend cannot run it; use --backend openvino") in err
    assert main(["build", str(art), "--backend", "openvino", "--precision", "bf16"]) == 0
    assert capsys.readouterr().out == (f"nothing to build: openvino runs bf16 as the FP32 graphs of {art} with a "
                                       "bf16 execution hint\n")
    with pytest.raises(UserError, match="bf16 is an execution precision of the openvino backend"):
        open_engines(art, "ort", "bf16")
    with pytest.raises(UserError, match="the trt backend cannot run it"):
        plan_build(TrtVersion(10, 3), "bf16", ArtifactSet.from_manifest(load_manifest(art), str(art)))
    assert load_manifest(art).graph_files("bf16") == load_manifest(art).graph_files("fp32")


def test_without_openvino_open_and_check_are_one_line(tmp_path: Path) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    code = ("sys.modules['openvino'] = None\n"
            "from rvos_edge.check import check_folder\nfrom rvos_edge.engines import open_engines\n"
            "from rvos_edge.errors import UserError\n"
            "try:\n    open_engines(sys.argv[1], 'openvino')\nexcept UserError as e:\n    print(e)\n"
            "for r in check_folder(sys.argv[1], backends=['openvino'], clips=1):\n"
            "    print(r.backend, r.precision, r.status, r.note)\n")
    p = _python(code, str(art))
    assert p.returncode == 0, p.stderr
    line = "the openvino backend needs the openvino extra (not installed: openvino): pip install 'rvos-edge[openvino]'"
    assert p.stdout.splitlines() == [line, f"openvino fp32 skipped {line}", f"openvino bf16 skipped {line}"]
