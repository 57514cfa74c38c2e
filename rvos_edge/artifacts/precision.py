"""The precision registry: every precision an artifact folder can hold, and its rules.

    PRECISIONS["fp16"].tolerance.failures(max_abs, iou)    # `rvos-edge check` against ORT FP32
    PRECISIONS["int8"].max_jf_drop                          # `rvos-edge calib --report` target
    precision_names()                                       # ("fp32", "fp16", "int8", "bf16"): every --precision choice
    check_backend(get_precision("bf16"), "ort")             # UserError: bf16 runs on openvino only

| precision | graphs                          | backends | check against ORT FP32 | J&F drop allowed |
|-----------|---------------------------------|----------|------------------------|------------------|
| fp32      | the export's base graphs        | all      | max abs error <= 1e-3  | (the reference)  |
| fp16      | FP16 variant (rvos_edge.calib)  | all      | mask IoU >= 0.98       | 0.2 points       |
| int8      | Q/DQ variant + TensorRT caches  | all      | mask IoU >= 0.95       | 1.0 points       |
| bf16      | the FP32 graphs + a bf16 hint   | openvino | mask IoU >= 0.97       | 0.2 points       |

A precision is a transform of the ONNX graphs (rvos_edge.calib makes each variant;
`transform` names it) plus, for TensorRT, a branch of its build plan
(rvos_edge.engines.trt.plan), or an execution hint on the FP32 graphs that only some
backends take (`backends`; bf16 is OpenVINO's INFERENCE_PRECISION_HINT). Adding one is
an entry here, its transform and its plan branch. Imports nothing of torch or onnxruntime.
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

    transform: "export" (the base graphs), "fp16" (calib.fp16.build_fp16), "int8"
    (calib.int8.calibrate: needs calibration data) or "hint" (no graphs of its own: the
    FP32 graphs, run with an execution precision hint); max_jf_drop: the largest J&F loss
    against FP32, in points, that the project accepts (None for the reference);
    backends: the only backends that run it (None: every backend).
    """

    name: str
    transform: str
    tolerance: Tolerance
    max_jf_drop: float | None
    backends: tuple[str, ...] | None = None


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "export", Tolerance(max_abs=1e-3), None),
    Precision("fp16", "fp16", Tolerance(min_iou=0.98), 0.2),
    Precision("int8", "int8", Tolerance(min_iou=0.95), 1.0),
    # BF16 keeps FP32's exponent range with an 8-bit mantissa: issue 21 measured a mask IoU against
    # FP32 of 0.976 on vit-b16 (random weights, whose logits sit near 0) and 0.995 on demo, so 0.97
    # passes both with a margin; its J&F target is FP16's (a mantissa shorter still than FP16's 10 bits).
    Precision("bf16", "hint", Tolerance(min_iou=0.97), 0.2, backends=("openvino",)),
)}

# How the int8 variant is made (`rvos-edge calib`), as its manifest entry "calibration" records it:
# the activation-range methods of rvos_edge.calib.stats and the Q/DQ writers of rvos_edge.calib.int8
# ("auto": NVIDIA ModelOpt when installed, else onnxruntime.quantization). Kept here, beside the
# precisions, so the CLI reads them without importing calib.
CALIBRATION_METHODS = ("entropy", "minmax", "percentile")
QUANTIZERS = ("auto", "ort", "modelopt", "nncf")


def precision_names() -> tuple[str, ...]:
    """Every precision, the reference first (the choices of every --precision)."""
    return tuple(PRECISIONS)


def graph_precision(name: str) -> str:
    """The precision whose graphs `name` runs: "fp32" for an execution hint (bf16), else `name` itself."""
    entry = PRECISIONS.get(name)
    return "fp32" if entry is not None and entry.transform == "hint" else name


def check_backend(precision: Precision, backend: str) -> None:
    """A UserError unless `backend` runs `precision`, e.g. "bf16 is an OpenVINO execution precision ..."."""
    if precision.backends is None or backend in precision.backends:
        return
    what = (f"an execution precision of the {' and '.join(precision.backends)} backend (the FP32 graphs with a "
            f"{precision.name} inference hint), not a graph variant" if precision.transform == "hint" else
            f"run by the {' and '.join(precision.backends)} backend only")
    raise UserError(f"{precision.name} is {what}: the {backend} backend cannot run it; "
                    f"use --backend {precision.backends[0]}")


def get_precision(name: str) -> Precision:
    """The registry entry of `name`; an unknown name is a UserError listing the known ones."""
    if name not in PRECISIONS:
        raise UserError(f"unknown precision {name!r} (choose from {', '.join(PRECISIONS)})")
    return PRECISIONS[name]
