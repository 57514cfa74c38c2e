"""The pieces of the clip pipeline (DESIGN.md section 5) that are not model calls.

- `prepare_frame`: a BGR frame of any size -> the RGB S x S frame the engines take
  (halved while at least 4S, then one INTER_AREA or INTER_LINEAR);
  `prepare` wraps it with the frame's size as a `PreparedFrame`, so it can run on
  another thread than the engine (the decode thread of `rvos-edge run`).
- `upsampled_mask`: a clip's mask logits -> the mask and score at a frame's own size
  (bilinear, logit > 0), computed only in the window of the frame where the mask can be
  True; `upsample_logits`: the logits themselves at a frame's size.
- `LRUCache`: the per-expression text features.
- `StageTimes`: where the time goes (resize, text, engine, upsample).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Generic, Hashable, TypeVar

import cv2
import numpy as np

from rvos_edge.errors import UserError

WIDE = 2      # a window wider than 1 / WIDE of the frame is upsampled by cv2 as a whole
HALVE_FROM = 4   # a frame at least HALVE_FROM x the model's size in both directions is halved first
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

    Interpolation:
    - a frame at least HALVE_FROM * size high and wide is first halved, again and again while
      it stays so: cv2.INTER_AREA to (W // 2, H // 2), for even W and H the exact 2 x 2 means
      (a + b + c + d + 2) // 4 of OpenCV's integer path (`halve`);
    - then cv2.INTER_AREA when it shrinks in both directions (it averages the source pixels,
      so no aliasing), cv2.INTER_LINEAR when it grows in at least one direction (INTER_AREA
      would blur nothing and alias the growth); a frame already size x size is only
      converted to RGB.
    The halvings are box filters too, and they stop while the last INTER_AREA still averages
    at least 2 x 2 pixels per output pixel, so the frame is an area average as with one
    INTER_AREA (a 1920 x 1080 frame with a sharp disc -> 128: 0.18 levels of uint8 apart on
    average, 0.2% of the values more than 2 apart, at the disc's edge), at a quarter of the
    cost (0.9 ms against 3.9): INTER_AREA at a non-integer scale visits every source pixel
    with float weights, on one thread. The native runtime (native/src/clip_pipeline.cpp)
    does the same, so both see the same pixels.
    """
    h, w = frame.shape[:2]
    while h >= HALVE_FROM * size and w >= HALVE_FROM * size:
        frame = halve(frame)
        h, w = frame.shape[:2]
    if (h, w) != (size, size):
        interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
        frame = cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=interpolation)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def halve(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [H // 2, W // 2, 3]: cv2.INTER_AREA (for even H and W, 2 x 2 means rounded half up)."""
    h, w = frame.shape[:2]
    return cv2.resize(np.ascontiguousarray(frame), (w // 2, h // 2), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class PreparedFrame:
    """A frame as the engines take it: rgb [S, S, 3] uint8, and size = (H, W) of the frame it came from."""

    rgb: np.ndarray
    size: tuple[int, int]


def prepare(frame: np.ndarray, size: int) -> PreparedFrame:
    """Check a BGR frame [H, W, 3] uint8 and prepare it (`prepare_frame`); keeps only its (H, W)."""
    check_frame(frame)
    return PreparedFrame(prepare_frame(frame, size), (frame.shape[0], frame.shape[1]))


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mask logits [m, m] float32 -> [height, width] float32, bilinear with half-pixel centres.

    cv2.INTER_LINEAR samples source position (x + 0.5) * m / width - 0.5, i.e. the
    same as torch.nn.functional.interpolate(mode="bilinear", align_corners=False)
    (without antialias), also when the frame is smaller than the logits.
    """
    if logits.shape == (height, width):
        return logits
    return cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)


def _score(inside: np.ndarray) -> float:
    """Mean sigmoid probability of the logits `inside` [N] float32 (those of a mask), 0.0 when N = 0.

    sigmoid(x) = (1 + tanh(x / 2)) / 2, one vectorised pass; float32 math, np.mean sums
    pairwise: ~1e-7 relative error.
    """
    if not inside.size:
        return 0.0
    return 0.5 + 0.5 * float(np.mean(np.tanh(inside * np.float32(0.5)), dtype=np.float64))


@lru_cache(maxsize=64)
def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis, `src` logits -> `dst` pixels, as cv2.INTER_LINEAR (OpenCV 5)
    computes them; each array [dst], read-only: the source indices i0, i1 (int) and the
    float32 weight w1 of i1 (the sample is logit[i0] + (logit[i1] - logit[i0]) * w1).

    Source position of pixel x: (x + 0.5) * src / dst - 0.5 (half-pixel centres), in float64;
    w1 is its fractional part rounded to float32; positions outside [0, src - 1] take the
    border logit (w1 = 0), as torch's align_corners=False.
    """
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    i0 = np.floor(pos).astype(np.intp)
    w1 = (pos - i0).astype(np.float32)
    w1[(i0 < 0) | (i0 >= src - 1)] = 0
    i0 = np.clip(i0, 0, src - 1)
    taps = (i0, np.minimum(i0 + 1, src - 1), w1)
    for a in taps:
        a.flags.writeable = False
    return taps


def _lerp(a: np.ndarray, b: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """a + (b - a) * w1, float32 arrays (broadcast), rounded to float32 once as by a fused
    multiply-add (cv2.INTER_LINEAR's arithmetic; the float64 product is exact)."""
    return (a.astype(np.float64) + (b - a).astype(np.float64) * w1).astype(np.float32)


def _span(i0: np.ndarray, i1: np.ndarray, first: int, last: int) -> slice:
    """Pixels (a slice of the axis of `_taps`) with a tap in source indices [first, last]."""
    return slice(int(np.searchsorted(i1, first)), int(np.searchsorted(i0, last, side="right")))


def upsampled_mask(logits: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """Mask logits [m_h, m_w] float32 -> (mask bool [height, width], score): the mask of
    `upsample_logits(logits, height, width) > 0` and the mean sigmoid probability inside it
    (0.0 for an empty mask), computed only where the mask can be True.

    A bilinear sample is a weighted mean of (up to) 4 logits with non-negative weights,
    so it can be > 0 only where one of its taps is a positive logit: the window is the
    rows and columns of pixels with a tap in the logit rows and columns holding one;
    outside it the mask is False. cv2 interpolates along x, then along y. Here the x pass
    runs for the window's columns only (`_taps`, `_lerp`), the y pass is cv2's over those
    columns (the x axis then has scale 1, which cv2 leaves exact), and the threshold and
    score over the window; a window wider than 1 / WIDE of the frame is upsampled by cv2
    whole. With OpenCV 5 the values are bit-identical to cv2.resize's on the whole frame;
    with other versions (other weights' rounding) they agree to float32 rounding.
    """
    positive = logits > 0
    if logits.shape == (height, width):
        return positive, _score(logits[positive])
    mask = np.zeros((height, width), np.bool_)
    if not positive.any():
        return mask, 0.0
    ty, tx = _taps(logits.shape[0], height), _taps(logits.shape[1], width)
    src_rows, src_cols = np.flatnonzero(positive.any(1)), np.flatnonzero(positive.any(0))
    rows = _span(ty[0], ty[1], src_rows[0], src_rows[-1])
    cols = _span(tx[0], tx[1], src_cols[0], src_cols[-1])
    if rows.start == rows.stop or cols.start == cols.stop:     # a frame smaller than the logits may skip them
        return mask, 0.0
    if WIDE * (cols.stop - cols.start) > width:   # a wide window: cv2 on the whole frame costs about as much
        window = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)[rows, cols]
    else:
        i0, i1, w1 = (t[cols] for t in tx)
        across = _lerp(logits[:, i0], logits[:, i1], w1)                              # [m_h, window width]
        window = cv2.resize(across, (across.shape[1], height), interpolation=cv2.INTER_LINEAR)[rows]
    inside = window > 0
    if inside.shape == mask.shape:
        return inside, _score(window[inside])
    mask[rows, cols] = inside
    return mask, _score(window[inside])


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

    resize: frame checks, resizing to S x S and BGR -> RGB (0 for frames pushed as a
    `PreparedFrame`: their preparation ran elsewhere); text: tokenising and
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
