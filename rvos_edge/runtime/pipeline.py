"""The pieces of the clip pipeline (DESIGN.md section 5) that are not model calls.

- `prepare_frame`: a BGR frame of any size -> the RGB S x S frame the engines take.
- `upsample_logits` / `mask_and_score`: a clip's mask logits back at a frame's own size.
- `LRUCache`: the per-expression text features.
- `StageTimes`: where the time goes (resize, text, engine, upsample).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Generic, Hashable, TypeVar

import cv2
import numpy as np

from rvos_edge.errors import UserError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def check_frame(frame: object) -> np.ndarray:
    """`frame` if it is an H x W x 3 uint8 array (OpenCV BGR), else a UserError saying what it is."""
    if not isinstance(frame, np.ndarray):
        raise UserError(f"a frame must be a numpy array (H x W x 3 uint8 BGR), got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise UserError(f"a frame must be H x W x 3 uint8 BGR, got shape {frame.shape} dtype {frame.dtype}")
    return frame


def prepare_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """BGR frame [H, W, 3] uint8 -> RGB [size, size, 3] uint8 (aspect ratio not kept, as in training).

    Interpolation: cv2.INTER_AREA when the frame shrinks in both directions (it
    averages the source pixels, so no aliasing), cv2.INTER_LINEAR when it grows
    in at least one direction (INTER_AREA would blur nothing and alias the growth).
    A frame already size x size is only converted to RGB.
    """
    h, w = frame.shape[:2]
    if (h, w) != (size, size):
        interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
        frame = cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=interpolation)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mask logits [m, m] float32 -> [height, width] float32, bilinear with half-pixel centres.

    cv2.INTER_LINEAR samples source position (x + 0.5) * m / width - 0.5, i.e. the
    same as torch.nn.functional.interpolate(mode="bilinear", align_corners=False)
    (without antialias), also when the frame is smaller than the logits.
    """
    if logits.shape == (height, width):
        return logits
    return cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)


def mask_and_score(logits: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits [H, W] -> (mask = logits > 0, bool [H, W]; mean sigmoid probability inside it, 0.0 if empty)."""
    mask = logits > 0
    inside = logits[mask]                       # float32 math: np.mean sums pairwise, ~1e-7 relative error
    score = float(np.mean(1.0 / (1.0 + np.exp(-inside)), dtype=np.float64)) if inside.size else 0.0
    return mask, score


class LRUCache(Generic[K, V]):
    """A dict keeping the `capacity` most recently used entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise UserError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class StageTimes:
    """Seconds spent per pipeline stage, and how much work was done.

    resize: frame checks, resizing to S x S and BGR -> RGB; text: tokenising and
    the text encoder (cache misses only); engine: the clip model; upsample:
    logits to frame size, threshold and score. Decoding is the caller's.
    """

    resize_s: float = 0.0
    text_s: float = 0.0
    engine_s: float = 0.0
    upsample_s: float = 0.0
    frames: int = 0
    clips: int = 0
    text_runs: int = 0

    def ms(self) -> dict[str, float]:
        """{"resize": ms, "text": ms, "engine": ms, "upsample": ms}, totals."""
        return {f.name[:-2]: 1000.0 * getattr(self, f.name) for f in fields(self) if f.name.endswith("_s")}

    def __add__(self, other: "StageTimes") -> "StageTimes":
        return StageTimes(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})
