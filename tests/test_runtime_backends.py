"""Backends: the ORT runners against the fake graphs' numpy references, the registry's errors,
the torch backend against the model called directly."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fake_artifacts import TINY, make_fake_artifacts, ref_clip, ref_text

from rvos_edge.artifacts.manifest import expected_graphs
from rvos_edge.engines.ort.session import resolve_providers
from rvos_edge.errors import UserError
from rvos_edge.fileio import sha256_file
from rvos_edge.runtime import Runner, Segmenter, open_engines


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("art") / "art", variants={"fp16": 0.25})


def _feeds(rng: np.random.RandomState, tc: int, b: int = 2) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    tokens = np.zeros((b, 77), np.int64)
    tokens[:, 0], tokens[:, 1:5], tokens[:, 5] = 49406, rng.randint(1, 49000, (b, 4)), 49407
    frames = rng.randint(0, 256, (b, tc, 64, 64, 3)).astype(np.uint8)
    return tokens, {"frames": frames, "history": rng.randn(b, 2, 64).astype(np.float32),
                    "has_history": np.array([[0.0], [1.0]], np.float32)[:b]}


def test_ort_runners_have_the_contract_tensors(art: Path) -> None:
    e = open_engines(art)
    want = expected_graphs(TINY, (3, 3))
    assert e.text.inputs == want["text_encoder"].inputs and e.text.outputs == want["text_encoder"].outputs
    assert e.clip.inputs == want["clip_model"].inputs and e.clip.outputs == want["clip_model"].outputs
    assert (e.backend, e.precision, e.clip_len, e.config) == ("ort", "fp32", (3, 3), TINY)


def test_ort_outputs_match_independent_reference(art: Path) -> None:
    e = open_engines(art, threads=1)
    tokens, clip_feeds = _feeds(np.random.RandomState(0), 3)
    text = e.text.run({"tokens": tokens})
    ref = ref_text(tokens)
    assert text["text_mask"].dtype == np.bool_ and np.array_equal(text["text_mask"], ref["text_mask"])
    for k in ("text_feats", "text_global"):
        assert text[k].dtype == np.float32
        np.testing.assert_allclose(text[k], ref[k], rtol=1e-5, atol=1e-7)
    out = e.clip.run({**clip_feeds, **text})
    assert out["mask_logits"].shape == (2, 3, 16, 16) and out["history_out"].shape == (2, 2, 64)
    for b in range(2):
        logits, history = ref_clip(clip_feeds["frames"][b], {k: v[b:b + 1] for k, v in ref.items()},
                                   clip_feeds["history"][b], float(clip_feeds["has_history"][b, 0]))
        np.testing.assert_allclose(out["mask_logits"][b], logits, atol=1e-5)
        np.testing.assert_allclose(out["history_out"][b], history, atol=1e-5)


def test_precision_picks_the_variant_files(art: Path) -> None:
    tokens, _ = _feeds(np.random.RandomState(1), 3, b=1)
    base = open_engines(art).text.run({"tokens": tokens})["text_global"]
    fp16 = open_engines(art, precision="fp16")
    assert fp16.precision == "fp16"
    np.testing.assert_allclose(fp16.text.run({"tokens": tokens})["text_global"], base + 0.25, atol=1e-6)
    with pytest.raises(UserError, match="no int8 graphs"):
        open_engines(art, precision="int8")


def _corrupt_copy(art: Path, dst: Path) -> Path:
    """A copy of `art` whose clip_model.onnx is garbage but listed with its true sha256."""
    dst.mkdir()
    for p in art.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    (dst / "clip_model.onnx").write_bytes(b"this is not a protobuf" * 10)
    d = json.loads((dst / "manifest.json").read_text())
    d["files"]["clip_model.onnx"] = sha256_file(dst / "clip_model.onnx")
    (dst / "manifest.json").write_text(json.dumps(d))
    return dst


def test_corrupt_onnx_is_one_line_user_error(art: Path, tmp_path: Path) -> None:
    bad = _corrupt_copy(art, tmp_path / "bad")
    with pytest.raises(UserError) as e:
        open_engines(bad)
    msg = str(e.value)
    assert "clip_model.onnx" in msg and "onnxruntime cannot load" in msg and "\n" not in msg


def test_registry_errors(art: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"TensorRT is not installed: pip install 'rvos-edge\[trt\]'"):
        open_engines(art, backend="trt")
    with pytest.raises(UserError, match="unknown backend 'onnx'"):
        open_engines(art, backend="onnx")
    with pytest.raises(UserError, match="does not exist"):
        open_engines(tmp_path / "nothing")
    with pytest.raises(UserError, match="export it first"):
        open_engines(art / "clip_model.onnx", backend="ort")
    with pytest.raises(UserError, match="torch backend opens a .safetensors checkpoint"):
        open_engines(art, backend="torch")
    with pytest.raises(UserError, match="threads must be >= 1"):
        open_engines(art, threads=0)


def test_providers() -> None:
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert resolve_providers(["cuda"], 1) == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    else:
        with pytest.raises(UserError, match="CUDAExecutionProvider is not available"):
            resolve_providers(["cuda"])


class _Declared(Runner):
    """A runner that only declares tensors."""

    def __init__(self, name: str, inputs, outputs) -> None:
        self.name, self.inputs, self.outputs = name, tuple(inputs), tuple(outputs)

    def run(self, feeds):
        raise AssertionError("not run")


def test_engines_check_tensor_names(art: Path) -> None:
    e = open_engines(art)
    outputs = [dataclasses.replace(e.clip.outputs[0], name="logits"), e.clip.outputs[1]]
    with pytest.raises(UserError, match="clip_model of .* has outputs"):
        dataclasses.replace(e, clip=_Declared("clip_model", e.clip.inputs, outputs))
    assert dataclasses.replace(e, clip=_Declared("clip_model", e.clip.inputs, e.clip.outputs)).clip_len == (3, 3)


@pytest.mark.parametrize("clip_len, requested, expected", [
    ((3, 3), None, 3), ((3, 3), 3, 3), ((3, 3), 4, None), ((2, 8), None, 3), ((2, 8), 8, 8),
    ((4, 8), None, 4), ((1, 2), None, 2), ((2, 8), 1, None), ((1, None), None, 3), ((1, None), 50, 50)])
def test_resolve_clip_len(art: Path, clip_len, requested, expected) -> None:
    e = dataclasses.replace(open_engines(art), clip_len=clip_len)
    if expected is None:
        with pytest.raises(UserError, match="re-export with --clip-len"):
            e.resolve_clip_len(requested)
    else:
        assert e.resolve_clip_len(requested) == expected


def test_torch_backend_matches_the_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from rvos_edge.model import TextFeatures, build_model, save_checkpoint
    from rvos_edge.tokenizer import tokenize_for_prompts

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=3), ckpt)
    with pytest.raises(UserError, match="fp32 only"):
        open_engines(ckpt, backend="torch", precision="fp16")
    seg = Segmenter.open(ckpt, backend="torch", clip_len=2)
    assert seg.engines.clip_len == (1, None) and seg.engines.backend == "torch"
    seg.set_expression("the cat")
    rng = np.random.RandomState(0)
    frames = [rng.randint(0, 256, (64, 64, 3)).astype(np.uint8) for _ in range(3)]
    results = [r for f in frames for r in seg.push(f)] + seg.flush()

    model = build_model("tiny", seed=3).eval()
    with torch.inference_mode():
        text = model.encode_text(torch.from_numpy(tokenize_for_prompts(["the cat"], 2).tokens))
        assert isinstance(text, TextFeatures)
        rgb = torch.from_numpy(np.stack([f[..., ::-1] for f in frames]).copy())
        hist = torch.zeros(1, 2, 64)
        l1, hist = model.forward_clip(rgb[None, :2], text, hist, torch.zeros(1, 1))
        l2, _ = model.forward_clip(rgb[None, [2, 2]], text, hist, torch.ones(1, 1))
    logits = torch.cat([l1[0], l2[0, :1]]).numpy()
    for r, lg in zip(results, logits):
        up = torch.nn.functional.interpolate(torch.from_numpy(lg)[None, None], size=(64, 64), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        sure = np.abs(up) > 1e-4
        assert np.array_equal(r.mask[sure], (up > 0)[sure])
        assert r.score == pytest.approx(float((1 / (1 + np.exp(-up)))[up > 0].mean()) if (up > 0).any() else 0.0,
                                        abs=1e-4)
    assert [r.index for r in results] == [0, 1, 2]


def test_ort_threads_sleep_when_idle(art: Path) -> None:
    """The pipeline's own threads share the cores: ONNX Runtime's intra-op threads must not spin."""
    from rvos_edge.engines.ort.session import ort_session

    session = ort_session(art / "clip_model.onnx", threads=2)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
