"""Activation statistics for INT8 calibration, the amax of each method, and TensorRT's calibration cache.

    stats = ActivationStats()
    for outputs in batches: stats.update(outputs)          # {tensor name: array}
    amax = stats.amax("entropy")                           # {tensor name: float}
    write_trt_cache("clip_model.calib.cache", amax)

INT8 here is symmetric (zero point 0, scale = amax / 127), what TensorRT needs and
what ONNX Runtime runs well (S8S8), so a tensor's statistics reduce to |x|:
- the running maximum of |x| (``minmax``);
- a histogram of |x| with BINS bins over [0, R). R starts at the first batch's
  max|x| and doubles (merging neighbouring bins, which is exact) whenever a later
  batch goes beyond it, so batches are merged without storing them.
amax by method:
- ``minmax``: max |x| seen;
- ``percentile``: the `percentile` (default 99.99) of |x|, read off the histogram
  (upper edge of the bin where the cumulative count reaches it);
- ``entropy``: the KL-divergence method behind TensorRT's entropy calibrator: for
  every candidate threshold i (bin edges from 128 bins up, in steps of
  ENTROPY_STRIDE bins), the reference distribution P is the histogram below i with
  everything above folded into its last bin, Q is the histogram below i without
  those outliers quantized to 128 levels (each level's mass spread evenly over its
  non-empty bins), and the threshold with the smallest KL(P || Q) wins (a
  candidate where P has mass and Q none is never chosen).
A tensor whose values were all 0 gets amax MIN_AMAX, so that no scale is zero.

TensorRT calibration cache (the text format IInt8Calibrator::writeCalibrationCache
writes and TensorRT 8.x / 10.x read for implicit INT8): a first line
``TRT-<version>-EntropyCalibration2``, then one ``<tensor name>: <hex>`` line per
tensor, where hex is the IEEE float32 bit pattern of scale = amax / 127 in 8 hex
digits. <version> is TensorRT's NV_TENSORRT_VERSION of the version that will read
it (10.3.0 -> 100300, 8.6.1 -> 8601); TensorRT refuses a cache from another version.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from rvos_edge.artifacts.calib_cache import trt_version_number
from rvos_edge.artifacts.precision import CALIBRATION_METHODS
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes

BINS = 2048
QUANT_LEVELS = 128
ENTROPY_STRIDE = 4
MIN_AMAX = 1e-6
DEFAULT_TRT_VERSION = "10.3.0"


class ActivationStats:
    """Per tensor: max |x| and a histogram of |x| (see the module docstring); merged batch by batch."""

    def __init__(self, bins: int = BINS) -> None:
        if bins < 2 * QUANT_LEVELS or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= {2 * QUANT_LEVELS}, got {bins}")
        self.bins = bins
        self.max_abs: dict[str, float] = {}
        self.range: dict[str, float] = {}          # R: the histogram covers [0, R)
        self.hist: dict[str, np.ndarray] = {}

    def update(self, arrays: dict[str, np.ndarray]) -> None:
        """Add one batch: {tensor name: float array}."""
        for name, array in arrays.items():
            a = np.abs(np.asarray(array, np.float32)).ravel()
            a = a[np.isfinite(a)]
            top = float(a.max()) if a.size else 0.0
            self.max_abs[name] = max(self.max_abs.get(name, 0.0), top)
            if name not in self.hist:
                self.hist[name] = np.zeros(self.bins, np.int64)
                self.range[name] = 0.0
            if top > self.range[name]:
                self._grow(name, top)
            if self.range[name] == 0.0:                # only zeros so far: they stay in bin 0
                self.hist[name][0] += a.size
            else:
                idx = np.minimum((a * (self.bins / self.range[name])).astype(np.int64), self.bins - 1)
                self.hist[name] += np.bincount(idx, minlength=self.bins)

    def _grow(self, name: str, top: float) -> None:
        """Make the histogram of `name` cover `top`: set R on first use, else double R (merging bin pairs)."""
        if self.range[name] == 0.0:
            self.range[name] = top * (1 + 1e-6)
            return
        hist = self.hist[name]
        while self.range[name] <= top:
            hist = np.concatenate([hist.reshape(-1, 2).sum(1), np.zeros(self.bins // 2, np.int64)])
            self.range[name] *= 2
        self.hist[name] = hist

    def amax(self, method: str = "entropy", percentile: float = 99.99) -> dict[str, float]:
        """{tensor name: amax} by `method` (entropy, minmax, percentile); never below MIN_AMAX."""
        if method not in CALIBRATION_METHODS:
            raise UserError(f"unknown calibration method {method!r} (choose from {', '.join(CALIBRATION_METHODS)})")
        if not 0 < percentile <= 100:
            raise UserError(f"percentile must be in (0, 100], got {percentile}")
        out = {}
        for name, top in self.max_abs.items():
            if top == 0.0 or method == "minmax":
                value = top
            elif method == "percentile":
                value = _percentile_amax(self.hist[name], self.range[name], percentile)
            else:
                value = _entropy_amax(self.hist[name], self.range[name])
            out[name] = max(min(value, top), MIN_AMAX)
        return out


def _percentile_amax(hist: np.ndarray, top: float, percentile: float) -> float:
    cumulative = np.cumsum(hist)
    i = int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0))
    return (i + 1) * top / hist.size


def _entropy_amax(hist: np.ndarray, top: float) -> float:
    """Threshold with the smallest KL(P || Q); see the module docstring."""
    hist = hist.astype(np.float64)
    used = int(np.flatnonzero(hist)[-1]) + 1
    if used <= QUANT_LEVELS:                          # fewer bins in use than levels: nothing is lost
        return used * top / hist.size
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])      # tail[i] = sum(hist[i:])
    candidates = np.arange(QUANT_LEVELS, used + 1, ENTROPY_STRIDE)
    if candidates[-1] != used:
        candidates = np.append(candidates, used)
    j = np.arange(used)
    best, best_kl = used, math.inf
    for block in np.array_split(candidates, max(1, len(candidates) // 32)):
        n = len(block)
        inside = j[None, :] < block[:, None]                           # [n, used]
        clipped = np.where(inside, hist[None, :used], 0.0)
        nonzero = clipped > 0
        level = np.minimum(j[None, :] * QUANT_LEVELS // block[:, None], QUANT_LEVELS - 1)
        flat = (np.arange(n)[:, None] * QUANT_LEVELS + level)[inside]
        mass = np.bincount(flat, weights=clipped[inside], minlength=n * QUANT_LEVELS).reshape(n, QUANT_LEVELS)
        count = np.bincount(flat, weights=nonzero[inside], minlength=n * QUANT_LEVELS).reshape(n, QUANT_LEVELS)
        q = np.where(nonzero, np.take_along_axis(mass / np.maximum(count, 1), level, 1), 0.0)
        p = clipped.copy()
        p[np.arange(n), block - 1] += tail[block]                      # outliers into the last bin
        with np.errstate(divide="ignore", invalid="ignore"):         # Q empty -> NaN, Q 0 where P > 0 -> inf
            p /= p.sum(1, keepdims=True)
            q /= q.sum(1, keepdims=True)
            kl = np.where(p > 0, p * np.log(p / q), 0.0).sum(1)
        kl = np.where(np.isnan(kl), np.inf, kl)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:
            best, best_kl = int(block[k]), float(kl[k])
    return best * top / hist.size


def scale_hex(amax: float) -> str:
    """The cache's encoding of scale = amax / 127: float32 bits as 8 hex digits."""
    return f"{int(np.float32(amax / 127.0).view(np.uint32)):08x}"


def write_trt_cache(path: str | os.PathLike[str], amax: dict[str, float], trt_version: str = DEFAULT_TRT_VERSION) -> None:
    """Write a TensorRT calibration cache for `amax` ({tensor: amax}), atomically."""
    lines = [f"TRT-{trt_version_number(trt_version)}-EntropyCalibration2"]
    lines += [f"{name}: {scale_hex(value)}" for name, value in sorted(amax.items())]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_trt_cache(path: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """(first line, {tensor: scale}) of a TensorRT calibration cache; a malformed one is a UserError."""
    try:
        lines = open(path, encoding="ascii").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read calibration cache {path}: {e}") from None
    if not lines or re.fullmatch(r"TRT-\d+-\w+", lines[0]) is None:
        raise UserError(f"{path} is not a TensorRT calibration cache (first line {lines[:1]})")
    scales = {}
    for line in lines[1:]:
        name, sep, value = line.rpartition(": ")
        if not sep or re.fullmatch(r"[0-9a-f]{1,8}", value) is None:
            raise UserError(f"{path}: malformed cache line {line!r}")
        scales[name] = float(np.uint32(int(value, 16)).view(np.float32))
    return lines[0], scales
