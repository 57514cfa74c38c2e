"""ONNX export: contract, self-verification, ORT vs PyTorch over chained clips (DESIGN section 4)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_frames, make_tokens

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.cli import main
from rvos_edge.errors import UserError
from rvos_edge.export import onnx_export
from rvos_edge.fileio import sha256_file
from rvos_edge.model import build_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=5), path)
    return path


@pytest.fixture(scope="module")
def static_dir(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "art"
    assert main(["export", str(tiny_ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ranged_dir(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranged") / "art"
    assert main(["export", str(tiny_ckpt), "--out", str(out), "--clip-len-range", "1:6"]) == 0
    return out


def chained_errors(ckpt, folder, clips: int, batch: int, clip_len: int) -> tuple[float, float]:
    """Run `clips` consecutive clips through ORT and PyTorch, each feeding its own history forward."""
    model = load_checkpoint(ckpt).eval()
    cfg = model.config
    text_s = ort.InferenceSession(str(folder / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    clip_s = ort.InferenceSession(str(folder / "clip_model.onnx"), providers=["CPUExecutionProvider"])
    tokens = make_tokens(["the red circle moving up", "the square on the left"][:batch], cfg.language_prompts)
    feats, mask, global_ = text_s.run(None, {"tokens": tokens.numpy()})
    with torch.no_grad():
        text = model.encode_text(tokens)
    h_ort = np.zeros((batch, cfg.history_prompts, cfg.embed_dim), np.float32)
    h_pt = torch.zeros(batch, cfg.history_prompts, cfg.embed_dim)
    worst_logits = worst_history = 0.0
    for i in range(clips):
        frames = make_frames(batch, clip_len, cfg.image_size, seed=100 + i)
        has = np.full((batch, 1), float(i > 0), np.float32)
        logits_ort, h_ort = clip_s.run(None, {"frames": frames.numpy(), "text_feats": feats, "text_mask": mask,
                                              "text_global": global_, "history": h_ort, "has_history": has})
        with torch.no_grad():
            logits_pt, h_pt = model.forward_clip(frames, text, h_pt, torch.from_numpy(has))
        worst_logits = max(worst_logits, float(np.abs(logits_ort - logits_pt.numpy()).max()))
        worst_history = max(worst_history, float(np.abs(h_ort - h_pt.numpy()).max()))
    return worst_logits, worst_history


def test_static_export_matches_pytorch_over_chained_clips(tiny_ckpt, static_dir):
    logits, history = chained_errors(tiny_ckpt, static_dir, clips=3, batch=2, clip_len=3)
    assert logits <= 1e-3 and history <= 1e-4


def test_ranged_export_runs_at_both_ends(tiny_ckpt, ranged_dir):
    for tc in (1, 6):
        logits, history = chained_errors(tiny_ckpt, ranged_dir, clips=3, batch=1, clip_len=tc)
        assert logits <= 1e-3 and history <= 1e-4


def test_manifest_describes_the_folder(static_dir, ranged_dir):
    m = load_manifest(static_dir)
    assert m.clip_len == (3, 3) and m.precision == "fp32" and m.attention == "decomposed" and m.opset == 18
    assert sorted(m.files) == sorted(p.name for p in static_dir.iterdir() if p.name != "manifest.json")
    for name, digest in m.files.items():
        assert sha256_file(static_dir / name) == digest
    assert m.config.name == "tiny" and "torch" in m.producer
    assert load_manifest(ranged_dir).clip_len == (1, 6)


def test_graph_dims_and_ops(static_dir, ranged_dir):
    def dims(model, name):
        value = next(v for v in list(model.graph.input) + list(model.graph.output) if v.name == name)
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    static = onnx.load(str(static_dir / "clip_model.onnx"))
    assert dims(static, "frames") == ["B", 3, 64, 64, 3] and dims(static, "mask_logits") == ["B", 3, 16, 16]
    ranged = onnx.load(str(ranged_dir / "clip_model.onnx"))
    assert dims(ranged, "frames")[:2] == ["B", "Tc"]
    assert {n.domain for n in ranged.graph.node} <= {"", "ai.onnx"}     # standard ops only, no plugin node
    onnx.checker.check_model(ranged)


def test_failed_verification_writes_nothing(tiny_ckpt, static_dir, tmp_path, monkeypatch):
    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text("{}")                          # an earlier export stays as it was
    (out / "keep.txt").write_text("mine")
    # the graphs of the same checkpoint and clip length, copied instead of traced again; the verification is real
    monkeypatch.setattr(onnx_export, "_export_graph",
                        lambda graph, spec, sample, path, lengths: shutil.copyfile(static_dir / path.name, path))
    monkeypatch.setattr(onnx_export, "TOLERANCE", {k: -1.0 for k in onnx_export.TOLERANCE})
    with pytest.raises(UserError, match="verification failed"):
        onnx_export.export_artifacts(tiny_ckpt, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]            # no staging folder or lock left behind
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json"]


@pytest.mark.parametrize("argv, message", [
    (["--opset", "17"], "opset 17 is not supported"),
    (["--clip-len", "0"], "clip length must be >= 1"),
    (["--clip-len-range", "5:2"], "clip length must be >= 1"),
])
def test_bad_export_arguments(tiny_ckpt, tmp_path, capsys, argv, message):
    assert main(["export", str(tiny_ckpt), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_vit_b16_export_matches_pytorch(tmp_path):
    ckpt = tmp_path / "b16.safetensors"
    save_checkpoint(build_model("vit-b16", seed=0), ckpt)
    out = tmp_path / "art"
    manifest, errors = onnx_export.export_artifacts(ckpt, out, progress=False)
    assert manifest.clip_len == (6, 6) and json.loads((out / "manifest.json").read_text())["config"]["name"] == "vit-b16"
    logits, history = chained_errors(ckpt, out, clips=3, batch=1, clip_len=6)
    assert logits <= 1e-3 and history <= 1e-4


def test_segmenter_on_exported_folder_matches_torch_backend(tiny_ckpt, static_dir):
    """The exported folder through ORT and the checkpoint through torch give the same masks,
    one per frame at each frame's own size, for a stream of 7 frames (not a multiple of Tc=3)."""
    from rvos_edge.runtime import Segmenter
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (50 + 3 * i, 70, 3), dtype=np.uint8) for i in range(7)]
    results = {}
    for backend, path in (("ort", static_dir), ("torch", tiny_ckpt)):
        seg = Segmenter.open(path, backend=backend)
        seg.set_expression("the red circle on the left")
        out = [r for f in frames for r in seg.push(f)] + seg.flush()
        assert [r.index for r in out] == list(range(7))
        assert [r.mask.shape for r in out] == [f.shape[:2] for f in frames]
        results[backend] = out
    for a, b in zip(results["ort"], results["torch"]):
        assert (a.mask != b.mask).mean() < 1e-3 and abs(a.score - b.score) < 1e-3
