"""The precision registry: every precision an artifact folder can hold, and its rules.

    PRECISIONS["fp16"].tolerance.failures(max_abs, iou)    # `rvos-edge check` against ORT FP32
    PRECISIONS["int8"].max_jf_drop                          # `rvos-edge calib --report` target
    precision_names()                                       # ("fp32", "fp16", "int8"): every --precision choice

| precision | graphs                          | check against ORT FP32 | J&F drop allowed |
|-----------|---------------------------------|------------------------|------------------|
| fp32      | the export's base graphs        | max abs error <= 1e-3  | (the reference)  |
| fp16      | FP16 variant (rvos_edge.calib)  | mask IoU >= 0.98       | 0.2 points       |
| int8      | Q/DQ variant + TensorRT caches  | mask IoU >= 0.95       | 1.0 points       |

A precision is a transform of the ONNX graphs (rvos_edge.calib makes each variant;
`transform` names it) plus, for TensorRT, a branch of its build plan
(rvos_edge.engines.trt.plan). Adding one is an entry here, its transform and its plan
branch. Imports nothing of torch or onnxruntime.
"""
from __future__ import annotations

from dataclasses import dataclass

from rvos_edge.errors import UserError


@dataclass(frozen=True)
class Tolerance:
    """A precision's tolerance: largest max abs error and/or smallest mask IoU (None: not judged)."""

    max_abs: float | None = None
    min_iou: float | None = None

    def failures(self, max_abs: float, iou: float) -> list[str]:
        """What is outside the tolerance, e.g. ["mask IoU 0.910 < 0.95"] ([] when within)."""
        out = []
        if self.max_abs is not None and not max_abs <= self.max_abs:
            out.append(f"max abs error {max_abs:.2e} > {self.max_abs:.0e}")
        if self.min_iou is not None and not iou >= self.min_iou:
            out.append(f"mask IoU {iou:.3f} < {self.min_iou}")
        return out

    def __str__(self) -> str:
        parts = ([f"max abs <= {self.max_abs:.0e}"] if self.max_abs is not None else []) + \
                ([f"IoU >= {self.min_iou}"] if self.min_iou is not None else [])
        return ", ".join(parts)


@dataclass(frozen=True)
class Precision:
    """One precision: its name, what makes its graphs, its tolerance and its J&F target.

    transform: "export" (the base graphs), "fp16" (calib.fp16.build_fp16) or "int8"
    (calib.int8.calibrate: needs calibration data); max_jf_drop: the largest J&F loss
    against FP32, in points, that the project accepts (None for the reference).
    """

    name: str
    transform: str
    tolerance: Tolerance
    max_jf_drop: float | None


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "export", Tolerance(max_abs=1e-3), None),
    Precision("fp16", "fp16", Tolerance(min_iou=0.98), 0.2),
    Precision("int8", "int8", Tolerance(min_iou=0.95), 1.0),
)}


def precision_names() -> tuple[str, ...]:
    """Every precision, the reference first (the choices of every --precision)."""
    return tuple(PRECISIONS)


def get_precision(name: str) -> Precision:
    """The registry entry of `name`; an unknown name is a UserError listing the known ones."""
    if name not in PRECISIONS:
        raise UserError(f"unknown precision {name!r} (choose from {', '.join(PRECISIONS)})")
    return PRECISIONS[name]
