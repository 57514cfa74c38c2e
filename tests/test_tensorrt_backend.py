"""TensorRT runtime backend on the CPU: engine entries and their mismatch messages, the install hint when
TensorRT is missing, and TrtRunner / open_trt running Polygraphy's real TrtRunner, loaders and CUDA wrapper on a
fake tensorrt module and a fake libcudart (tests/fake_tensorrt.py), whose engines are the fake ONNX graphs in
onnxruntime."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_artifacts import TINY, make_fake_artifacts, ref_clip, ref_text
from fake_tensorrt import DEVICE_TO_DEVICE, HOST_TO_DEVICE, FakeCudart, FakeEngine, FakeTrt, install_tensorrt

from rvos_edge.artifacts.manifest import (
    CLIP_MODEL,
    GRAPH_NAMES,
    TEXT_ENCODER,
    ManifestError,
    expected_graphs,
    hash_files,
    load_manifest,
    write_manifest,
)
from rvos_edge.artifacts.tensorrt import (
    EngineEntry,
    GpuInfo,
    check_engine_compat,
    engine_entries,
    engine_entry,
    engine_file,
    plugin_graph_file,
    with_engines,
)
from rvos_edge.cli import main
from rvos_edge.engines import Engines
from rvos_edge.engines.trt.cuda import device_index
from rvos_edge.engines.trt.plan import profile_shapes
from rvos_edge.engines.trt.runner import TrtRunner
from rvos_edge.errors import UserError
from rvos_edge.runtime import Segmenter, open_engines

REPO = Path(__file__).resolve().parents[1]
HAS_TRT = __import__("importlib").util.find_spec("tensorrt") is not None
GPU = GpuInfo("Fake GPU", "8.7")
MAX_BATCH = 2


@pytest.fixture()
def art(tmp_path: Path) -> Path:
    return make_fake_artifacts(tmp_path / "art")


def entry(precision: str = "fp16", art: Path | None = None, **changes) -> EngineEntry:
    """An engine entry as the builder writes it (engine files: the fake ONNX bytes, see fake_tensorrt)."""
    onnx = {g: {"file": f"{g}.onnx", "sha256": load_manifest(art).files[f"{g}.onnx"] if art else "0" * 64}
            for g in GRAPH_NAMES}
    fields = dict(precision=precision, tensorrt_version="10.3.0", gpu=GPU.name, compute_capability="8.7",
                  files={g: engine_file(g, precision) for g in GRAPH_NAMES}, onnx=onnx, strongly_typed=False,
                  plugin=None, max_batch=MAX_BATCH, timing_cache="tensorrt.timing.cache",
                  log=f"tensorrt_build.{precision}.log", notices=[])
    return EngineEntry(**{**fields, **changes})


def add_engines(art: Path, e: EngineEntry) -> None:
    """Record `e` in art's manifest, its engines being copies of the ONNX graphs (what FakeRuntime loads)."""
    for g in GRAPH_NAMES:
        (art / e.files[g]).write_bytes((art / f"{g}.onnx").read_bytes())
    write_manifest(art, with_engines(load_manifest(art), e, hash_files(art, e.files.values())))


# ---------------------------------------------------------------- manifest entries and messages

def test_engine_file_names() -> None:
    assert [engine_file(g, p) for g in GRAPH_NAMES for p in ("fp32", "int8")] == \
        ["text_encoder.engine", "text_encoder.int8.engine", "clip_model.engine", "clip_model.int8.engine"]


def test_engine_entries_round_trip_through_the_manifest(art: Path) -> None:
    add_engines(art, entry("fp16", art))
    add_engines(art, entry("int8", art, strongly_typed=True, notices=["n"]))
    m = load_manifest(art)                          # sha256 of every engine checked on load
    assert sorted(engine_entries(m)) == ["fp16", "int8"]
    assert engine_entries(m)["int8"] == entry("int8", art, strongly_typed=True, notices=["n"])
    assert m.files["clip_model.int8.engine"] == hash_files(art, ["clip_model.onnx"])["clip_model.onnx"]
    (art / "clip_model.fp16.engine").write_bytes(b"changed")
    with pytest.raises(ManifestError, match="clip_model.fp16.engine does not match its sha256"):
        load_manifest(art)


def test_no_engines_names_the_build_command(art: Path) -> None:
    with pytest.raises(UserError) as e:
        engine_entry(load_manifest(art), "fp16", "art")
    assert "art has no TensorRT fp16 engines: build them with `rvos-edge build art --backend trt --precision fp16`" \
        in str(e.value)
    add_engines(art, entry("int8", art))
    with pytest.raises(UserError, match=r"no TensorRT fp16 engines \(it has: int8\)"):
        engine_entry(load_manifest(art), "fp16", "art")


@pytest.mark.parametrize("change, fragment", [
    ({"max_batch": 0}, "max_batch must be an integer >= 1"),
    ({"files": {"clip_model": "x.engine"}}, "must name an engine and its ONNX for each of text_encoder, clip_model"),
])
def test_malformed_entries(art: Path, change: dict, fragment: str) -> None:
    bad = {**entry("fp16", art).to_dict(), **change}
    with pytest.raises(ManifestError, match=fragment):
        EngineEntry.from_dict(bad, "tensorrt.engines.fp16")
    with pytest.raises(ManifestError, match="missing gpu"):
        EngineEntry.from_dict({k: v for k, v in entry().to_dict().items() if k != "gpu"}, "e")


@pytest.mark.parametrize("section, fragment", [
    ("engines", "manifest 'tensorrt' must be an object"),
    ({"engines": ["fp16"]}, "tensorrt.engines must map precisions to engine entries"),
    ({"plugin": {"op": "x"}}, "tensorrt.plugin must name the plugin clip graph file"),
])
def test_malformed_tensorrt_sections(art: Path, section, fragment: str) -> None:
    d = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**d, "tensorrt": section}))
    with pytest.raises(ManifestError, match=fragment):
        m = load_manifest(art)
        engine_entries(m)
        plugin_graph_file(m)


@pytest.mark.parametrize("version, gpu, fragments", [
    ("10.7.0", GPU, ["built with TensorRT 10.3.0 but TensorRT 10.7.0 is installed",
                     "rebuild with `rvos-edge build art --backend trt --precision fp16`"]),
    ("10.3.0", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"),
     ["built for Fake GPU (compute capability 8.7) but this GPU is NVIDIA A100-SXM4-80GB (compute capability 8.0)",
      "rebuild with `rvos-edge build art --backend trt --precision fp16` on this machine"]),
    ("10.3.0", GpuInfo("Other GPU", "8.7"), ["built for Fake GPU (compute capability 8.7) but this GPU is Other GPU"]),
])
def test_engine_mismatch_messages(version: str, gpu: GpuInfo, fragments: list[str]) -> None:
    with pytest.raises(UserError) as e:
        check_engine_compat(entry(), {"text_encoder.onnx": "0" * 64, "clip_model.onnx": "0" * 64}, "art", version, gpu)
    assert all(f in str(e.value) for f in fragments) and "\n" not in str(e.value), str(e.value)


def test_engines_from_changed_onnx_are_refused() -> None:
    files = {"text_encoder.onnx": "0" * 64, "clip_model.onnx": "1" * 64}
    with pytest.raises(UserError, match="clip_model.onnx of art changed after the fp16 clip_model engine was built"):
        check_engine_compat(entry(), files, "art", "10.3.0", GPU)
    check_engine_compat(entry(), {**files, "clip_model.onnx": "0" * 64}, "art", "10.3.0", GPU)


def test_device_names() -> None:
    assert (device_index("cuda"), device_index("cuda:3")) == (0, 3)
    with pytest.raises(UserError, match="runs on a CUDA GPU: use --device cuda"):
        device_index("cpu")


# ---------------------------------------------------------------- without TensorRT

@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_2_with_the_install_command(art: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build", str(art), "--backend", "trt", "--precision", "fp16"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("rvos-edge build: error: TensorRT is not installed: pip install 'rvos-edge[trt]'"), err
    with pytest.raises(UserError, match=r"TensorRT is not installed: pip install 'rvos-edge\[trt\]'"):
        open_engines(art, backend="trt")


def test_runtime_imports_neither_torch_nor_tensorrt() -> None:
    code = ("import sys, rvos_edge.runtime, rvos_edge.engines.trt.runner, rvos_edge.check, "
            "rvos_edge.engines.trt.plan, rvos_edge.artifacts.tensorrt, rvos_edge.engines.trt.build\n"
            "assert 'torch' not in sys.modules and 'tensorrt' not in sys.modules, sorted(sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------- TrtRunner on fake TensorRT, real Polygraphy

def install_fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTrt, FakeCudart]:
    """The fake tensorrt module and libcudart under Polygraphy (profiles: TINY, batch 1..MAX_BATCH), for one
    test; the test is skipped where the real TensorRT is installed."""
    if HAS_TRT:
        pytest.skip("the real TensorRT is installed: see tests/test_tensorrt_gpu.py")
    profiles = {}
    for shapes in profile_shapes(TINY, (TINY.clip_len, TINY.clip_len), MAX_BATCH).values():
        profiles.update(shapes)
    trt = install_tensorrt(monkeypatch, FakeCudart(), profiles)
    return trt, trt.cudart


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTrt:
    return install_fake_tensorrt(monkeypatch)[0]


def fake_engines(art: Path, trt, cuda_graph: bool = False) -> Engines:
    manifest = load_manifest(art)
    specs = expected_graphs(manifest.config, manifest.clip_len)
    profiles = profile_shapes(manifest.config, manifest.clip_len, MAX_BATCH)
    runners = {g: TrtRunner(trt, FakeEngine((art / f"{g}.onnx").read_bytes(), profiles[g], trt), g,
                            (*specs[g].inputs, *specs[g].outputs), cuda_graph) for g in GRAPH_NAMES}
    return Engines(text=runners[TEXT_ENCODER], clip=runners[CLIP_MODEL], config=manifest.config, precision="fp32",
                   clip_len=manifest.clip_len, backend="trt", source=str(art))


def clip_feeds(seed: int, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 400, (batch, 77))
    tokens[:, 20:] = 0
    text = {k: np.asarray(v, np.bool_ if k == "text_mask" else np.float32) for k, v in ref_text(tokens).items()}
    frames = rng.integers(0, 256, (batch, TINY.clip_len, 64, 64, 3), dtype=np.uint8)
    return {"frames": frames, **text, "history": rng.normal(size=(batch, 2, 64)).astype(np.float32),
            "has_history": np.ones((batch, 1), np.float32)}


def test_runner_matches_the_graph(art: Path, fake_trt) -> None:
    engines = fake_engines(art, fake_trt)
    assert [t.name for t in engines.clip.inputs][0] == "frames" and engines.clip.outputs[0].dtype == "float32"
    feeds = clip_feeds(0)
    out = engines.clip.run(feeds)
    logits, history = ref_clip(feeds["frames"][0], feeds, feeds["history"][0], 1.0)
    np.testing.assert_allclose(out["mask_logits"][0], logits, atol=1e-5)
    np.testing.assert_allclose(out["history_out"][0], history, atol=1e-5)
    tokens = np.zeros((2, 77), np.int64)
    tokens[:, :3] = [[49406, 320, 49407], [49406, 500, 49407]]
    text = engines.text.run({"tokens": tokens})                  # batch 2, within the profile
    np.testing.assert_allclose(text["text_global"], ref_text(tokens)["text_global"], rtol=1e-6)
    np.testing.assert_array_equal(text["text_mask"], tokens != 0)
    one = engines.text.run({"tokens": tokens[:1]})               # a smaller batch in the same buffers
    np.testing.assert_allclose(one["text_global"], text["text_global"][:1], rtol=1e-6)


def test_inputs_go_through_the_runners_own_buffers(art: Path, fake_trt) -> None:
    engines = fake_engines(art, fake_trt)
    buffers = {n: b.ptr for n, b in engines.clip._buffers.items()}
    engines.clip.run(clip_feeds(0))
    engines.clip.run(clip_feeds(1, batch=2))
    context = fake_trt.engines[-1].contexts[0]
    assert {n: b.ptr for n, b in engines.clip._buffers.items()} == buffers     # allocated once, at the largest shape
    assert {n: context.addresses[n] for n in buffers} == buffers                # what the engine reads
    assert all(fake_trt.cudart.copies_into(p) == [HOST_TO_DEVICE] * 2 for p in buffers.values())


def test_runner_refuses_shapes_outside_the_profile(art: Path, fake_trt) -> None:
    engines = fake_engines(art, fake_trt)
    with pytest.raises(UserError, match=r"input frames has shape \(3, 3, 64, 64, 3\).*larger --max-batch"):
        engines.clip.run(clip_feeds(0, batch=3))
    with pytest.raises(UserError, match="clip_model needs inputs history"):
        engines.clip.run({k: v for k, v in clip_feeds(0).items() if k != "history"})


def history_uploads(cudart: FakeCudart, engines: Engines) -> tuple[int, int]:
    """(host-to-device, device-to-device) copies into the clip runner's history buffer so far."""
    kinds = cudart.copies_into(engines.clip._buffers["history"].ptr)
    return kinds.count(HOST_TO_DEVICE), kinds.count(DEVICE_TO_DEVICE)


def test_history_stays_on_the_device_between_clips(art: Path, fake_trt) -> None:
    engines = fake_engines(art, fake_trt)
    frames = [np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8) for i in range(10)]
    reference = Segmenter.open(art, backend="ort")
    seg = Segmenter(engines)
    for s in (reference, seg):
        s.set_expression("the red cup")
    got = [r for f in frames[:9] for r in seg.push(f)]
    want = [r for f in frames[:9] for r in reference.push(f)]
    assert history_uploads(fake_trt.cudart, engines) == (1, 2)             # zeros once, then history_out -> history
    seg.reset()
    reference.reset()
    got += [r for f in frames[9:] for r in seg.push(f)] + seg.flush()
    want += [r for f in frames[9:] for r in reference.push(f)] + reference.flush()
    assert history_uploads(fake_trt.cudart, engines) == (2, 2)             # a reset uploads zeros again
    assert [r.index for r in got] == [r.index for r in want] == [*range(9), 0]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_history_out_is_read_only_and_other_histories_are_uploaded(art: Path, fake_trt) -> None:
    engines = fake_engines(art, fake_trt)
    feeds = clip_feeds(1)
    first = engines.clip.run(feeds)["history_out"]
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0, 0] = 1.0
    same = engines.clip.run({**feeds, "history": first})
    copied = engines.clip.run({**feeds, "history": first.copy()})
    assert history_uploads(fake_trt.cudart, engines) == (2, 1)
    np.testing.assert_array_equal(same["mask_logits"], copied["mask_logits"])
    np.testing.assert_array_equal(same["history_out"], copied["history_out"])
    logits, _ = ref_clip(feeds["frames"][0], feeds, first[0], 1.0)
    np.testing.assert_allclose(same["mask_logits"][0], logits, atol=1e-5)


def test_cuda_graph_is_captured_on_the_second_run_and_replayed(art: Path, fake_trt) -> None:
    engines = fake_engines(art, fake_trt, cuda_graph=True)
    cudart = fake_trt.cudart
    runs = [clip_feeds(2), clip_feeds(3), clip_feeds(4)]
    outs = [engines.clip.run(f) for f in runs]
    context = fake_trt.engines[-1].contexts[0]
    assert cudart.launches == 2 and context.executions == 3 and engines.clip._graph is not None
    for feeds, out in zip(runs, outs):                            # replays read the new inputs
        logits, history = ref_clip(feeds["frames"][0], feeds, feeds["history"][0], 1.0)
        np.testing.assert_allclose(out["mask_logits"][0], logits, atol=1e-5)
        np.testing.assert_allclose(out["history_out"][0], history, atol=1e-5)
    engines.clip.run(clip_feeds(5, batch=2))                      # new shapes: the graph is dropped, a plain run
    assert cudart.launches == 2 and context.executions == 4 and engines.clip._graph is None
    engines.clip.run(clip_feeds(6, batch=2))
    assert cudart.launches == 3 and context.executions == 5


# ---------------------------------------------------------------- open_trt on fake TensorRT, real Polygraphy

def test_open_trt_runs_the_engines_of_the_manifest(art: Path, fake_trt) -> None:
    add_engines(art, entry("fp16", art))
    seg = Segmenter.open(art, backend="trt", precision="fp16", device="cuda", threads=4)
    assert seg.engines.backend == "trt" and seg.engines.precision == "fp16" and len(fake_trt.engines) == 2
    reference = Segmenter.open(art, backend="ort")
    frames = [np.full((20, 20, 3), 40 * i, np.uint8) for i in range(4)]
    results = []
    for s in (seg, reference):
        s.set_expression("the red cup")
        results.append([r for f in frames for r in s.push(f)] + s.flush())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize("setup, fragment", [
    (lambda trt: setattr(trt, "__version__", "10.7.0"), "built with TensorRT 10.3.0 but TensorRT 10.7.0"),
    (lambda trt: setattr(trt.cudart, "gpu", ("Jetson Orin", 8, 7)), "this GPU is Jetson Orin"),
    (lambda trt: setattr(trt.cudart, "gpu", ("Fake GPU", 9, 0)), r"this GPU is Fake GPU \(compute capability 9.0\)"),
    (lambda trt: setattr(trt.cudart, "devices", 0), r"no usable CUDA GPU 0 \(0 found\)"),
])
def test_open_trt_refuses_mismatched_engines(art: Path, fake_trt, setup, fragment: str) -> None:
    add_engines(art, entry("fp16", art))
    setup(fake_trt)
    with pytest.raises(UserError, match=fragment):
        open_engines(art, backend="trt", precision="fp16")
    assert fake_trt.engines == []


def test_open_trt_reports_an_engine_tensorrt_cannot_load(art: Path, fake_trt, capsys: pytest.CaptureFixture) -> None:
    e = entry("fp32", art)
    add_engines(art, e)
    (art / e.files["clip_model"]).write_bytes(b"not an engine")
    m = load_manifest(art, verify_files=False)
    write_manifest(art, dataclasses.replace(m, files={**m.files, **hash_files(art, [e.files["clip_model"]])}))
    with pytest.raises(UserError) as error:
        open_engines(art, backend="trt")
    assert str(error.value) == (f"TensorRT cannot load {art / 'clip_model.engine'}: 1: [runtime.cpp::parsePlan::314] "
                                "Error Code 1: Serialization assertion plan->header.magicTag == "
                                "rt::kPLAN_MAGIC_TAG failed.")
    assert capsys.readouterr().out == ""                          # Polygraphy's messages are not printed
