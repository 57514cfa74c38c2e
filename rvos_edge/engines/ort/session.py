"""The one place an onnxruntime InferenceSession is made: the runner, calibration and the exporter's
parity check all open their graphs here, with the same options and the same errors.

    session = ort_session("artifacts/clip_model.onnx", threads=4, providers=("cpu",))
    session = ort_session(model.SerializeToString())            # an in-memory graph (calibration)

Logging is errors only (warnings would break the CLI's one-line output); `threads` sets
intra-op threads (inter-op 1). Idle intra-op threads sleep instead of spinning
("session.intra_op.allow_spinning" 0): the clip pipeline's decode, resize and writer
threads share the cores with them, and on a 2-core machine spinning took their CPU
(benchmarks/results/intel-xeon-2c/pipeline.md: demo at 854x480, end-to-end / engine
0.70 -> 0.9x, half the CPU per frame). Execution providers are short names ("cpu", "cuda",
"tensorrt") with the CPU always kept last as the fallback. Importing this module does not
import torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnxruntime as ort

from rvos_edge.errors import UserError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


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


def ort_session(model: str | Path | bytes, threads: int | None = None, providers: Sequence[str] = ("cpu",),
                device_id: int = 0, optimize: bool = True,
                optimized_model: str | Path | None = None) -> ort.InferenceSession:
    """An InferenceSession on a graph file or serialized graph (see the module docstring).

    optimize False turns ONNX Runtime's graph optimisations off; optimized_model saves the
    graph as the session runs it. A graph onnxruntime cannot load is a UserError.
    """
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
    chosen = resolve_providers(providers, device_id)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options,
                                    providers=chosen)
    except Exception as e:  # onnxruntime's own exception types derive from Exception only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = "an in-memory graph" if isinstance(model, bytes) else model
        raise UserError(f"onnxruntime cannot load {where}: {first}") from None
