"""rvos-edge: VLP-RVOS from a checkpoint to a fast engine, run clip by clip.

Importing this package imports neither torch nor onnxruntime; the model lives in
`rvos_edge.model` (torch), the deployable runtime in `rvos_edge.runtime` (no torch).
`from rvos_edge import Segmenter` loads the runtime on first use.
"""
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Segmenter", "SegmentResult"):
        import rvos_edge.runtime

        return getattr(rvos_edge.runtime, name)
    raise AttributeError(f"module 'rvos_edge' has no attribute {name!r}")
