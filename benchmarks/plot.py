"""PNG charts drawn with OpenCV (no matplotlib dependency): a line chart and a latency box plot.

    line_chart("fps.png", "vit-b16: FPS vs clip length", ["1", "6", "36"], {"ort fp32 B=1": [0.5, 0.7, None]}, "FPS")
    box_chart("lat.png", "vit-b16: ms per clip", {"ort fp32 Tc=6 B=1": [812.0, 830.5, 845.1]})
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from rvos_edge.bench import percentile
from rvos_edge.fileio import atomic_write_bytes

COLOURS = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
           (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23))   # BGR
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, GRID = (40, 40, 40), (225, 225, 225)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, colour=INK, right: bool = False) -> None:
    if right:
        (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
        org = (org[0] - w, org[1])
    cv2.putText(img, text, org, FONT, scale, colour, 1, cv2.LINE_AA)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    raw = (hi - lo) / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    return [i * step for i in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def _save(path: str | Path, img: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    atomic_write_bytes(path, data.tobytes())


def line_chart(path: str | Path, title: str, x_labels: Sequence[str], series: dict[str, Sequence[float | None]],
               y_label: str, x_label: str = "clip length (frames)") -> None:
    """Lines over categorical x positions; None values are gaps. y from 0 to a round maximum."""
    w, h, left, right, top, bottom = 960, 560, 80, 260, 50, 60
    img = np.full((h, w, 3), 255, np.uint8)
    values = [v for ys in series.values() for v in ys if v is not None]
    ticks = _ticks(0.0, max(values) if values else 1.0)
    y_max = ticks[-1] or 1.0
    px = [left + (i + 0.5) * (w - left - right) / len(x_labels) for i in range(len(x_labels))]

    def py(v: float) -> int:
        return int(round(h - bottom - v / y_max * (h - top - bottom)))

    for t in ticks:
        cv2.line(img, (left, py(t)), (w - right, py(t)), GRID, 1)
        _text(img, f"{t:g}", (left - 6, py(t) + 4), right=True)
    for x, label in zip(px, x_labels):
        _text(img, label, (int(x) - 6, h - bottom + 20))
    cv2.rectangle(img, (left, top), (w - right, h - bottom), INK, 1)
    for k, (name, ys) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [(int(x), py(y)) for x, y in zip(px, ys) if y is not None]
        for a, b in zip(points, points[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)
        cv2.line(img, (w - right + 15, top + 12 + 20 * k), (w - right + 40, top + 12 + 20 * k), colour, 3)
        _text(img, name, (w - right + 46, top + 16 + 20 * k))
    _text(img, title, (left, 22), 0.6)
    _text(img, x_label, ((left + w - right) // 2 - 60, h - 18))
    _text(img, y_label, (10, top - 14))
    _save(path, img)


def box_chart(path: str | Path, title: str, groups: dict[str, Sequence[float]]) -> None:
    """One horizontal box per group on a log10 axis of milliseconds: whiskers min..max,
    box p25..p75, a bar at the median and a dot at p99 (percentiles as `rvos_edge.bench.percentile`)."""
    w, left, right, top, bottom, row = 960, 300, 40, 50, 50, 28
    h = top + bottom + row * max(len(groups), 1)
    img = np.full((h, w, 3), 255, np.uint8)
    everything = [v for vs in groups.values() for v in vs if v > 0]
    lo, hi = math.log10(min(everything, default=1.0)), math.log10(max(everything, default=10.0))
    lo, hi = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)

    def px(v: float) -> int:
        return int(round(left + (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo) * (w - left - right)))

    for tick in (m * 10 ** e for e in range(lo, hi + 1) for m in (1, 2, 5) if m * 10 ** e <= 10 ** hi):
        cv2.line(img, (px(tick), top), (px(tick), h - bottom), GRID, 1)
        (tw, _), _ = cv2.getTextSize(f"{tick:g}", FONT, 0.45, 1)
        _text(img, f"{tick:g}", (px(tick) - tw // 2, h - bottom + 18))
    _text(img, "ms per clip (log scale)", (w - right - 170, h - 12))
    for k, (name, vs) in enumerate(groups.items()):
        y = top + row * k + row // 2
        colour = COLOURS[k % len(COLOURS)]
        _text(img, name, (left - 8, y + 4), right=True)
        if not vs:
            continue
        q = {p: px(percentile(vs, p)) for p in (0, 25, 50, 75, 99, 100)}
        cv2.line(img, (q[0], y), (q[100], y), colour, 1, cv2.LINE_AA)
        cv2.rectangle(img, (q[25], y - 8), (max(q[75], q[25] + 1), y + 8), colour, -1)
        cv2.line(img, (q[50], y - 10), (q[50], y + 10), INK, 2)
        cv2.circle(img, (q[99], y), 3, INK, -1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), INK, 1)
    _text(img, title, (20, 30), 0.6)
    _save(path, img)
