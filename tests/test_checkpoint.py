"""Checkpoints (full and trainable-only) and the `init` / `info` commands."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch
from conftest import make_frames, make_tokens
from safetensors.torch import load, load_file, save_file

from rvos_edge.cli import main
from rvos_edge.config import get_config
from rvos_edge.errors import UserError
from rvos_edge.model import build_model, load_checkpoint, save_checkpoint
from rvos_edge.model.checkpoint import read_checkpoint_config
from rvos_edge.model.clip import CLIP
from rvos_edge.model.vlprvos import clip_arch


def _same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture()
def clip_file(tmp_path):
    """A tiny-shaped CLIP in OpenAI's key format, as our synthetic CLIP training writes it."""
    torch.manual_seed(7)
    clip = CLIP(clip_arch(get_config("tiny")))
    path = tmp_path / "clip.safetensors"
    save_file(clip.state_dict(), str(path), metadata={"vision_heads": "2", "text_heads": "2"})
    return path, clip


def test_full_round_trip_is_bit_exact(tmp_path):
    model = build_model("tiny", seed=11)
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    _same_state(model, loaded)
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in loaded.parameters()]
    frames, tokens = make_frames(1, 2, 64), make_tokens(["a dog"], 2)
    with torch.no_grad():
        assert torch.equal(model(frames, tokens)[0], loaded(frames, tokens)[0])


def test_gzipped_checkpoint_round_trip(tmp_path):
    model = build_model("tiny", seed=12)
    with torch.no_grad():
        model.clip.token_embedding.weight[100:] = 0           # compressible, as the demo CLIP's unused rows
    save_checkpoint(model, tmp_path / "m.safetensors")
    save_checkpoint(model, tmp_path / "m.safetensors.gz")
    gz, plain = tmp_path / "m.safetensors.gz", tmp_path / "m.safetensors"
    inner, flat = load(gzip.decompress(gz.read_bytes())), load_file(str(plain))     # plain safetensors inside
    assert inner.keys() == flat.keys() and all(torch.equal(inner[k], flat[k]) for k in flat)
    assert gz.stat().st_size < 0.5 * plain.stat().st_size
    assert read_checkpoint_config(gz) == model.config
    _same_state(model, load_checkpoint(gz))


def test_corrupt_gzipped_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.safetensors.gz"
    bad.write_bytes(gzip.compress(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"))
    with pytest.raises(UserError, match="gzip-compressed safetensors"):
        load_checkpoint(bad)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="gzip-compressed safetensors"):
        load_checkpoint(bad)


def test_trainable_only_round_trip(tmp_path, clip_file):
    path, clip = clip_file
    model = build_model("tiny", clip_weights=path, seed=2)
    _same_state(model.clip, clip)
    save_checkpoint(model, tmp_path / "t.safetensors", trainable_only=True)
    full = tmp_path / "f.safetensors"
    save_checkpoint(model, full)
    assert (tmp_path / "t.safetensors").stat().st_size < full.stat().st_size / 5
    loaded = load_checkpoint(tmp_path / "t.safetensors", clip_weights=path)
    _same_state(model, loaded)
    with pytest.raises(UserError, match="only the trainable weights"):
        load_checkpoint(tmp_path / "t.safetensors")


def test_pack_makes_a_self_contained_checkpoint(tmp_path, clip_file, capsys):
    path, _ = clip_file
    model = build_model("tiny", clip_weights=path, seed=3)
    save_checkpoint(model, tmp_path / "t.safetensors", trainable_only=True)
    out = tmp_path / "packed.safetensors.gz"
    assert main(["pack", str(tmp_path / "t.safetensors"), "--clip-weights", str(path), "--out", str(out)]) == 0
    assert "full tiny checkpoint" in capsys.readouterr().out
    _same_state(model, load_checkpoint(out))           # no CLIP file needed any more
    assert main(["pack", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "only the trainable weights" in capsys.readouterr().err


def test_trainable_only_refuses_another_clip(tmp_path, clip_file):
    path, clip = clip_file
    save_checkpoint(build_model("tiny", clip_weights=path), tmp_path / "t.safetensors", trainable_only=True)
    other = tmp_path / "other.safetensors"
    state = {k: v + 1 if k == "logit_scale" else v for k, v in clip.state_dict().items()}
    save_file(state, str(other), metadata={"vision_heads": "2", "text_heads": "2"})
    with pytest.raises(UserError, match="not the ones"):
        load_checkpoint(tmp_path / "t.safetensors", clip_weights=other)


def test_trainable_only_needs_a_clip_file(tmp_path):
    with pytest.raises(UserError, match="CLIP weights file"):
        save_checkpoint(build_model("tiny"), tmp_path / "t.safetensors", trainable_only=True)
    assert not list(tmp_path.iterdir())


def test_clip_of_another_shape_is_refused(tmp_path, clip_file):
    path, _ = clip_file
    with pytest.raises(UserError, match="do not fit config 'demo'"):
        build_model("demo", clip_weights=path)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(plain))
    with pytest.raises(UserError, match="not an rvos-edge checkpoint"):
        load_checkpoint(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError):
        load_checkpoint(garbage)


def test_cli_init_and_info(tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    assert main(["init", "tiny", "--out", str(out), "--seed", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    _same_state(load_checkpoint(out), build_model("tiny", seed=4))
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"learnable", "frozen", "modules"}
    assert info["learnable"] == sum(m["learnable"] for m in info["modules"].values())
    assert info["modules"]["clip.visual"]["learnable"] == 0 and info["modules"]["head"]["frozen"] == 0
    assert info["config"]["name"] == "tiny"


@pytest.mark.parametrize("argv, message", [
    (["init", "nope", "--out", "x.safetensors"], "unknown preset"),
    (["init", "tiny", "--out", "/nonexistent-dir/x.safetensors"], "cannot write"),
    (["init", "tiny", "--out", "x.bin"], "must end in .safetensors"),
    (["info", "missing.safetensors"], "does not exist"),
    (["info", "what"], "neither a preset"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_bad_input_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rvos_edge.cli", "info", str(tmp_path / "x.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
