"""Outputs under concurrency, re-runs, signals and kill -9; unwritable paths; decompression bombs;
bad checkpoints; what is ignored is said (issue 16). Everything here runs on the CPU, mostly on the
fake artifact folder, whose graphs are trivial, so that a 1,000-frame run takes about a second."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch
from fake_artifacts import edit_manifest, make_fake_artifacts
from test_runtime_cli import read_video, write_video

from rvos_edge.artifacts.manifest import load_manifest, token_runs
from rvos_edge.cli import main
from rvos_edge.errors import UserError
from rvos_edge.model import build_model, save_checkpoint, weights
from rvos_edge.runtime.run import COLOURS_BGR, overlay
from rvos_edge.tokenizer import EOT_TOKEN, SOT_TOKEN, tokenize

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
LONG = 1000


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("art") / "art")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "long.avi", LONG, size=(32, 24))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=0), path)
    return path


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def start_run(art: Path, video: Path, out: Path, expr: str = "box") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rvos_edge.cli", "run", str(art), "--video", str(video),
                             "--expr", expr, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def stagings(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.staging-")]


def staged_masks(out: Path) -> int:
    """Masks written so far into `out`'s staging folder (0 before it exists)."""
    try:
        return sum(len(os.listdir(s / "masks")) for s in stagings(out))
    except FileNotFoundError:
        return 0


def consistent(out: Path) -> dict:
    """OUT's summary, after checking that its frame count, the mask files and the overlay frames agree."""
    summary = json.loads((out / "summary.json").read_text())
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == [f"{i:05d}.png" for i in range(summary["frames"])]
    assert len(read_video(out / "overlay.mp4")) == summary["frames"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    return summary


def only_out_left(out: Path) -> bool:
    """Nothing but OUT in its parent: no staging, no set-aside folder, no lock."""
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- a run's outputs are one unit ------------------------------------------------------------

def test_second_run_into_the_same_out_refuses_naming_the_first(art: Path, long_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = start_run(art, long_video, out)
    try:
        wait_for(lambda: staged_masks(out) > 0)
        first.send_signal(signal.SIGSTOP)                  # hold it mid-run while the second one starts
        second = subprocess.run([sys.executable, "-m", "rvos_edge.cli", "run", str(art), "--video", str(long_video),
                                 "--expr", "other", "--out", str(out)], capture_output=True, text=True, env=ENV,
                                timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.count("\n") == 1 and f"in use by process {first.pid}" in second.stderr, second.stderr
    assert first.wait(timeout=60) == 0, first.stderr.read()
    summary = consistent(out)
    assert summary["frames"] == LONG and [e["text"] for e in summary["expressions"]] == ["box"]
    assert only_out_left(out)


def test_rerun_replaces_everything(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video, out = write_video(tmp_path / "v.avi", 10), tmp_path / "out"
    assert cli(capsys, "run", art, "--video", video, "--expr", "a", "--expr", "b", "--out", out)[0] == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0_a", "1_b"]
    assert cli(capsys, "run", art, "--video", video, "--expr", "box", "--out", out, "--max-frames", "4")[0] == 0
    assert consistent(out)["frames"] == 4                  # no stale masks, no folders of the earlier run
    assert only_out_left(out)


def test_out_holding_other_files_is_refused_and_left_alone(art: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    rc, stdout, stderr = cli(capsys, "run", art, "--video", write_video(tmp_path / "v.avi", 3), "--expr", "box",
                             "--out", out)
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1 and "holds other files" in stderr
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and only_out_left(out)


def test_leftovers_of_dead_processes_are_removed(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    dead = [tmp_path / f".other.staging-{dead_pid()}-0a1b2c3d", tmp_path / f".out.old-{dead_pid()}-00ff00ff"]
    alive = tmp_path / f".other.staging-{os.getpid()}-12345678"            # a live process's: kept
    for folder in (*dead, alive):
        (folder / "masks").mkdir(parents=True)
    assert cli(capsys, "run", art, "--video", write_video(tmp_path / "v.avi", 3), "--expr", "box", "--out", out)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "out", "v.avi"])


# ---- interrupts ------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_keeps_consistent_outputs(signum: int, art: Path, long_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = start_run(art, long_video, out)
    wait_for(lambda: staged_masks(out) >= 20)
    run.send_signal(signal.SIGSTOP)
    run.send_signal(signum)
    run.send_signal(signal.SIGCONT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and "interrupted after" in stderr, stderr
    summary = consistent(out)
    assert summary["interrupted"] is True and summary["stopped_at"] == summary["frames"]
    assert 20 <= summary["frames"] < LONG and only_out_left(out)


def test_kill_9_leaves_the_previous_result_or_nothing(art: Path, long_video: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    killed = start_run(art, long_video, out)
    wait_for(lambda: staged_masks(out) >= 20)
    killed.kill()
    killed.wait()
    assert not out.exists()                                # nothing rather than a part

    short = write_video(tmp_path / "short.avi", 6)
    assert cli(capsys, "run", art, "--video", short, "--expr", "box", "--out", out)[0] == 0
    assert only_out_left(out)                              # the dead run's staging is gone
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    killed = start_run(art, long_video, out, expr="something else")
    wait_for(lambda: staged_masks(out) >= 20)
    killed.kill()
    killed.wait()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert consistent(out)["frames"] == 6


# ---- every output path error is one line and exit 2 ------------------------------------------

def _file(path: Path) -> Path:
    path.write_text("a file")
    return path


UNWRITABLE = {
    "init --out under a file": lambda t, c, a: ["init", "tiny", "--out", _file(t / "f") / "x.safetensors"],
    "pack --out under a file": lambda t, c, a: ["pack", c, "--out", _file(t / "f") / "x.safetensors"],
    "pack --out in a missing folder": lambda t, c, a: ["pack", c, "--out", t / "missing" / "x.safetensors.gz"],
    "export --out under a file": lambda t, c, a: ["export", c, "--out", _file(t / "f") / "art"],
    "run --out under a file": lambda t, c, a: ["run", a, "--video", write_video(t / "v.avi", 3), "--expr", "box",
                                               "--out", _file(t / "f") / "out"],
    "flops --json in a missing folder": lambda t, c, a: ["flops", "tiny", "--json", t / "missing" / "f.json"],
    "bench --json under a file": lambda t, c, a: ["bench", a, "--frames", "3", "--warmup", "0",
                                                  "--json", _file(t / "f") / "b.json"],
    "bench --markdown in a missing folder": lambda t, c, a: ["bench", a, "--frames", "3", "--warmup", "0",
                                                             "--markdown", t / "missing" / "b.md"],
    "eval --json under a file": lambda t, c, a: ["eval", a, "--data", "synthetic:1:1", "--json",
                                                 _file(t / "f") / "e.json"],
    "train --out under a file": lambda t, c, a: ["train", "--stage", "rvos", "--preset", "tiny", "--steps", "1",
                                                 "--out", _file(t / "f") / "run"],
}


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_unwritable_output_is_one_line_and_exit_2(case: str, tmp_path: Path, tiny_ckpt: Path, art: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    argv = UNWRITABLE[case](tmp_path, tiny_ckpt, art)
    rc, _, stderr = cli(capsys, *argv)
    *before, error, end = stderr.split("\n")             # bench's progress bar may come before, on its own line
    assert rc == 2 and end == "" and "error" not in "".join(before), stderr
    assert error.startswith(f"rvos-edge {argv[0]}: error: cannot "), stderr
    assert not (tmp_path / "missing").exists()


# ---- bounded decompression -------------------------------------------------------------------

def _zeros_member(mib: int) -> bytes:
    """One gzip member inflating to `mib` MiB of zeros (about 1/1000 of that compressed)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(bytes(mib << 20)) + z.flush()


def gzip_bomb(checkpoint: Path, path: Path, gib: int) -> Path:
    """A valid compressed checkpoint followed by `gib` GiB of zeros: gzip reads the members as one stream."""
    member = _zeros_member(64)
    with open(path, "wb") as f:
        f.write(gzip.compress(checkpoint.read_bytes(), 1))
        for _ in range(gib * 16):
            f.write(member)
    return path


def test_gzip_bomb_is_rejected_with_bounded_memory(tiny_ckpt: Path, tmp_path: Path) -> None:
    bomb = gzip_bomb(tiny_ckpt, tmp_path / "bomb.safetensors.gz", 4)
    assert bomb.stat().st_size < 20 << 20
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((24, 32, 3), np.uint8))
    command = [sys.executable, "-m", "rvos_edge.cli", "run", str(bomb), "--backend", "torch", "--frames", str(frames),
               "--expr", "box", "--out", str(tmp_path / "out")]
    measure = ("import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, "
               "text=True); print(json.dumps([p.returncode, p.stderr, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    probe = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True, env=ENV,
                           timeout=120)
    rc, stderr, peak_kib = json.loads(probe.stdout)
    assert rc == 2 and stderr.count("\n") == 1 and "inflates past" in stderr, stderr
    assert peak_kib < 500 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert not (tmp_path / "out").exists()


def test_gzip_reading_stops_at_the_declared_size(tiny_ckpt: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from rvos_edge.model.checkpoint import load_checkpoint

    bomb = gzip_bomb(tiny_ckpt, tmp_path / "bomb.safetensors.gz", 1)
    inflated = []
    real_open = weights.gzip.open

    def counting_open(*args, **kwargs):
        """gzip.open whose stream counts the inflated bytes it hands out (readinto goes through read)."""
        stream = real_open(*args, **kwargs)
        read = stream.read

        def counted_read(*a):
            data = read(*a)
            inflated.append(len(data))
            return data

        def counted_readinto(buffer):
            data = counted_read(len(buffer))
            buffer[:len(data)] = data
            return len(data)

        stream.read, stream.readinto = counted_read, counted_readinto
        return stream

    monkeypatch.setattr(weights.gzip, "open", counting_open)
    with pytest.raises(UserError, match="inflates past"):
        load_checkpoint(bomb)
    header = 8 + int.from_bytes(tiny_ckpt.read_bytes()[:8], "little")
    # the header twice (metadata, then tensors), the data once, one byte past it: not a byte more
    assert sum(inflated) == header + tiny_ckpt.stat().st_size + 1


def test_header_unlike_the_config_is_refused_before_any_data(tiny_ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save

    from rvos_edge.model.checkpoint import load_checkpoint

    tensors = load_file(tiny_ckpt)
    tensors["head.out.weight"] = torch.zeros(1, 8, 4096, 4096)     # 512 MiB of zeros where the config has [1, 8, 1, 1]
    path = tmp_path / "odd.safetensors.gz"
    path.write_bytes(gzip.compress(save(tensors, metadata=weights.read_safetensors_metadata(tiny_ckpt)), 1))
    with pytest.raises(UserError, match=r"not the ones expected: head.out.weight is float32 \[1, 8, 4096, 4096\], "
                                        r"expected float32 \[1, 8, 1, 1\]"):
        load_checkpoint(path)


# ---- export and demo with a bad checkpoint leave nothing -------------------------------------

def bad_checkpoints(tmp_path: Path, good: Path) -> list[Path]:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    truncated = tmp_path / "truncated.safetensors.gz"
    truncated.write_bytes(gzip.compress(good.read_bytes())[:-5000])
    return [garbage, truncated]


@pytest.mark.parametrize("command", ["export", "demo"])
def test_bad_checkpoint_leaves_nothing(command: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    for bad in bad_checkpoints(tmp_path, tiny_ckpt):
        out = tmp_path / "new" / "out"
        argv = ["export", str(bad), "--out", str(out)] if command == "export" else \
            ["demo", "--checkpoint", str(bad), "--out", str(out)]
        p = subprocess.run([sys.executable, "-m", "rvos_edge.cli", *argv], capture_output=True, text=True, env=ENV,
                           timeout=120)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr     # no progress bar on the line
        assert p.stderr.startswith(f"rvos-edge {command}: error: {bad}"), p.stderr
        assert not (tmp_path / "new").exists()


# ---- what is ignored is said -----------------------------------------------------------------

KNOWN = "the white box on the left"


def known_ids() -> set[int]:
    return {int(i) for i in tokenize(KNOWN)[0] if i} | {0, SOT_TOKEN, EOT_TOKEN}


@pytest.fixture(scope="module")
def small_vocabulary_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every token embedding row zero except those of KNOWN's words (as the demo's CLIP)."""
    model = build_model("tiny", seed=1)
    unused = torch.ones(model.clip.token_embedding.num_embeddings, dtype=torch.bool)
    unused[sorted(known_ids())] = False
    with torch.no_grad():
        model.clip.token_embedding.weight[unused] = 0
    path = tmp_path_factory.mktemp("vocab") / "vocab.safetensors"
    save_checkpoint(model, path)
    return path


def test_export_records_learnt_tokens_replaces_and_prints_nothing(small_vocabulary_ckpt: Path, tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture) -> None:
    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text("{}")               # an earlier export, and a file of it
    (out / "clip_model.fp16.onnx").write_text("stale")
    leftover = tmp_path / f".art.staging-{dead_pid()}-deadbeef"   # a killed export's staging
    leftover.mkdir()
    (leftover / "text_encoder.onnx").write_bytes(bytes(1000))
    assert main(["export", str(small_vocabulary_ckpt), "--out", str(out)]) == 0
    stdout, stderr = capfd.readouterr()
    assert stderr == "" and stdout.startswith("exported tiny")     # no registration warnings, no bar off a terminal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert "clip_model.fp16.onnx" not in os.listdir(out)
    assert load_manifest(out).learnt_tokens == token_runs(known_ids())


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_words_never_learnt_are_named(backend: str, small_vocabulary_ckpt: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    if backend == "ort":
        source = make_fake_artifacts(tmp_path / "art")
        edit_manifest(source, learnt_tokens=[list(r) for r in token_runs(known_ids())])
    else:
        source = small_vocabulary_ckpt
    video = write_video(tmp_path / "v.avi", 3)
    base = ["run", source, "--backend", backend, "--video", video, "--out", tmp_path / "out"]
    rc, _, stderr = cli(capsys, *base, "--expr", "le chat noir on the left")
    assert rc == 0 and stderr.count("\n") == 1, stderr
    assert "warning: the model never learnt 'le', 'chat', 'noir' (in 'le chat noir on the left')" in stderr
    rc, _, stderr = cli(capsys, *base, "--expr", "the white box on the left")
    assert rc == 0 and stderr == ""
    rc, _, stderr = cli(capsys, *base, "--expr", "un deux trois quatre cinq six sept box")
    assert "'un', 'deux', 'trois', 'quatre', 'cinq' and 2 more" in stderr and stderr.count("\n") == 1


def test_long_expression_warning_quotes_60_characters(art: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    text = "big " * 2500
    rc, _, stderr = cli(capsys, "run", art, "--video", write_video(tmp_path / "v.avi", 3), "--expr", text,
                        "--out", tmp_path / "out")
    assert rc == 0 and stderr.count("\n") == 1 and f"{text[:60]!r}..." in stderr and len(stderr) < 200, stderr


def test_pack_refuses_clip_weights_for_a_full_checkpoint(tiny_ckpt: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    rc, _, stderr = cli(capsys, "pack", tiny_ckpt, "--clip-weights", tiny_ckpt, "--out", tmp_path / "x.safetensors")
    assert rc == 2 and stderr.count("\n") == 1 and "full checkpoint" in stderr and "--clip-weights" in stderr
    assert list(tmp_path.iterdir()) == []


# ---- the overlay -----------------------------------------------------------------------------

def test_overlay_outlines_and_tints_in_a_contrasting_colour() -> None:
    frame = np.full((60, 80, 3), 90, np.uint8)
    frame[20:40, 30:50] = (0, 220, 0)                     # a green target (BGR)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    image = overlay(frame, [mask]).astype(int)
    inside = image[25:35, 35:45].reshape(-1, 3)
    assert (inside[:, 1] < inside[:, [0, 2]].max(1)).all()            # the tint is not green on green
    assert np.abs(inside - frame[25:35, 35:45].reshape(-1, 3)).sum(1).min() > 150
    edge = image[20, 30:50]
    assert (edge == COLOURS_BGR[0]).all()                             # the outline, in the expression's colour
    assert (image[:15] == 90).all()                                   # the rest of the frame is untouched
