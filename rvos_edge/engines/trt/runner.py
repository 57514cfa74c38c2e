"""TensorRT backend: an artifact folder's engines -> two runners, each on its own CUDA stream.

    engines = open_trt("artifacts/", precision="fp16")            # or open_engines(..., backend="trt")
    engines.clip.run(feeds)                                      # numpy in, numpy out, like every backend

`open_trt` reads the manifest's engine entry of the precision (built by
``rvos-edge build DIR --backend trt``), refuses engines built with another
TensorRT version, for another GPU or from ONNX that changed since (the message
names the rebuild command), registers the CubeFrameAttention plugin when the
engine runs it just in time, and deserializes the engines. It needs tensorrt and
cuda-python (``pip install 'rvos-edge[trt]'``), imported when it is called, and
never imports torch (an engine with the just-in-time plugin imports it when the
plugin first runs).

Each `TrtRunner` (TensorRT 10.x / 11 name-based API) allocates, once, a CUDA
stream, a device buffer and a pinned host buffer per tensor at the profile's
largest shape, and binds the device buffers (``set_tensor_address``); `run` sets
the input shapes that changed (``set_input_shape``), copies the inputs up through
the pinned buffers, calls ``execute_async_v3`` on its stream and copies the
outputs back; the arrays it returns are copies.

History on the device: the clip runner's ``history_out`` array is returned
read-only, and when the very same array object comes back as the next run's
``history`` (what `Segmenter` does: ``history_out`` of a clip is the history of
the next), the runner copies its device history_out buffer into the history
input buffer instead of uploading the host copy: the history goes from one clip
to the next without a host round trip. Any other array (zeros after a reset, a
history from elsewhere) is uploaded as usual, so callers need not know.

CUDA graphs (``cuda_graph=True``): the engine launch is captured once per set of
input shapes (on its second run with those shapes, after TensorRT's first
enqueue has set things up) and replayed afterwards; copies stay outside the graph.
"""
from __future__ import annotations

import ctypes
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from rvos_edge.errors import UserError
from rvos_edge.artifacts.manifest import CLIP_MODEL, GRAPH_NAMES, TEXT_ENCODER, TensorSpec, expected_graphs, load_manifest
from rvos_edge.artifacts.tensorrt import EngineEntry, GpuInfo, check_engine_compat, engine_entry
from rvos_edge.engines.trt.plan import INSTALL_HINT
from rvos_edge.engines.base import Engines, Runner

HISTORY, HISTORY_OUT = "history", "history_out"


def import_tensorrt() -> Any:
    """The tensorrt module, or a UserError saying how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


def cuda_runtime() -> Any:
    """cuda-python's CUDA runtime module, or a UserError saying how to install it."""
    try:  # cuda-python >= 12.6 (and 13, which removed the old name)
        from cuda.bindings import runtime
    except ImportError:
        try:  # cuda-python < 12.6
            from cuda import cudart as runtime
        except ImportError:
            raise UserError(f"cuda-python is not installed: {INSTALL_HINT}") from None
    return runtime


def cuda_call(cudart: Any, result: Any) -> Any:
    """Unwrap a cuda-python (error, value...) result; a CUDA error raises RuntimeError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1].decode()
        raise RuntimeError(f"CUDA error {name}")
    return values[0] if len(values) == 1 else tuple(values) or None


def device_index(device: str) -> int:
    """"cuda" -> 0, "cuda:1" -> 1; anything else is a UserError (TensorRT runs on CUDA GPUs only)."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise UserError(f"the trt backend runs on a CUDA GPU: use --device cuda (or cuda:N), not {device!r}")


def gpu_info(cudart: Any, index: int) -> GpuInfo:
    """Name and compute capability of CUDA device `index` (a UserError when there is none)."""
    try:
        props = cuda_call(cudart, cudart.cudaGetDeviceProperties(index))
    except RuntimeError as e:
        raise UserError(f"no usable CUDA GPU {index}: {e}") from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.split("\0")[0].strip(), f"{props.major}.{props.minor}")


def _pinned_array(cudart: Any, nbytes: int) -> tuple[int, np.ndarray]:
    """(pointer, uint8 array) of `nbytes` of page-locked host memory."""
    ptr = cuda_call(cudart, cudart.cudaMallocHost(max(nbytes, 1)))
    return ptr, np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))


def _free_all(cudart: Any, stream: Any, device: list[int], host: list[int], graphs: list[Any]) -> None:
    """Release a runner's CUDA graphs, buffers and stream (its finalizer)."""
    for g in graphs:
        cudart.cudaGraphExecDestroy(g)
    for p in device:
        cudart.cudaFree(p)
    for p in host:
        cudart.cudaFreeHost(p)
    cudart.cudaStreamDestroy(stream)


class TrtRunner(Runner):
    """One TensorRT engine on its own CUDA stream, buffers allocated once (see the module docstring).

    specs: the contract's tensors (their symbolic shapes name the dynamic dims).
    """

    def __init__(self, trt: Any, cudart: Any, engine: Any, name: str, specs: tuple[TensorSpec, ...],
                 cuda_graph: bool = False) -> None:
        self.name = name
        self._cudart, self._engine = cudart, engine        # the engine must outlive its context
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate())
        self._context = engine.create_execution_context()
        shapes = {t.name: t.shape for t in specs}
        tensors = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in tensors}
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in tensors}

        def spec(n: str) -> TensorSpec:
            return TensorSpec(n, self._dtypes[n].name, shapes.get(n, tuple(engine.get_tensor_shape(n))))

        self.inputs = tuple(spec(n) for n in tensors if is_input[n])
        self.outputs = tuple(spec(n) for n in tensors if not is_input[n])
        self._profile = {t.name: tuple(tuple(s) for s in engine.get_tensor_profile_shape(t.name, 0))
                         for t in self.inputs}
        for t in self.inputs:                      # largest shapes, to size the output buffers
            self._context.set_input_shape(t.name, self._profile[t.name][2])
        largest = {**{t.name: self._profile[t.name][2] for t in self.inputs},
                   **{t.name: tuple(self._context.get_tensor_shape(t.name)) for t in self.outputs}}
        self._device: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._graphs: dict[tuple, Any] = {}
        device_ptrs: list[int] = []
        host_ptrs: list[int] = []
        self._graph_execs: list[Any] = []
        for n in tensors:
            nbytes = int(np.prod(largest[n])) * self._dtypes[n].itemsize
            self._device[n] = cuda_call(cudart, cudart.cudaMalloc(max(nbytes, 1)))
            host_ptr, self._host[n] = _pinned_array(cudart, nbytes)
            device_ptrs.append(self._device[n])
            host_ptrs.append(host_ptr)
            self._context.set_tensor_address(n, self._device[n])
        self._shapes: dict[str, tuple[int, ...]] = {t.name: self._profile[t.name][2] for t in self.inputs}
        self._cuda_graph = cuda_graph
        self._seen: set[tuple] = set()
        self._history_token: np.ndarray | None = None
        weakref.finalize(self, _free_all, cudart, self._stream, device_ptrs, host_ptrs, self._graph_execs)

    @property
    def keeps_history(self) -> bool:
        """True for a clip runner: a returned history_out fed back as history stays on the device."""
        return HISTORY in self._device and HISTORY_OUT in self._device

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any) -> None:
        cuda_call(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream))

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self._profile[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise UserError(f"{self.name} input {name} has shape {shape}, the engine takes {lo} to {hi} "
                            "(rebuild with a larger --max-batch or re-export for other clip lengths)")
        if self._shapes.get(name) != shape:
            self._context.set_input_shape(name, shape)
            self._shapes[name] = shape

    def _execute(self) -> None:
        cudart, stream = self._cudart, self._stream
        key = tuple(sorted(self._shapes.items()))
        if self._cuda_graph and key in self._graphs:
            cuda_call(cudart, cudart.cudaGraphLaunch(self._graphs[key], stream))
        elif self._cuda_graph and key in self._seen:
            cuda_call(cudart, cudart.cudaStreamBeginCapture(
                stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self._context.execute_async_v3(int(stream))
            graph = cuda_call(cudart, cudart.cudaStreamEndCapture(stream))
            exec_graph = cuda_call(cudart, cudart.cudaGraphInstantiate(graph, 0))   # CUDA 12 signature
            cudart.cudaGraphDestroy(graph)
            self._graphs[key] = exec_graph
            self._graph_execs.append(exec_graph)
            cuda_call(cudart, cudart.cudaGraphLaunch(exec_graph, stream))
        else:
            if not self._context.execute_async_v3(int(stream)):
                raise RuntimeError(f"TensorRT could not run {self.name}")
            self._seen.add(key)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        missing = [t.name for t in self.inputs if t.name not in feeds]
        if missing:
            raise UserError(f"{self.name} needs inputs {', '.join(missing)}")
        device_history = self.keeps_history and feeds[HISTORY] is self._history_token
        feeds = self.cast_feeds({t.name: feeds[t.name] for t in self.inputs})
        for t in self.inputs:
            array = np.ascontiguousarray(feeds[t.name])
            self._set_shape(t.name, array.shape)
            if t.name == HISTORY and device_history:
                self._copy(self._device[HISTORY], self._device[HISTORY_OUT], array.nbytes,
                           cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice)
                continue
            self._host[t.name][:array.nbytes] = array.reshape(-1).view(np.uint8)
            self._copy(self._device[t.name], self._host[t.name].ctypes.data, array.nbytes,
                       cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        self._execute()
        shapes = {t.name: tuple(self._context.get_tensor_shape(t.name)) for t in self.outputs}
        for t in self.outputs:
            nbytes = int(np.prod(shapes[t.name])) * self._dtypes[t.name].itemsize
            self._copy(self._host[t.name].ctypes.data, self._device[t.name], nbytes,
                       cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        out = {}
        for t in self.outputs:
            count = int(np.prod(shapes[t.name]))
            out[t.name] = self._host[t.name][:count * self._dtypes[t.name].itemsize].view(
                self._dtypes[t.name]).reshape(shapes[t.name]).copy()
        if self.keeps_history:
            out[HISTORY_OUT].flags.writeable = False
            self._history_token = out[HISTORY_OUT]
        return out


def make_logger(trt: Any, keep: int | None = None) -> Any:
    """A trt.ILogger that keeps messages up to severity `keep` (None: none) in `.lines` and the last error
    in `.last_error` (one line, for messages). Defined here because tensorrt is imported lazily."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self.last_error = ""

        def log(self, severity: Any, msg: str) -> None:
            if keep is not None and int(severity) <= int(keep):
                self.lines.append(f"[{severity.name}] {msg}")
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR) and msg.strip():
                self.last_error = msg.strip().splitlines()[0]

    return Logger()


def _deserialize(runtime: Any, logger: Any, path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise UserError(f"TensorRT cannot load {path}: {logger.last_error or 'not an engine of this TensorRT'}")
    return engine


def open_trt(path: str | Path, precision: str = "fp32", device: str = "cuda", cuda_graph: bool = False) -> Engines:
    """Open the TensorRT engines of `precision` in artifact folder `path` on `device` ("cuda" or "cuda:N").

    cuda_graph: replay the engine launches as CUDA graphs (see the module docstring);
    not with engines that run the CubeFrameAttention plugin just in time.
    """
    path = Path(path)
    trt = import_tensorrt()
    cudart = cuda_runtime()
    index = device_index(device)
    manifest = load_manifest(path)
    entry: EngineEntry = engine_entry(manifest, precision, str(path))
    gpu = gpu_info(cudart, index)
    check_engine_compat(entry, manifest.files, str(path), trt.__version__, gpu)
    if entry.plugin == "jit":
        if cuda_graph:
            raise UserError(f"the {precision} engines of {path} run the CubeFrameAttention plugin just in time "
                            "(Python), which CUDA graphs cannot capture: open them without cuda_graph")
        from rvos_edge.export.plugin_graph import register_plugin

        register_plugin(aot=False)
    cuda_call(cudart, cudart.cudaSetDevice(index))
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    specs = expected_graphs(manifest.config, manifest.clip_len)
    runners = {}
    for graph in GRAPH_NAMES:
        engine = _deserialize(runtime, logger, path / entry.files[graph])
        runners[graph] = TrtRunner(trt, cudart, engine, graph, (*specs[graph].inputs, *specs[graph].outputs),
                                   cuda_graph)
    return Engines(text=runners[TEXT_ENCODER], clip=runners[CLIP_MODEL], config=manifest.config, precision=precision,
                   clip_len=manifest.clip_len, backend="trt", source=str(path), learnt_tokens=manifest.learnt_tokens)


