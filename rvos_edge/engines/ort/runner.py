"""ONNX Runtime backend: an artifact folder -> two InferenceSessions.

`open_ort` checks the folder's manifest (format, sha256 of every file,
tokenizer), picks the graphs of the requested precision and opens them on the
chosen execution providers. CPU is the default; "cuda" and "tensorrt" are used
when the installed onnxruntime has them (onnxruntime-gpu), with CPU kept as the
fallback for nodes they do not take. Importing this module does not import torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from rvos_edge.errors import UserError
from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, TensorSpec, load_manifest
from rvos_edge.engines.base import Engines, Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
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

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session = session
        self.name = name
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self._output_names = [t.name for t in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, self.cast_feeds(feeds))))


def resolve_providers(providers: Sequence[str], device_id: int = 0) -> list[str | tuple[str, dict[str, str]]]:
    """Execution providers for InferenceSession from short names ("cpu", "cuda", "tensorrt") or ORT names.

    Raises a UserError when one is not in the installed onnxruntime. CPU is
    always appended last as the fallback.
    """
    available = ort.get_available_providers()
    chosen: list[str | tuple[str, dict[str, str]]] = []
    for p in providers:
        full = PROVIDERS.get(p.lower(), p)
        if full not in available:
            raise UserError(f"{full} is not available in the installed onnxruntime {ort.__version__} "
                            f"(it has: {', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt")
        if full == "CPUExecutionProvider":
            continue
        chosen.append((full, {"device_id": str(device_id)}))
    return [*chosen, "CPUExecutionProvider"]


def _session(path: Path, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's own exception types derive from Exception only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"onnxruntime cannot load {path}: {first}") from None


def open_ort(path: str | Path, precision: str = "fp32", providers: Sequence[str] = ("cpu",),
             threads: int | None = None, device_id: int = 0) -> Engines:
    """Open an artifact folder's graphs of `precision` in onnxruntime.

    providers: execution providers in order of preference ("cpu", "cuda", "tensorrt").
    threads: intra-op threads per session (None: onnxruntime's default, all cores).
    """
    path = Path(path)
    manifest = load_manifest(path)
    files = manifest.graph_files(precision)
    options = ort.SessionOptions()
    options.log_severity_level = 3          # errors only: warnings would break the one-line CLI output
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    chosen = resolve_providers(providers, device_id)
    text = OrtRunner(_session(path / files[TEXT_ENCODER], options, chosen), TEXT_ENCODER)
    clip = OrtRunner(_session(path / files[CLIP_MODEL], options, chosen), CLIP_MODEL)
    return Engines(text=text, clip=clip, config=manifest.config, precision=precision,
                   clip_len=manifest.clip_len, backend="ort", source=str(path), learnt_tokens=manifest.learnt_tokens)
