"""Aggregation of J&F, the evaluation loop over a segmenter, and the `eval` command."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from rvos_edge.cli import main
from rvos_edge.data import SyntheticDataset
from rvos_edge.eval import ExpressionScore, evaluate, score_video, summarize


@dataclass(frozen=True)
class Result:
    index: int
    mask: np.ndarray
    score: float = 1.0


class FakeSegmenter:
    """Answers in clips of 4 frames like the runtime; `answer(expression, index, frame_bgr)` gives each mask."""

    def __init__(self, answer) -> None:
        self.answer, self.pending, self.index, self.text = answer, [], 0, None

    def reset(self) -> None:
        self.pending, self.index = [], 0

    def set_expression(self, text: str) -> list:
        self.text = text
        return []

    def push(self, frame: np.ndarray) -> list:
        self.pending.append(frame)
        return self.flush() if len(self.pending) == 4 else []

    def flush(self) -> list:
        out = [Result(self.index + i, self.answer(self.text, self.index + i, f)) for i, f in enumerate(self.pending)]
        self.index += len(self.pending)
        self.pending = []
        return out


def test_summarize_means_over_expressions():
    scores = [ExpressionScore("a", "x", "appearance", 10, 0.5, 0.7), ExpressionScore("b", "y", "appearance", 30, 1.0, 0.9),
              ExpressionScore("c", "z", "motion", 5, 0.0, 0.2)]
    s = summarize(scores)
    assert s["overall"] == pytest.approx({"J&F": 0.55, "J": 0.5, "F": 0.6, "expressions": 3})
    assert s["by_kind"]["appearance"] == pytest.approx({"J&F": 0.775, "J": 0.75, "F": 0.8, "expressions": 2})
    assert s["by_kind"]["motion"] == pytest.approx({"J&F": 0.1, "J": 0.0, "F": 0.2, "expressions": 1})


def test_score_video_means_over_frames():
    gt = np.zeros((2, 8, 8), bool)
    gt[1, 2:4, 2:4] = True
    pred = np.zeros_like(gt)
    assert score_video(gt, pred) == (0.5, 0.5)      # frame 0: both empty (1, 1); frame 1: missed (0, 0)
    assert score_video(gt, gt) == (1.0, 1.0)


def test_evaluate_perfect_and_empty_segmenters():
    data = SyntheticDataset(9, 4)
    samples = {data[i].expression: data[i] for i in range(4)}

    def oracle(text, index, frame_bgr):
        s = samples[text]
        assert (frame_bgr[..., ::-1] == s.frames[index]).all()     # frames arrive as BGR, in order
        return s.masks[index]

    report = evaluate(FakeSegmenter(oracle), data, progress=False)
    assert report.summary["overall"]["J&F"] == 1.0
    assert report.frames == sum(s.num_frames for s in samples.values())

    report = evaluate(FakeSegmenter(lambda text, i, f: np.zeros(f.shape[:2], bool)), data, limit=3, progress=False)
    # an empty prediction scores J = F = 1 on frames where the object is absent and 0 elsewhere
    absent = [float((~data[i].masks.any((1, 2))).mean()) for i in range(3)]
    assert [s.J for s in report.scores] == pytest.approx(absent)
    assert [s.F for s in report.scores] == pytest.approx(absent)
    assert report.summary["overall"]["J&F"] == pytest.approx(np.mean(absent))
    assert set(report.summary["by_kind"]) == {"appearance", "position", "motion"}


def test_eval_command(tmp_path, capsys):
    from rvos_edge.model import build_model, save_checkpoint
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("tiny", seed=0), ckpt)
    out = tmp_path / "scores.json"
    assert main(["eval", str(ckpt), "--data", "synthetic:5:3", "--limit", "2", "--json", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("J&F ") and "on 2 expressions of synthetic:5:3" in line and "fps with torch" in line
    report = json.loads(out.read_text())
    assert [e["name"] for e in report["expressions"]] == ["synthetic-5-000000", "synthetic-5-000001"]
    assert [e["frames"] for e in report["expressions"]] == [SyntheticDataset(5, 2)[i].num_frames for i in range(2)]
    assert set(report["by_kind"]) == {"appearance", "position"}
    assert 0.0 <= report["overall"]["J&F"] <= 1.0
    assert main(["eval", str(ckpt), "--data", "synthetic:5"]) == 2
    assert main(["eval", str(ckpt), "--data", str(tmp_path)]) == 2
    assert "neither meta_expressions" in capsys.readouterr().err


def test_pixel_places_sort_predicted_pixels_by_what_they_cover():
    from rvos_edge.data import generate
    from rvos_edge.data.synthetic import shape_mask
    from rvos_edge.eval.errors import pixel_places

    sample = generate(3, 1)                          # position: the target has 1-2 identical twins
    target = sample.meta["target"]
    twin = next(o for o in sample.meta["objects"] if o.id != target.id
                and (o.colour, o.shape) == (target.colour, target.shape))
    counts = pixel_places(sample, sample.masks.copy())
    assert counts["target"] == counts["area"] == int(sample.masks.sum())
    assert counts["look-alike"] == counts["same colour"] == counts["elsewhere"] == 0
    assert counts["hidden_predicted"] == 0

    twin_only = np.stack([shape_mask(twin.shape, tuple(c), twin.radius) for c in twin.centres]) & ~sample.masks
    counts = pixel_places(sample, twin_only)
    assert counts["target"] == 0 and counts["look-alike"] == int(twin_only.sum()) > 0

    corner = np.zeros_like(sample.masks)
    corner[:, 0, 0] = True                           # one background pixel per frame
    corner &= ~sample.masks
    counts = pixel_places(sample, corner)
    assert counts["elsewhere"] + counts["look-alike"] + counts["same colour"] == int(corner.sum())
    assert counts["hidden_predicted"] == int((~sample.masks.any(axis=(1, 2)) & corner.any(axis=(1, 2))).sum())


def test_best_masks_at_grid_keeps_what_the_grid_can_hold_and_loses_what_it_cannot():
    from rvos_edge.eval.errors import best_masks_at_grid

    masks = np.zeros((3, 128, 128), bool)
    masks[0, 16:40, 8:28] = True            # edges on the 4-pixel cells of a 32 x 32 grid
    masks[1, 70, 70] = True                 # one pixel: 1/16 of a cell, below half, so lost
    masks[2, 60:62, 60:70] = True           # 2 pixels high: half of a cell row at most, lost
    best = best_masks_at_grid(masks, 32)
    # bilinear with half-pixel centres: an edge pixel sits 0.625 of the way to its own cell, so
    # edges stay (0.625 * 0.5 - 0.375 * 0.5 > 0) and corners go (0.625^2 * 0.5 - (1 - 0.625^2) * 0.5 < 0)
    expected = masks[0].copy()
    expected[[16, 16, 39, 39], [8, 27, 8, 27]] = False
    assert np.array_equal(best[0], expected)
    assert not best[1].any() and not best[2].any()
    assert np.array_equal(best_masks_at_grid(masks, 128), masks)     # the frame's own grid loses nothing
