"""`upsampled_mask` (the band-restricted upsampling the Segmenter uses) against the full-frame
upsampling it replaced (cv2.resize of the logits to the frame's size, then logit > 0): per
frame IoU >= 0.999 on real outputs of the trained demo model and of the tiny model, and on
adversarial logits (thin structures, values near 0, borders, frames smaller than the logits)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from rvos_edge.data import HELDOUT_SEED, generate
from rvos_edge.demo import DEMO_CHECKPOINT
from rvos_edge.runtime import Runner, Segmenter, open_engines
from rvos_edge.runtime.pipeline import upsampled_mask

IOU_FLOOR = 0.999
# upsampled_mask follows OpenCV 5's arithmetic: there its masks are identical to the old ones
IDENTICAL = int(cv2.__version__.split(".")[0]) >= 5
# frame sizes (H, W): the two videos, the synthetic world's own, odd ones, smaller than the logits
SIZES = [(480, 854), (1080, 1920), (128, 128), (37, 251), (12, 20), (1, 1), (5, 300)]
REAL_SIZES = [(480, 854), (1080, 1920), (37, 251), (12, 20)]


def old_upsampling(logits: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """The path before the window: (logits upsampled to the whole frame [height, width] (mask = them > 0),
    score = mean of 1 / (1 + exp(-logit)) over the mask)."""
    up = logits if logits.shape == (height, width) else cv2.resize(logits, (width, height),
                                                                   interpolation=cv2.INTER_LINEAR)
    inside = up[up > 0]
    return up, float(np.mean(1.0 / (1.0 + np.exp(-inside)), dtype=np.float64)) if inside.size else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def check_against_old(logits: np.ndarray, sizes: list[tuple[int, int]] = SIZES) -> list[float]:
    """IoU of the new mask with the old one for each size (asserted >= IOU_FLOOR); also asserts the
    mask's type and shape, the score within 1e-5, equal masks wherever the old logit is not
    within 1e-5 of 0, and equal masks everywhere with OpenCV 5."""
    ious = []
    for h, w in sizes:
        mask, score = upsampled_mask(logits, h, w)
        up, old_score = old_upsampling(logits, h, w)
        old = up > 0
        assert mask.dtype == np.bool_ and mask.shape == (h, w)
        ious.append(iou(mask, old))
        assert ious[-1] >= IOU_FLOOR, (h, w, ious[-1])
        sure = np.abs(up) > 1e-5
        assert np.array_equal(mask[sure], old[sure]), (h, w)
        assert np.array_equal(mask, old) or not IDENTICAL, (h, w)
        assert score == pytest.approx(old_score, abs=1e-5)
    return ious


class LogitsTap(Runner):
    """Wraps a clip runner and keeps each clip's mask logits [Tc, m, m]."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.inputs, self.outputs = inner, inner.name, inner.inputs, inner.outputs
        self.logits: list[np.ndarray] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(feeds)
        self.logits.append(np.asarray(out["mask_logits"][0], np.float32).copy())
        return out


def model_logits(path: Path, video: int, frames: int) -> np.ndarray:
    """Mask logits [frames, m, m] of the Segmenter (torch backend) over the first `frames` frames of
    held-out synthetic video `video`."""
    engines = open_engines(path, "torch", threads=2)
    tap = LogitsTap(engines.clip)
    seg = Segmenter(dataclasses.replace(engines, clip=tap))
    sample = generate(HELDOUT_SEED, video)
    seg.set_expression(sample.expression)
    for frame in sample.frames[:frames]:
        seg.push(np.ascontiguousarray(frame[..., ::-1]))
    seg.flush()
    return np.concatenate(tap.logits)[:frames]


def test_real_outputs_of_the_demo_model() -> None:
    logits = np.concatenate([model_logits(DEMO_CHECKPOINT, video, frames=6) for video in (0, 1, 2)])
    assert logits.shape[1:] == (32, 32)
    frames_with_object = sum(bool((lg > 0).any()) and not bool((lg > 0).all()) for lg in logits)
    assert frames_with_object >= len(logits) // 2          # the trained model finds the objects
    for lg in logits:
        check_against_old(lg, REAL_SIZES)


def test_real_outputs_of_the_tiny_model(tmp_path: Path) -> None:
    from rvos_edge.model import build_model, save_checkpoint

    save_checkpoint(build_model("tiny", seed=0), tmp_path / "tiny.safetensors")
    logits = model_logits(tmp_path / "tiny.safetensors", video=0, frames=6)
    assert logits.shape[1:] == (16, 16)
    # random weights: masks of every size come from shifting the logits by their quantiles
    for lg in logits:
        for shift in np.quantile(lg, [0.02, 0.5, 0.98]):
            check_against_old(lg - np.float32(shift), REAL_SIZES)


def adversarial_logits() -> dict[str, np.ndarray]:
    """Named [32, 32] logits the band must get right."""
    m = 32
    neg = np.full((m, m), -4.0, np.float32)
    rng = np.random.default_rng(0)
    cases = {}
    for name, index in [("one cell", (7, 20)), ("top-left corner", (0, 0)), ("bottom-right corner", (m - 1, m - 1)),
                        ("one row", (11, slice(None))), ("one column", (slice(None), 0)),
                        ("last row", (m - 1, slice(None)))]:
        lg = neg.copy()
        lg[index] = 3.0
        cases[name] = lg
    diagonal = neg.copy()
    np.fill_diagonal(diagonal, 0.5)
    cases["thin diagonal"] = diagonal
    cases["two far cells"] = neg.copy()
    cases["two far cells"][[2, 29], [3, 30]] = 1.0
    cases["checkerboard"] = np.where(np.indices((m, m)).sum(0) % 2 == 0, 1.0, -1.0).astype(np.float32)
    cases["barely positive cell"] = np.full((m, m), -1e-3, np.float32)
    cases["barely positive cell"][16, 16] = 1e-6
    cases["noise near 0"] = (rng.standard_normal((m, m)) * 1e-6).astype(np.float32)
    cases["denormal-scale noise"] = (rng.standard_normal((m, m)) * 1e-38).astype(np.float32)
    cases["exact zeros and one positive"] = np.zeros((m, m), np.float32)
    cases["exact zeros and one positive"][5, 9] = 1e-3
    cases["all zero"] = np.zeros((m, m), np.float32)
    cases["all positive"] = np.full((m, m), 2.0, np.float32) + rng.random((m, m), np.float32)
    cases["large magnitudes"] = (rng.standard_normal((m, m)) * 1e4).astype(np.float32)
    yy, xx = np.indices((m, m))
    cases["ring"] = (0.5 - np.abs(np.hypot(yy - 15.5, xx - 15.5) - 9)).astype(np.float32)
    return cases


@pytest.mark.parametrize("name", list(adversarial_logits()))
def test_adversarial_logits(name: str) -> None:
    logits = adversarial_logits()[name]
    check_against_old(logits)
    if not (logits > 0).any():
        assert all(not upsampled_mask(logits, h, w)[0].any() for h, w in SIZES)


def test_band_covers_a_thin_structure_exactly() -> None:
    """A single positive logit cell: the mask is the old one, non-empty, and nothing outside the
    pixels whose taps reach that cell."""
    logits = np.full((32, 32), -1.0, np.float32)
    logits[10, 25] = 5.0
    mask, _ = upsampled_mask(logits, 1080, 1920)
    old = old_upsampling(logits, 1080, 1920)[0] > 0
    assert mask.any() and np.array_equal(mask, old)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    # pixel centre y maps to (y + 0.5) * 32 / 1080 - 0.5; taps reach row 10 only for that in (9, 11)
    assert ((rows + 0.5) * 32 / 1080 - 0.5 > 9).all() and ((rows + 0.5) * 32 / 1080 - 0.5 < 11).all()
    assert ((cols + 0.5) * 32 / 1920 - 0.5 > 24).all() and ((cols + 0.5) * 32 / 1920 - 0.5 < 26).all()
