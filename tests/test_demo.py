"""The shipped demo checkpoint and `rvos-edge demo` (what `make demo` runs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rvos_edge.cli import main
from rvos_edge.data import HELDOUT_SEED, generate, open_dataset
from rvos_edge.demo import DEMO_CHECKPOINT
from rvos_edge.eval.evaluate import evaluate, score_video, segment
from rvos_edge.runtime import Segmenter


@pytest.fixture(scope="module")
def demo_segmenter():
    return Segmenter.open(DEMO_CHECKPOINT, backend="torch", threads=2)


def test_shipped_checkpoint_is_small_and_trained_on_the_synthetic_world():
    from rvos_edge.model.checkpoint import read_checkpoint_config

    assert DEMO_CHECKPOINT.stat().st_size <= 20 * 1024 * 1024
    cfg = read_checkpoint_config(DEMO_CHECKPOINT)
    assert cfg.name == "demo" and cfg.use_history and cfg.use_temporal_prompts


# The issue asks for J&F >= 0.8 here; the checkpoint trained in this project's CPU budget scores 0.402
# on these 20 videos (0.359 on 200, README "The demo checkpoint"). This floor catches a broken
# checkpoint, loader or pipeline (a random model scores about 0.03), not the goal.
JF_FLOOR_20_VIDEOS = 0.35


def test_shipped_checkpoint_keeps_its_measured_jf_on_20_heldout_videos(demo_segmenter):
    report = evaluate(demo_segmenter, open_dataset(f"synthetic:{HELDOUT_SEED}:20"), progress=False)
    assert report.summary["overall"]["J&F"] >= JF_FLOOR_20_VIDEOS, report.summary


def test_demo_command_scores_the_masks_it_writes(tmp_path, capsys, demo_segmenter):
    out = tmp_path / "demo_out"
    args = ["demo", "--out", str(out), "--videos", "2", "--threads", "2"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads((out / "demo.json").read_text())
    assert line.startswith(f"demo: J&F {result['J&F']:.3f} on 2 held-out synthetic videos")
    for index, row in enumerate(result["videos"]):
        sample = generate(HELDOUT_SEED, index)
        folder = out / row["video"]
        assert len(list((folder / "masks").glob("*.png"))) == sample.num_frames
        assert (folder / "overlay.mp4").stat().st_size > 0
        # independently: the PyTorch model on the raw frames (ORT may flip a few border pixels)
        j, f = score_video(sample.masks, segment(demo_segmenter, sample))
        assert row["J&F"] == pytest.approx((j + f) / 2, abs=0.02)
    assert result["export_seconds"] > 0
    assert main(args) == 0                      # the second run reuses the export
    assert json.loads((out / "demo.json").read_text())["export_seconds"] == 0


def test_demo_bad_input_is_one_line(tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(tmp_path / "none.safetensors.gz"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", "--videos", "0", "--out", str(tmp_path)]) == 2
    assert "--videos must be >= 1" in capsys.readouterr().err


# A fresh process that opens the demo export with ONNX Runtime (2 threads) and segments 60 frames:
# its VmHWM (Python, numpy, OpenCV and ONNX Runtime included).
_PEAK = """
import sys
from pathlib import Path
import numpy as np
from rvos_edge.runtime import Segmenter

def mb(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

seg = Segmenter.open(sys.argv[1], backend="ort", threads=2)
seg.set_expression("the red circle moving right")
frames = np.random.default_rng(0).integers(0, 256, (60, 240, 320, 3), dtype=np.uint8)
masks = sum(1 for f in frames for r in seg.push(f)) + len(seg.flush())
print(masks, mb("VmHWM"))
"""
# Measured 200 MB on intel-xeon-2c (ONNX Runtime 1.32; 212 MB with ORT's default session options,
# openvino_vs_ort.md): the bound catches the weights kept twice or memory growing clip after clip.
PEAK_MB = 240


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc/self/status")
def test_a_process_running_the_demo_export_peaks_under_its_bound(tmp_path):
    from rvos_edge.export.onnx_export import export_artifacts

    export_artifacts(DEMO_CHECKPOINT, tmp_path / "art", progress=False)
    p = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "art")], capture_output=True, text=True,
                       check=False, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert p.returncode == 0, p.stderr
    masks, peak = p.stdout.split()
    assert int(masks) == 60 and float(peak) < PEAK_MB, p.stdout
