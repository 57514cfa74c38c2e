"""TensorRT backend: an artifact folder's engines -> two runners on Polygraphy's TrtRunner.

    engines = open_trt("artifacts/", precision="fp16")            # or open_engines(..., backend="trt")
    engines.clip.run(feeds)                                      # numpy in, numpy out, like every backend

`open_trt` reads the manifest's engine entry of the precision (built by
``rvos-edge build DIR --backend trt``), selects the GPU, refuses engines built
with another TensorRT version, for another GPU or from ONNX that changed since
(the message names the rebuild command), registers the CubeFrameAttention plugin
when the engine runs it just in time, and deserializes the engines with
Polygraphy's ``engine_from_bytes``. It needs tensorrt and polygraphy
(``pip install 'rvos-edge[trt]'``), imported when it is called. This module
imports no torch; Polygraphy's TrtRunner imports it, when it is installed, at
its first inference (to tell torch tensors from numpy arrays), and an engine with
the just-in-time plugin needs it.

Each `TrtRunner` wraps one activated Polygraphy ``TrtRunner`` (its execution
context, CUDA stream and output buffers) and owns one device buffer per input,
allocated once at the profile's largest shape (``polygraphy.cuda.DeviceArray``).
`run` checks the shapes against the profile, copies the inputs into those
buffers on the runner's stream and calls ``infer(feeds, copy_outputs_to_host=False)``
with them (so Polygraphy copies nothing and the buffers' addresses never change),
then copies the outputs to new numpy arrays.

History on the device: the clip runner's ``history_out`` array is returned
read-only, and when the very same array object comes back as the next run's
``history`` (what `Segmenter` does: ``history_out`` of a clip is the history of
the next), the runner copies the history_out that ``infer`` left on the device
into its history buffer (device to device) instead of uploading the host copy:
the history goes from one clip to the next without a host round trip. (The copy
is needed: history_out lives in Polygraphy's output buffer, which the next run
overwrites while it reads history.) Any other array (zeros after a reset, a
history from elsewhere) is uploaded as usual, so callers need not know.

CUDA graphs (``cuda_graph=True``, `rvos_edge.engines.trt.cuda.CudaGraph`): on the
second run with the same input shapes (the first, through ``infer``, set the
shapes, the addresses and the output buffers), the engine launch
(``context.execute_async_v3`` on the runner's stream) is captured and replayed
from then on; copies stay outside the graph. The graph is dropped when the
shapes change, since a run with other shapes may move Polygraphy's output buffers.
"""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np

from rvos_edge.artifacts.manifest import (
    CLIP_MODEL,
    GRAPH_NAMES,
    TEXT_ENCODER,
    TensorSpec,
    expected_graphs,
    load_manifest,
)
from rvos_edge.artifacts.tensorrt import EngineEntry, check_engine_compat, engine_entry
from rvos_edge.engines.base import Engines, Runner
from rvos_edge.engines.trt.cuda import CudaGraph, device_index, select_device
from rvos_edge.engines.trt.messages import captured
from rvos_edge.engines.trt.plan import INSTALL_HINT
from rvos_edge.errors import UserError

HISTORY, HISTORY_OUT = "history", "history_out"


def import_tensorrt() -> Any:
    """The tensorrt module, once tensorrt and polygraphy both import; else a UserError saying how to install them."""
    try:
        import polygraphy  # noqa: F401  (the builder and runner are Polygraphy's)
        import tensorrt
    except ImportError as e:
        missing = "TensorRT" if e.name == "tensorrt" else e.name
        raise UserError(f"{missing} is not installed: {INSTALL_HINT}") from None
    return tensorrt


def _free(buffers: list[Any]) -> None:
    """Free a runner's input buffers (its finalizer)."""
    for buffer in buffers:
        buffer.free()


class TrtRunner(Runner):
    """One TensorRT engine on Polygraphy's TrtRunner, with its input buffers (see the module docstring).

    specs: the contract's tensors (their symbolic shapes name the dynamic dims).
    """

    def __init__(self, trt: Any, engine: Any, name: str, specs: tuple[TensorSpec, ...],
                 cuda_graph: bool = False) -> None:
        from polygraphy import cuda
        from polygraphy.backend.trt import TrtRunner as PolygraphyRunner
        from polygraphy.datatype import DataType

        self.name = name
        self._runner = PolygraphyRunner(engine, name=name)
        self._runner.activate()
        weakref.finalize(self, self._runner.deactivate)
        shapes = {t.name: t.shape for t in specs}
        tensors = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in tensors}
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in tensors}

        def spec(n: str) -> TensorSpec:
            return TensorSpec(n, dtypes[n].name, shapes.get(n, tuple(engine.get_tensor_shape(n))))

        self.inputs = tuple(spec(n) for n in tensors if is_input[n])
        self.outputs = tuple(spec(n) for n in tensors if not is_input[n])
        self._profile = {t.name: tuple(tuple(s) for s in engine.get_tensor_profile_shape(t.name, 0))
                         for t in self.inputs}
        self._buffers = {t.name: cuda.DeviceArray(shape=self._profile[t.name][2],
                                                  dtype=DataType.from_dtype(dtypes[t.name]))
                         for t in self.inputs}
        weakref.finalize(self, _free, list(self._buffers.values()))
        self._cuda_graph = cuda_graph
        self._graph: CudaGraph | None = None
        self._last: tuple[tuple, dict[str, Any]] | None = None    # (shapes, device outputs) of the last run
        self._history_token: np.ndarray | None = None

    @property
    def keeps_history(self) -> bool:
        """True for a clip runner: a returned history_out fed back as history stays on the device."""
        return HISTORY in self._buffers and any(t.name == HISTORY_OUT for t in self.outputs)

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self._profile[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise UserError(f"{self.name} input {name} has shape {shape}, the engine takes {lo} to {hi} "
                            "(rebuild with a larger --max-batch or re-export for other clip lengths)")

    def _execute(self, feeds: dict[str, Any], key: tuple) -> dict[str, Any]:
        """The device outputs of one run on the input buffers `feeds` (input shapes `key`), through
        Polygraphy's infer or, with cuda_graph, a CUDA graph of the engine launch."""
        stream = self._runner.stream
        if self._cuda_graph and self._last is not None and self._last[0] == key:
            if self._graph is None:
                context = self._runner.context

                def enqueue() -> None:
                    if not context.execute_async_v3(stream.ptr):
                        raise RuntimeError(f"TensorRT could not run {self.name}")

                self._graph = CudaGraph(stream.ptr, enqueue)
            self._graph.launch()
            stream.synchronize()
            return self._last[1]
        self._graph = None
        outputs = self._runner.infer(feeds, check_inputs=False, copy_outputs_to_host=False)
        self._last = key, outputs
        return outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from polygraphy import cuda

        missing = [t.name for t in self.inputs if t.name not in feeds]
        if missing:
            raise UserError(f"{self.name} needs inputs {', '.join(missing)}")
        device_history = self.keeps_history and feeds[HISTORY] is self._history_token
        feeds = self.cast_feeds({t.name: feeds[t.name] for t in self.inputs})
        stream = self._runner.stream
        for t in self.inputs:
            array = np.ascontiguousarray(feeds[t.name])
            self._check_shape(t.name, array.shape)
            buffer = self._buffers[t.name].resize(array.shape)       # within its allocation: never moves
            if t.name == HISTORY and device_history:
                cuda.wrapper().memcpy(buffer.ptr, self._last[1][HISTORY_OUT].ptr, array.nbytes,
                                      cuda.MemcpyKind.DeviceToDevice, stream.ptr)
            else:
                buffer.copy_from(array, stream)
        key = tuple(self._buffers[t.name].shape for t in self.inputs)
        device = self._execute(dict(self._buffers), key)
        out = {t.name: device[t.name].numpy() for t in self.outputs}
        if self.keeps_history:
            out[HISTORY_OUT].flags.writeable = False
            self._history_token = out[HISTORY_OUT]
        return out


def _load_engine(path: Path) -> Any:
    """The engine in file `path`, deserialized by Polygraphy; a UserError when TensorRT cannot load it."""
    from polygraphy.backend.trt import engine_from_bytes
    from polygraphy.exception import PolygraphyException

    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    with captured() as messages:
        try:
            return engine_from_bytes(data)
        except PolygraphyException:
            raise UserError(f"TensorRT cannot load {path}: "
                            f"{messages.last_error or 'not an engine of this TensorRT'}") from None


def open_trt(path: str | Path, precision: str = "fp32", device: str = "cuda", cuda_graph: bool = False) -> Engines:
    """Open the TensorRT engines of `precision` in artifact folder `path` on `device` ("cuda" or "cuda:N").

    cuda_graph: replay the engine launches as CUDA graphs (see the module docstring);
    not with engines that run the CubeFrameAttention plugin just in time.
    """
    path = Path(path)
    trt = import_tensorrt()
    index = device_index(device)
    manifest = load_manifest(path)
    entry: EngineEntry = engine_entry(manifest, precision, str(path))
    gpu = select_device(index)
    check_engine_compat(entry, manifest.files, str(path), trt.__version__, gpu)
    if entry.plugin == "jit":
        if cuda_graph:
            raise UserError(f"the {precision} engines of {path} run the CubeFrameAttention plugin just in time "
                            "(Python), which CUDA graphs cannot capture: open them without cuda_graph")
        from rvos_edge.engines.trt.plugin import register_plugin

        register_plugin(aot=False)
    specs = expected_graphs(manifest.config, manifest.clip_len)
    runners = {g: TrtRunner(trt, _load_engine(path / entry.files[g]), g, (*specs[g].inputs, *specs[g].outputs),
                            cuda_graph) for g in GRAPH_NAMES}
    return Engines(text=runners[TEXT_ENCODER], clip=runners[CLIP_MODEL], config=manifest.config, precision=precision,
                   clip_len=manifest.clip_len, backend="trt", source=str(path), learnt_tokens=manifest.learnt_tokens)
