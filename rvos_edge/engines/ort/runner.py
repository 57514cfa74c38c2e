"""ONNX Runtime backend: an artifact folder -> two InferenceSessions.

`open_ort` checks the folder's manifest (format, sha256 of every file,
tokenizer), picks the graphs of the requested precision and opens them
(`session.ort_session`) on the chosen execution providers. CPU is the default;
"cuda" and "tensorrt" are used when the installed onnxruntime has them
(onnxruntime-gpu), with CPU kept as the fallback for nodes they do not take.
Importing this module does not import torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, TensorSpec, load_manifest
from rvos_edge.engines.base import Engines, Runner
from rvos_edge.engines.ort.session import ort_session

_ORT_DTYPES = {
    "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(float16)": "float16", "tensor(float)": "float32",
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    """A session input/output as a TensorSpec; unnamed dynamic dims become "?"."""
    shape = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)
    return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)


class OrtRunner(Runner):
    """One ONNX graph in an onnxruntime InferenceSession."""

    timing = "perf_counter around InferenceSession.run (numpy in and out)"

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session = session
        self.name = name
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self._output_names = [t.name for t in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, self.cast_feeds(feeds))))


def open_ort(path: str | Path, precision: str = "fp32", providers: Sequence[str] = ("cpu",),
             threads: int | None = None, device_id: int = 0) -> Engines:
    """Open an artifact folder's graphs of `precision` in onnxruntime.

    providers: execution providers in order of preference ("cpu", "cuda", "tensorrt").
    threads: intra-op threads per session (None: onnxruntime's default, all cores).
    """
    path = Path(path)
    manifest = load_manifest(path)
    files = manifest.graph_files(precision)
    text, clip = (OrtRunner(ort_session(path / files[g], threads, providers, device_id), g)
                  for g in (TEXT_ENCODER, CLIP_MODEL))
    return Engines(text=text, clip=clip, config=manifest.config, precision=precision,
                   clip_len=manifest.clip_len, backend="ort", source=str(path), learnt_tokens=manifest.learnt_tokens)
