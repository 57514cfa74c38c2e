"""J&F of a model on a dataset, through the runtime's `Segmenter` (so every backend is measured the same way).

    report = evaluate(Segmenter.open("artifacts/"), open_dataset("synthetic:20240917:200"))
    report.summary["overall"]["J&F"], report.summary["by_kind"]["motion"]

Per expression, J and F are the means over its frames of `region_similarity` and
`boundary_f` (every frame counts, frames where the object is absent included);
J&F = (J + F) / 2. Overall and per-kind scores are means over expressions.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Protocol, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from rvos_edge.data import Dataset, Sample
from rvos_edge.errors import UserError
from rvos_edge.eval.metrics import boundary_f, region_similarity


class SegmenterLike(Protocol):
    """What evaluation needs of `rvos_edge.runtime.Segmenter`."""

    def reset(self) -> None: ...
    def set_expression(self, text: str) -> list: ...
    def push(self, frame: np.ndarray) -> list: ...
    def flush(self) -> list: ...


@dataclass(frozen=True)
class ExpressionScore:
    """Mean J and F over the frames of one expression."""

    name: str
    expression: str
    kind: str
    frames: int
    J: float
    F: float

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2

    def to_dict(self) -> dict:
        return {**asdict(self), "J&F": self.JF}


@dataclass
class EvalReport:
    scores: list[ExpressionScore]
    summary: dict
    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def score_video(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> tuple[float, float]:
    """gt, pred bool [T, H, W] -> (mean J, mean F) over the T frames."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    j = [region_similarity(g, p) for g, p in zip(gt, pred)]
    f = [boundary_f(g, p, bound_th) for g, p in zip(gt, pred)]
    return float(np.mean(j)), float(np.mean(f))


def _mean(scores: Sequence[ExpressionScore]) -> dict:
    j = float(np.mean([s.J for s in scores]))
    f = float(np.mean([s.F for s in scores]))
    return {"J&F": (j + f) / 2, "J": j, "F": f, "expressions": len(scores)}


def summarize(scores: Sequence[ExpressionScore]) -> dict:
    """{"overall": {"J&F", "J", "F", "expressions"}, "by_kind": {kind: the same}}, means over expressions."""
    if not scores:
        raise UserError("nothing to summarise: no expression was evaluated")
    kinds = sorted({s.kind for s in scores})
    return {"overall": _mean(scores), "by_kind": {k: _mean([s for s in scores if s.kind == k]) for k in kinds}}


def segment(segmenter: SegmenterLike, sample: Sample) -> np.ndarray:
    """Run one expression over one video from a fresh stream: masks bool [T, H, W]."""
    segmenter.reset()
    segmenter.set_expression(sample.expression)
    results = []
    for frame in sample.frames:
        results += segmenter.push(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    results += segmenter.flush()
    masks = np.zeros(sample.frames.shape[:3], bool)
    seen = np.zeros(sample.num_frames, bool)
    for r in results:
        masks[r.index] = r.mask
        seen[r.index] = True
    if not seen.all():
        raise RuntimeError(f"segmenter returned no mask for frames {np.flatnonzero(~seen).tolist()} of {sample.name}")
    return masks


def evaluate(segmenter: SegmenterLike, dataset: Dataset, limit: int | None = None,
             bound_th: float = 0.008, progress: bool = True) -> EvalReport:
    """J&F of `segmenter` on the first `limit` samples of `dataset` (all when None)."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    scores, frames, seconds = [], 0, 0.0
    bar = tqdm(range(count), desc="eval", unit="video", disable=not progress)
    for i in bar:
        sample = dataset[i]
        if sample.masks is None:
            raise UserError(f"sample {sample.name} has no ground-truth masks: it cannot be evaluated")
        t0 = time.perf_counter()
        pred = segment(segmenter, sample)
        seconds += time.perf_counter() - t0
        frames += sample.num_frames
        j, f = score_video(sample.masks, pred, bound_th)
        scores.append(ExpressionScore(sample.name, sample.expression, sample.kind, sample.num_frames, j, f))
        bar.set_postfix({"J&F": f"{np.mean([s.JF for s in scores]):.3f}"})
    return EvalReport(scores, summarize(scores), frames, seconds)


def run_eval(path: str, data: str, split: str | None = None, backend: str | None = None, precision: str = "fp32",
             clip_len: int | None = None, limit: int | None = None, json_path: str | None = None,
             device: str | None = None, threads: int | None = None, progress: bool = True) -> EvalReport:
    """`rvos-edge eval`: open the model with the runtime, evaluate, write JSON if asked, print the summary line."""
    from rvos_edge.data import open_dataset
    from rvos_edge.engines import default_backend
    from rvos_edge.fileio import atomic_write_bytes
    from rvos_edge.runtime import Segmenter

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    dataset = open_dataset(data, split)
    backend = backend or default_backend(path)
    segmenter = Segmenter.open(path, backend, precision, clip_len, device=device, threads=threads)
    report = evaluate(segmenter, dataset, limit, progress=progress)
    if json_path:
        atomic_write_bytes(json_path, json.dumps({
            "model": str(path), "backend": backend, "precision": precision, "data": data, "split": split,
            "clip_len": segmenter.clip_len, "frames": report.frames, "seconds": report.seconds, "fps": report.fps,
            **report.summary, "expressions": [s.to_dict() for s in report.scores]}, indent=1).encode())
    overall = report.summary["overall"]
    kinds = ", ".join(f"{k} {v['J&F']:.3f}" for k, v in report.summary["by_kind"].items())
    print(f"J&F {overall['J&F']:.3f} (J {overall['J']:.3f}, F {overall['F']:.3f}) on {overall['expressions']} "
          f"expressions of {data} [{kinds}]; {report.fps:.1f} fps with {backend} {precision}"
          + (f"; wrote {json_path}" if json_path else ""))
    return report
