"""Precision variants of an artifact folder: FP16 graphs, INT8 Q/DQ graphs, TensorRT calibration caches, reports.

    build_fp16("artifacts/")                                       # text_encoder.fp16.onnx, clip_model.fp16.onnx
    result = calibrate("artifacts/", "synthetic:7:64")             # *.int8.onnx + *.calib.cache
    write_report(accuracy_report("artifacts/", "synthetic:20240917:50", calibration=result), "report.json")

Precision is a transform of the ONNX graphs (DESIGN.md section 4), so every
engine reads it: ONNX Runtime, TensorRT 11 (strongly typed: FP16 casts and Q/DQ
nodes in the graph) and TensorRT 8.x / 10.x (the Q/DQ graph, or the FP32 graph
with the implicit-INT8 calibration cache). The variants are recorded in
``manifest.json`` ("variants", "calibration"), so `Segmenter.open(dir,
precision="int8")` and the TensorRT builder find them.

Modules: `graph` (node groups and paths, constant folding), `fp16`, `data`
(calibration batches), `stats` (activation statistics, TensorRT cache), `int8`,
`report`, `artifacts` (reading and writing the folder). Nothing here imports torch.
"""
from rvos_edge.calib.data import CalibrationData, calibration_data
from rvos_edge.calib.fp16 import build_fp16, to_fp16
from rvos_edge.calib.int8 import DEFAULT_EXCLUDE, CalibrationResult, calibrate
from rvos_edge.calib.report import accuracy_report, write_report
from rvos_edge.calib.stats import ActivationStats, read_trt_cache, write_trt_cache

__all__ = ["DEFAULT_EXCLUDE", "ActivationStats", "CalibrationData", "CalibrationResult", "accuracy_report",
           "build_fp16", "calibrate", "calibration_data", "read_trt_cache", "to_fp16", "write_trt_cache",
           "write_report"]
