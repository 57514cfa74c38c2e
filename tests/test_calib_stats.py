"""Activation statistics (histogram merging, amax per method) and the TensorRT calibration cache format."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from rvos_edge.calib.stats import (
    BINS,
    MIN_AMAX,
    ActivationStats,
    read_trt_cache,
    scale_hex,
    trt_version_number,
    write_trt_cache,
)
from rvos_edge.errors import UserError


def test_histogram_merges_batches_exactly() -> None:
    """Batches with growing ranges give the histogram of all values over the final range."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.1, 1.0, 0.5, 7.0)]
    stats = ActivationStats()
    for b in batches:
        stats.update({"t": b})
    everything = np.abs(np.concatenate(batches))
    r = stats.range["t"]
    assert r > everything.max()
    expected = np.bincount(np.minimum((everything * (BINS / r)).astype(np.int64), BINS - 1), minlength=BINS)
    # R started at the first batch's max |x| and doubled since: its bins were merged 2^k to 1, so compare
    # at that granularity
    coarse = 2 ** int(round(np.log2(r / np.abs(batches[0]).max())))
    assert stats.hist["t"].sum() == everything.size
    np.testing.assert_array_equal(stats.hist["t"].reshape(-1, coarse).sum(1), expected.reshape(-1, coarse).sum(1))
    assert stats.max_abs["t"] == pytest.approx(float(everything.max()))


def test_amax_by_method() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 200_000).astype(np.float32)
    x[:5] = [40, -35, 30, 25, -20]                                # rare outliers
    stats = ActivationStats()
    for part in np.split(x, 4):
        stats.update({"t": part})
    amax = {m: stats.amax(m)["t"] for m in ("minmax", "percentile", "entropy")}
    assert amax["minmax"] == pytest.approx(40.0)
    assert amax["percentile"] == pytest.approx(np.percentile(np.abs(x), 99.99), abs=40 / BINS * 2)
    assert 2.5 < amax["entropy"] < 8                              # KL keeps the Gaussian's bulk, drops the outliers
    assert stats.amax("percentile", 100.0)["t"] == pytest.approx(40.0, abs=40 / BINS * 2)


def test_entropy_keeps_a_uniform_range_and_zero_tensors_get_a_floor() -> None:
    stats = ActivationStats()
    stats.update({"u": np.random.default_rng(2).uniform(-3, 3, 100_000), "z": np.zeros(10)})
    stats.update({"z": np.zeros(4)})
    assert stats.amax("entropy")["u"] == pytest.approx(3.0, rel=0.02)
    assert stats.amax("entropy")["z"] == MIN_AMAX and stats.hist["z"][0] == 14


def test_bad_method_and_percentile() -> None:
    stats = ActivationStats()
    stats.update({"t": np.ones(3)})
    with pytest.raises(UserError):
        stats.amax("mse")
    with pytest.raises(UserError):
        stats.amax("percentile", 0)


def test_cache_round_trip_scales_are_amax_over_127(tmp_path: Path) -> None:
    amax = {"layer_norm_3": 3.5, "frames__cast": 254.9, "val_12": 1e-3, "a: b": 0.75}
    path = tmp_path / "clip_model.calib.cache"
    write_trt_cache(path, amax, "10.3.0")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2" and len(lines) == 1 + len(amax)
    # independent encoding: big-endian float32 bits of amax / 127
    assert f"layer_norm_3: {struct.pack('>f', np.float32(3.5 / 127)).hex()}" in lines
    header, scales = read_trt_cache(path)
    assert header == lines[0]
    assert scales == {k: float(np.float32(v / 127)) for k, v in amax.items()}
    assert scale_hex(127.0) == "3f800000"


def test_trt_version_numbers_and_malformed_caches(tmp_path: Path) -> None:
    assert trt_version_number("10.3.0") == 100300 and trt_version_number("8.6.1") == 8601
    assert trt_version_number("10.13") == 101300
    with pytest.raises(UserError):
        trt_version_number("ten")
    bad = tmp_path / "bad.cache"
    bad.write_text("not a cache\n")
    with pytest.raises(UserError, match="not a TensorRT calibration cache"):
        read_trt_cache(bad)
    bad.write_text("TRT-8601-EntropyCalibration2\nx 3c010204\n")
    with pytest.raises(UserError, match="malformed"):
        read_trt_cache(bad)
