"""The deployable runtime: backends, the clip pipeline, video I/O and the `Segmenter` API.

    from rvos_edge.runtime import Segmenter
    seg = Segmenter.open("artifacts/", backend="ort")

Importing this package (and running the ort backend) never imports torch; the
torch backend imports it when a checkpoint is opened.
"""
from rvos_edge.engines import BACKENDS, Engines, Runner, open_engines
from rvos_edge.runtime.pipeline import PreparedFrame, StageTimes
from rvos_edge.runtime.segmenter import ExpressionTruncatedWarning, Segmenter, SegmentResult

__all__ = ["BACKENDS", "Engines", "ExpressionTruncatedWarning", "PreparedFrame", "Runner", "SegmentResult",
           "Segmenter", "StageTimes", "open_engines"]
