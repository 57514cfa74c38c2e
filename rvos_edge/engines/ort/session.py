"""The one place an onnxruntime InferenceSession is made: the runner, calibration and the exporter's
parity check all open their graphs here, with the same options and the same errors.

    session = ort_session("artifacts/clip_model.onnx", threads=4, providers=("cpu",))
    session = ort_session(model.SerializeToString())            # an in-memory graph (calibration)

Logging is errors only (warnings would break the CLI's one-line output); `threads` sets
intra-op threads (inter-op 1). Idle intra-op threads sleep instead of spinning
("session.intra_op.allow_spinning" 0): the clip pipeline's decode, resize and writer
threads share the cores with them, and on a 2-core machine spinning took their CPU
(benchmarks/results/intel-xeon-2c/pipeline.md: demo at 854x480, end-to-end / engine
0.70 -> 0.9x, half the CPU per frame, measured with the machine loaded). The price, on the
same 2-core Xeon when quiet (`rvos-edge bench`, demo, 2 threads, 240 frames at 854x480, runs
alternating): the engine alone is 16% slower (146 -> 123 FPS; a bare clip-graph run 1.21x
slower on demo, 1.43x on tiny) while end to end stays the same (110-111 -> 111-115 FPS): the
clip-by-clip pipeline leaves the threads idle between runs, where spinning only burns the
CPU a robot's other processes need. Execution providers are short names ("cpu", "cuda",
"tensorrt") with the CPU always kept last as the fallback. Importing this module does not
import torch.

Memory (issue 21; vit-b16 FP32, Tc=6, 2 threads: the clip graph 418 MB of weights, the text
encoder 254 MB; peak RSS = VmHWM of a fresh process that opens both and runs 5-8 clips). With
ONNX Runtime's defaults a process peaks at 3.64-3.68 GB (three runs):
- the clip session holds 1.0 GB after creation: the weights as tensors plus the parsed
  ModelProto and the copies graph optimisation made, which ORT frees but glibc keeps in its
  heap (a session without optimisations holds 0.5 GB; malloc_trim returns 450 MB);
- the first clip allocates 1.45 GB of activations from the CPU arena: the decomposed CF-MSA's
  score tensors alone are 241 MB each ([8, 9, 6, 121, 1210] float32, MatMul -> Where -> Softmax);
- the second clip allocates the memory pattern ORT planned from the first as one more 1.1 GB
  block, while the arena keeps the first clip's chunks: 1.1 GB for nothing.
So a CPU session runs without the memory pattern (`enable_mem_pattern` False: the arena hands
its chunks to the next clip; tensor reuse within a clip stays on) and, after creation, the heap
glibc kept is handed back (`release_freed_heap`, Linux): vit-b16 peaks at 2.34 GB (-36%, the same
in four runs); demo 189 -> 174 MB. Latency, on a 2-core Xeon shared with other work (load 5-13),
so as CPU time per clip of 1-thread sessions, interleaved: vit-b16 0.82x of the defaults (4 clips
each; wall 0.78x), demo 1.007x (two processes of each kind, 80 clips each; wall 0.95x); 2-thread
wall-clock runs of 5-8 vit-b16 clips gave 0.88x and 1.18x, i.e. load noise. The change adds no
work to a clip: the arena keeps its chunks, so no page is faulted again.
Measured and not taken: session.disable_prepacking (3.70 GB, 1.48x slower), no arena (2.61 GB
before the trim, slower), the arena's kSameAsRequested extension through an env allocator
(2.55 GB with the rest of the fix), shrinking the arena after each run (the same 2.34 GB peak,
the activations re-faulted every clip), saving the optimised graph with external data and
loading it unoptimised (the same peak: its 498 MB of weights are paged in by the first clip).
The rest of that peak was the graph's own: the weights once (0.67 GB with the text encoder)
and one clip's activations (1.25 GB even with plain malloc), most of them CF-MSA's dense score
tensors. The export now scores one cube at a time without padding (rvos_edge/kernels/decomposed.py):
vit-b16 FP32 peaks at 1.44 GB with these options, and its clips are no slower
(benchmarks/results/intel-xeon-2c/memory_ort_fp32.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
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
    chosen = resolve_providers(providers, device_id)
    if chosen == ["CPUExecutionProvider"]:
        options.enable_mem_pattern = False            # see the module docstring: it doubled the activations
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options,
                                       providers=chosen)
    except Exception as e:  # onnxruntime's own exception types derive from Exception only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = "an in-memory graph" if isinstance(model, bytes) else model
        raise UserError(f"onnxruntime cannot load {where}: {first}") from None
    release_freed_heap()
    return session


def release_freed_heap() -> bool:
    """Hand the heap memory the process has freed back to the OS (glibc's malloc_trim; False where there is
    none, e.g. macOS, musl). Session creation frees the parsed graph and optimisation's copies, which glibc
    would otherwise keep resident (vit-b16: 450 MB)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
