"""manifest.json: round trip, and every way a folder can be wrong gives a one-line ManifestError."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fake_artifacts import TINY, edit_manifest, make_fake_artifacts

from rvos_edge.artifacts import manifest as mf
from rvos_edge.artifacts.manifest import (
    FORMAT,
    FORMAT_VERSION,
    ManifestError,
    TensorSpec,
    expected_graphs,
    load_manifest,
    write_manifest,
)
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes, sha256_file


@pytest.fixture
def art(tmp_path: Path) -> Path:
    return make_fake_artifacts(tmp_path / "art", variants={"fp16": 0.25})


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_round_trip_matches_what_was_written(art: Path) -> None:
    m = load_manifest(art)
    d = json.loads((art / "manifest.json").read_text())
    assert d["format"] == FORMAT == "rvos-edge-artifacts" and d["format_version"] == FORMAT_VERSION == 1
    assert m.config == TINY and m.clip_len == (3, 3) and m.opset == 17 and m.precision == "fp32"
    assert m.attention == "decomposed"
    assert m.to_dict() == d
    assert set(m.files) == {"text_encoder.onnx", "clip_model.onnx", "text_encoder.fp16.onnx", "clip_model.fp16.onnx"}
    for name, digest in m.files.items():
        assert digest == sha256_file(art / name)
    frames = d["graphs"]["clip_model"]["inputs"][0]
    assert frames == {"name": "frames", "dtype": "uint8", "shape": ["B", 3, 64, 64, 3]}
    assert d["graphs"]["clip_model"]["outputs"][0] == {"name": "mask_logits", "dtype": "float32", "shape": ["B", 3, 16, 16]}


def test_graph_files_by_precision(art: Path) -> None:
    m = load_manifest(art)
    assert m.graph_files() == {"text_encoder": "text_encoder.onnx", "clip_model": "clip_model.onnx"}
    assert m.graph_files("fp16") == {"text_encoder": "text_encoder.fp16.onnx", "clip_model": "clip_model.fp16.onnx"}
    assert m.precisions == ["fp32", "fp16"]
    with pytest.raises(ManifestError) as e:
        m.graph_files("int8")
    assert "int8" in _one_line(e) and "fp32, fp16" in str(e.value)


def test_expected_graphs_static_and_range() -> None:
    static = expected_graphs(TINY, (6, 6))["clip_model"]
    assert static.inputs[0] == TensorSpec("frames", "uint8", ("B", 6, 64, 64, 3))
    ranged = expected_graphs(TINY, (2, 8))["clip_model"]
    assert ranged.outputs[0] == TensorSpec("mask_logits", "float32", ("B", "Tc", 16, 16))
    assert [t.name for t in ranged.inputs] == ["frames", "text_feats", "text_mask", "text_global", "history", "has_history"]
    assert ranged.inputs[4].shape == ("B", 2, 64) and ranged.inputs[5].shape == ("B", 1)


def test_wrong_sha256_names_the_file(art: Path) -> None:
    with open(art / "clip_model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "clip_model.onnx" in _one_line(e) and "sha256" in str(e.value)
    assert load_manifest(art, verify_files=False).config == TINY


def test_missing_file_names_it(art: Path) -> None:
    (art / "text_encoder.fp16.onnx").unlink()
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "text_encoder.fp16.onnx" in _one_line(e) and "missing" in str(e.value)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_format_version_says_re_export(art: Path, version) -> None:
    edit_manifest(art, format_version=version)
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    msg = _one_line(e)
    assert "re-export with this version of rvos-edge" in msg and repr(version) in msg and "version 1" in msg


def test_wrong_format(art: Path) -> None:
    edit_manifest(art, format="something-else")
    with pytest.raises(ManifestError, match="not an rvos-edge artifact folder"):
        load_manifest(art)


def test_no_manifest_or_not_json(tmp_path: Path, art: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="not a folder"):
        load_manifest(tmp_path / "missing")
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "manifest.json" in _one_line(e)


def test_other_tokenizer_vocabulary(art: Path) -> None:
    edit_manifest(art, tokenizer_vocab_sha256="0" * 64)
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "tokenizer vocabulary" in _one_line(e)


@pytest.mark.parametrize("config, fragment", [({**TINY.to_dict(), "bogus": 1}, "bogus"),
                                              ({**TINY.to_dict(), "image_size": 65}, "image_size"),
                                              ("tiny", "config")])
def test_config_that_does_not_parse(art: Path, config, fragment: str) -> None:
    edit_manifest(art, config=config)
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert fragment in _one_line(e)


def test_graph_tensors_must_match_the_contract(art: Path) -> None:
    d = json.loads((art / "manifest.json").read_text())
    d["graphs"]["clip_model"]["outputs"][0]["name"] = "logits"
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "clip_model" in _one_line(e) and "mask_logits" in str(e.value)


def test_graph_file_without_sha256(art: Path) -> None:
    d = json.loads((art / "manifest.json").read_text())
    del d["files"]["clip_model.fp16.onnx"]
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="clip_model.fp16.onnx"):
        load_manifest(art)


def test_file_outside_the_folder_is_refused(art: Path) -> None:
    d = json.loads((art / "manifest.json").read_text())
    d["files"]["../escape.onnx"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="outside the artifact folder"):
        load_manifest(art)


def test_manifest_error_is_a_user_error() -> None:
    assert issubclass(ManifestError, UserError)


def test_write_is_atomic(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (art / "manifest.json").read_bytes()
    m = load_manifest(art)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(mf.os, "replace", fail)
    with pytest.raises(UserError, match="cannot write .*manifest.json: disk full"):     # one line, exit 2
        write_manifest(art, m)
    assert (art / "manifest.json").read_bytes() == before
    assert not [p for p in os.listdir(art) if p.startswith(".")]
    monkeypatch.undo()
    atomic_write_bytes(art / "x.bin", b"abc")
    assert (art / "x.bin").read_bytes() == b"abc" and not [p for p in os.listdir(art) if p.startswith(".")]


# ---- optional "calibration" field (INT8 variants and TensorRT caches, rvos_edge.calib) ----------------

def _add_calibration(art: Path, cache: dict[str, str]) -> dict:
    for name in cache.values():
        (art / name).write_text("TRT-100300-EntropyCalibration2\nx: 3c010204\n")
    d = json.loads((art / "manifest.json").read_text())
    d["calibration"] = {"method": "entropy", "samples": 4, "seed": 0, "data": "synthetic:1:4", "exclude": [],
                        "tool": "onnxruntime.quantization", "trt_version": "10.3.0", "cache": cache}
    d["files"].update({name: sha256_file(art / name) for name in cache.values()})
    (art / "manifest.json").write_text(json.dumps(d))
    return d


def test_calibration_round_trips_and_names_its_caches(art: Path) -> None:
    assert load_manifest(art).calibration is None and "calibration" not in load_manifest(art).to_dict()
    assert load_manifest(art).calibration_cache("clip_model") is None
    d = _add_calibration(art, {"clip_model": "clip_model.calib.cache"})
    m = load_manifest(art)
    assert m.to_dict() == d
    assert m.calibration_cache("clip_model") == "clip_model.calib.cache"
    assert m.calibration_cache("text_encoder") is None


def test_calibration_cache_is_checked_like_every_file(art: Path) -> None:
    _add_calibration(art, {"clip_model": "clip_model.calib.cache"})
    (art / "clip_model.calib.cache").write_text("changed\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "clip_model.calib.cache" in _one_line(e) and "sha256" in str(e.value)
    d = json.loads((art / "manifest.json").read_text())
    del d["files"]["clip_model.calib.cache"]
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "clip_model.calib.cache" in _one_line(e) and "no sha256" in str(e.value)


@pytest.mark.parametrize("calibration", ["entropy", {"cache": ["a"]}, {"cache": {"vision": "a.cache"}},
                                         {"cache": {"clip_model": 3}}])
def test_malformed_calibration(art: Path, calibration) -> None:
    edit_manifest(art, calibration=calibration)
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    assert "calibration" in _one_line(e)
