"""`rvos-edge triton`: the model repository's configs parse with tritonclient's ModelConfig and match the
manifest; the model files are the folder's; refusals are one line and exit 2 (rvos_edge.serving.triton_repo)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import onnx
import pytest
from fake_artifacts import make_fake_artifacts
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from rvos_edge.artifacts.manifest import (
    GRAPH_NAMES,
    hash_files,
    load_manifest,
    write_manifest,
)
from rvos_edge.artifacts.tensorrt import EngineEntry, engine_file, with_engines
from rvos_edge.cli import main
from rvos_edge.fileio import sha256_file

REPO = Path(__file__).resolve().parents[1]
CLIP_LEN = (2, 6)                      # a clip-length range: frames and mask_logits get a -1 dim


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake folder with a clip-length range and an fp16 variant (graphs told apart by an offset)."""
    return make_fake_artifacts(tmp_path_factory.mktemp("art") / "art", clip_len=CLIP_LEN, variants={"fp16": 0.5})


def add_engines(art: Path, precision: str = "fp16", **changes: object) -> EngineEntry:
    """Record TensorRT engines of `precision` in art's manifest (their bytes: stand-ins, never deserialized)."""
    manifest = load_manifest(art)
    fields = dict(precision=precision, tensorrt_version="10.3.0", gpu="Fake GPU", compute_capability="8.7",
                  files={g: engine_file(g, precision) for g in GRAPH_NAMES},
                  onnx={g: {"file": f"{g}.onnx", "sha256": manifest.files[f"{g}.onnx"]} for g in GRAPH_NAMES},
                  strongly_typed=False, plugin=None, max_batch=2, timing_cache="tensorrt.timing.cache",
                  log=f"tensorrt_build.{precision}.log", notices=[])
    entry = EngineEntry(**{**fields, **changes})
    for g in GRAPH_NAMES:
        (art / entry.files[g]).write_bytes(f"{g} {precision} engine".encode())
    write_manifest(art, with_engines(manifest, entry, hash_files(art, entry.files.values())))
    return entry


def triton(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    rc = main(["triton", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def read_config(repo: Path, model: str) -> pb.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), pb.ModelConfig())


def tensors(config_tensors: Iterable[pb.ModelInput | pb.ModelOutput]) -> dict[str, tuple[int, list[int]]]:
    """{name: (Triton data type, dims)} of a config's inputs or outputs."""
    return {t.name: (t.data_type, list(t.dims)) for t in config_tensors}


def test_onnxruntime_repository(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = tmp_path / "repo"
    rc, out, err = triton(capsys, art, "--out", repo, "--precision", "fp16", "--max-batch", 4, "--instances", 2,
                          "--device", "cpu", "--max-streams", 16, "--idle-timeout", 30, "--queue-delay", 2)
    assert (rc, err) == (0, "")
    assert out.startswith(f"wrote Triton model repository {repo} for the onnxruntime backend, fp16, max batch 4")
    assert sorted(p.name for p in repo.iterdir()) == ["README.txt", "clip_model", "text_encoder"]

    ce, s, m, mh = 64, 64, 16, 2                 # the tiny preset's embed dim, image size, mask size, prompts
    text = read_config(repo, "text_encoder")
    assert (text.name, text.backend, text.max_batch_size) == ("text_encoder", "onnxruntime", 4)
    assert tensors(text.input) == {"tokens": (pb.TYPE_INT64, [77])}
    assert tensors(text.output) == {"text_feats": (pb.TYPE_FP32, [77, ce]), "text_mask": (pb.TYPE_BOOL, [77]),
                                    "text_global": (pb.TYPE_FP32, [ce])}
    assert text.dynamic_batching.max_queue_delay_microseconds == 2000
    assert not text.HasField("sequence_batching")

    clip = read_config(repo, "clip_model")
    assert (clip.name, clip.backend, clip.max_batch_size) == ("clip_model", "onnxruntime", 4)
    assert tensors(clip.input) == {"frames": (pb.TYPE_UINT8, [-1, s, s, 3]), "text_feats": (pb.TYPE_FP32, [77, ce]),
                                   "text_mask": (pb.TYPE_BOOL, [77]), "text_global": (pb.TYPE_FP32, [ce])}
    assert tensors(clip.output) == {"mask_logits": (pb.TYPE_FP32, [-1, m, m])}
    assert not clip.HasField("dynamic_batching")
    seq = clip.sequence_batching
    assert seq.max_sequence_idle_microseconds == 30_000_000
    assert seq.WhichOneof("strategy_choice") == "oldest"
    assert (seq.oldest.max_candidate_sequences, list(seq.oldest.preferred_batch_size),
            seq.oldest.max_queue_delay_microseconds) == (16, [4], 2000)
    [state] = seq.state
    assert (state.input_name, state.output_name, state.data_type, list(state.dims)) == \
        ("history", "history_out", pb.TYPE_FP32, [mh, ce])
    [initial] = state.initial_state
    assert (initial.data_type, list(initial.dims), initial.WhichOneof("state_data")) == \
        (pb.TYPE_FP32, [mh, ce], "zero_data")
    assert initial.zero_data
    [control_input] = seq.control_input
    [control] = control_input.control
    assert (control_input.name, control.kind, list(control.fp32_false_true)) == \
        ("has_history", pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START, [1.0, 0.0])
    for config in (text, clip):
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]

    files = load_manifest(art).files
    for model in GRAPH_NAMES:
        assert sorted(p.name for p in (repo / model).iterdir()) == ["1", "config.pbtxt"]
        assert sha256_file(repo / model / "1" / "model.onnx") == files[f"{model}.fp16.onnx"]
    readme = (repo / "README.txt").read_text()
    assert "tritonserver --model-repository=/models" in readme and f'-v "{repo.resolve()}:/models"' in readme
    assert "sequence_start=(k == 0)" in readme


def test_manifest_tensors_are_the_configs(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every tensor of the manifest is an input or output of its config, the state and control, or absent by rule."""
    repo = tmp_path / "repo"
    assert triton(capsys, art, "--out", repo)[0] == 0
    manifest = load_manifest(art)
    dtypes = {"bool": pb.TYPE_BOOL, "uint8": pb.TYPE_UINT8, "int64": pb.TYPE_INT64, "float32": pb.TYPE_FP32}
    for model, graph in manifest.graphs.items():
        config = read_config(repo, model)
        assert config.max_batch_size == 8 and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_AUTO
        listed = {**tensors(config.input), **tensors(config.output)}
        for t in (*graph.inputs, *graph.outputs):
            want = (dtypes[t.dtype], [-1 if isinstance(d, str) else d for d in t.shape[1:]])
            if t.name in ("history", "history_out"):
                state = config.sequence_batching.state[0]
                assert (state.data_type, list(state.dims)) == want
            elif t.name == "has_history":
                assert config.sequence_batching.control_input[0].name == t.name and want == (pb.TYPE_FP32, [1])
            else:
                assert listed.pop(t.name) == want
        assert listed == {}


def test_tensorrt_repository(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")               # static clip length: frames [Tc, S, S, 3]
    entry = add_engines(art)
    repo = tmp_path / "repo"
    rc, out, err = triton(capsys, art, "--out", repo, "--backend", "tensorrt", "--precision", "fp16")
    assert (rc, err) == (0, "") and "for the tensorrt backend, fp16, max batch 2" in out
    files = load_manifest(art).files
    for model in GRAPH_NAMES:
        config = read_config(repo, model)
        assert (config.backend, config.max_batch_size) == ("tensorrt", entry.max_batch)
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_GPU)]
        assert sorted(p.name for p in (repo / model / "1").iterdir()) == ["model.plan"]
        assert sha256_file(repo / model / "1" / "model.plan") == files[entry.files[model]]
    assert tensors(read_config(repo, "clip_model").input)["frames"] == (pb.TYPE_UINT8, [3, 64, 64, 3])
    assert "TensorRT 10.3.0 on a Fake GPU" in (repo / "README.txt").read_text()

    rc, _, err = triton(capsys, art, "--out", repo, "--backend", "tensorrt", "--precision", "fp16", "--max-batch", 4)
    assert rc == 2 and err.count("\n") == 1
    assert f"take batches of up to 2, not 4: rebuild them with `rvos-edge build {art} --backend trt " \
           "--precision fp16 --max-batch 4`" in err
    add_engines(art, "fp32", plugin="jit")
    rc, _, err = triton(capsys, art, "--out", repo, "--backend", "tensorrt", "--precision", "fp32")
    assert rc == 2 and err.count("\n") == 1 and "CubeFrameAttention plugin just in time" in err
    assert read_config(repo, "clip_model").max_batch_size == 2           # the refusals left the repository as it was


def test_tensorrt_without_engines_refuses(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = triton(capsys, art, "--out", tmp_path / "repo", "--backend", "tensorrt", "--precision", "fp16")
    assert (rc, out) == (2, "")
    assert err == (f"rvos-edge triton: error: {art} has no TensorRT fp16 engines: build them with "
                   f"`rvos-edge build {art} --backend trt --precision fp16`\n")
    assert not (tmp_path / "repo").exists()


def test_rerun_replaces_the_repository(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = tmp_path / "repo"
    assert triton(capsys, art, "--out", repo, "--max-batch", 2)[0] == 0
    (repo / "clip_model" / "2").mkdir()                                 # a version the next run does not write
    assert triton(capsys, art, "--out", repo, "--max-batch", 3)[0] == 0
    assert read_config(repo, "clip_model").max_batch_size == 3
    assert not (repo / "clip_model" / "2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]       # no staging or lock left beside it

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _, err = triton(capsys, art, "--out", other)
    assert rc == 2 and err.count("\n") == 1 and "holds other files" in err
    assert (other / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    (["--instances", "0"], "--instances must be at least 1, got 0"),
    (["--max-streams", "-1"], "--max-streams must be at least 1, got -1"),
    (["--idle-timeout", "0"], "--idle-timeout must be positive, got 0"),
    (["--queue-delay", "-1"], "--queue-delay must be >= 0, got -1"),
    (["--backend", "tensorrt", "--device", "cpu"], "TensorRT engines run on the GPU only"),
    (["--precision", "int8"], "no int8 graphs in this artifact folder"),
    (["--precision", "bf16"], "bf16 is an execution precision of the openvino backend"),
])
def test_bad_flags_are_one_line(flags: list[str], message: str, art: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    rc, out, err = triton(capsys, art, "--out", tmp_path / "repo", *flags)
    assert (rc, out) == (2, "")
    assert err.startswith("rvos-edge triton: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "repo").exists()


def test_external_data_goes_beside_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art = make_fake_artifacts(tmp_path / "art")
    model = onnx.load(str(art / "clip_model.onnx"))
    onnx.save(model, str(art / "clip_model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="clip_model.onnx.data", size_threshold=0, convert_attribute=True)
    manifest = load_manifest(art, verify_files=False)
    names = [*manifest.files, "clip_model.onnx.data"]
    write_manifest(art, dataclasses.replace(manifest, files=hash_files(art, names)))
    repo = tmp_path / "repo"
    assert triton(capsys, art, "--out", repo)[0] == 0
    version = repo / "clip_model" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["clip_model.onnx.data", "model.onnx"]
    assert sha256_file(version / "clip_model.onnx.data") == sha256_file(art / "clip_model.onnx.data")
    # onnx.load reads the external data beside the file it loads: the copy loads as the folder's graph does
    assert onnx.load(str(version / "model.onnx")) == onnx.load(str(art / "clip_model.onnx"))


# Blocks torch, writes a repository, then blocks tritonclient and writes again: prints [rc, stderr] of each.
_WITHOUT = """
import contextlib, io, json, sys
sys.modules["torch"] = None
from rvos_edge.cli import main
results = []
for blocked in (None, "tritonclient"):
    if blocked:
        sys.modules[blocked] = None
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(["triton", sys.argv[1], "--out", sys.argv[2]]), err.getvalue()])
print(json.dumps(results))
"""


def test_torch_free_and_the_serve_extra(art: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", _WITHOUT, str(art), str(tmp_path / "repo")], capture_output=True,
                       text=True, env=env, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    written, without_extra = json.loads(p.stdout)
    assert written == [0, ""]
    assert without_extra == [2, ("rvos-edge triton: error: rvos-edge triton needs the serve extra (not installed: "
                                 "tritonclient): pip install 'rvos-edge[serve]'\n")]
