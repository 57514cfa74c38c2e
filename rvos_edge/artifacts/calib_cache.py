"""TensorRT's INT8 calibration cache format, shared by its writer (`rvos_edge.calib.stats`) and its reader
(the TensorRT builder, `rvos_edge.engines.trt.build`): no torch, no tensorrt.

The cache is text: a first line ``TRT-<NV_TENSORRT_VERSION>-<algorithm>`` (e.g.
``TRT-100300-EntropyCalibration2``), then one ``<tensor name>: <hex>`` line per
tensor, hex being the IEEE float32 bits of its scale. <NV_TENSORRT_VERSION> is the
version number of the TensorRT that reads it (10.3.0 -> 100300, 8.6.1 -> 8601):
TensorRT ignores a cache of another version, although the scales below the
header do not depend on the version.
"""
from __future__ import annotations

import re

from rvos_edge.errors import UserError

HEADER = re.compile(rb"TRT-\d+-(\w+)")


def trt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION of a "MAJOR.MINOR.PATCH" string (10.3.0 -> 100300; 8.6.1 -> 8601)."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise UserError(f"TensorRT version must look like 10.3.0, got {version!r}")
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def calibration_cache_for(cache: bytes, version: str) -> tuple[bytes, str]:
    """(`cache` with its header rewritten for TensorRT `version`, its calibration algorithm).

    The algorithm (e.g. EntropyCalibration2) names the calibrator class that reads it;
    anything that is not a calibration cache is a UserError.
    """
    head, sep, body = cache.partition(b"\n")
    match = HEADER.fullmatch(head.strip())
    if match is None:
        raise UserError(f"not a TensorRT calibration cache (first line {head[:40]!r})")
    algorithm = match[1].decode()
    return f"TRT-{trt_version_number(version)}-{algorithm}".encode() + sep + body, algorithm
