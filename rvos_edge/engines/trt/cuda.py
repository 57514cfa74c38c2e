"""The CUDA runtime calls Polygraphy's CUDA wrapper lacks: the device, its name and compute capability, CUDA graphs.

    index = device_index("cuda:1")
    gpu = select_device(index)                        # cudaSetDevice; GpuInfo("NVIDIA H200", "9.0")
    graph = CudaGraph(stream_ptr, enqueue)            # captures what enqueue() puts on the stream
    graph.launch()                                    # replays it on that stream

Polygraphy (`polygraphy.cuda`) loads libcudart with ctypes and wraps streams,
device memory and copies, which the runner uses. This module calls the same
library (``polygraphy.cuda.wrapper().handle``) for the few functions Polygraphy
has no wrapper for:
- cudaGetDeviceCount, cudaSetDevice, cudaGetDeviceProperties (its first field is
  the name) and cudaDeviceGetAttribute (compute capability), for the engines'
  compatibility check;
- cudaStreamBeginCapture (thread-local mode) / cudaStreamEndCapture,
  cudaGraphInstantiateWithFlags (CUDA >= 11.4, same signature in 12 and 13),
  cudaGraphLaunch, cudaGraphDestroy and cudaGraphExecDestroy, for CUDA-graph replay.
A failed call is a RuntimeError naming the CUDA error (cudaGetErrorName).
Importing this module imports no third-party module; polygraphy is imported when used.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Callable

from rvos_edge.artifacts.tensorrt import GpuInfo
from rvos_edge.engines.trt.messages import captured
from rvos_edge.errors import UserError

CAPTURE_THREAD_LOCAL = 1                    # cudaStreamCaptureModeThreadLocal
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76       # cudaDevAttrComputeCapabilityMajor / Minor
NAME_BYTES = 256                            # cudaDeviceProp.name: char[256], the struct's first field
PROPS_BYTES = 4096                          # more than sizeof(cudaDeviceProp) in CUDA 11 to 13 (about 1 KiB)


def cudart() -> Any:
    """libcudart as Polygraphy loaded it (a ctypes library); a UserError when it cannot be loaded."""
    from polygraphy import cuda

    try:
        with captured():                        # Polygraphy's warnings while it searches for the library
            return cuda.wrapper().handle
    except OSError as e:
        raise UserError(f"cannot load the CUDA runtime library libcudart: {e}") from None


def check(status: int, call: str) -> None:
    """Raise a RuntimeError naming the CUDA error when `status` (of `call`) is not cudaSuccess."""
    if status != 0:
        get_name = cudart().cudaGetErrorName
        get_name.restype = ctypes.c_char_p
        raise RuntimeError(f"{call} failed: CUDA error {get_name(status).decode()}")


def device_index(device: str) -> int:
    """"cuda" -> 0, "cuda:1" -> 1; anything else is a UserError (TensorRT runs on CUDA GPUs only)."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise UserError(f"the trt backend runs on a CUDA GPU: use --device cuda (or cuda:N), not {device!r}")


def select_device(index: int) -> GpuInfo:
    """Make CUDA device `index` current for this thread; its name and compute capability (a UserError
    when there is no such GPU)."""
    lib = cudart()
    count = ctypes.c_int(0)
    status = lib.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0 or index >= count.value:
        found = f"{count.value} found" if status == 0 else "the CUDA driver reports none"
        raise UserError(f"no usable CUDA GPU {index} ({found})")
    check(lib.cudaSetDevice(index), "cudaSetDevice")
    props = ctypes.create_string_buffer(PROPS_BYTES)
    get_properties = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
    check(get_properties(props, index), "cudaGetDeviceProperties")
    name = props.raw[:NAME_BYTES].split(b"\0")[0].decode(errors="replace").strip()
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    check(lib.cudaDeviceGetAttribute(ctypes.byref(major), ATTR_CC_MAJOR, index), "cudaDeviceGetAttribute")
    check(lib.cudaDeviceGetAttribute(ctypes.byref(minor), ATTR_CC_MINOR, index), "cudaDeviceGetAttribute")
    return GpuInfo(name, f"{major.value}.{minor.value}")


class CudaGraph:
    """The work `enqueue()` puts on the stream `stream_ptr`, captured into a CUDA graph when this is made;
    `launch` replays it on that stream (asynchronously). Freed with the object."""

    def __init__(self, stream_ptr: int, enqueue: Callable[[], None]) -> None:
        lib = cudart()
        self._stream = ctypes.c_void_p(stream_ptr)
        check(lib.cudaStreamBeginCapture(self._stream, CAPTURE_THREAD_LOCAL), "cudaStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:                                   # a failed enqueue must not leave the stream capturing
            ended = lib.cudaStreamEndCapture(self._stream, ctypes.byref(graph))
        check(ended, "cudaStreamEndCapture")
        self._exec = ctypes.c_void_p()
        try:
            check(lib.cudaGraphInstantiateWithFlags(ctypes.byref(self._exec), graph, ctypes.c_ulonglong(0)),
                  "cudaGraphInstantiateWithFlags")
        finally:
            lib.cudaGraphDestroy(graph)
        weakref.finalize(self, lib.cudaGraphExecDestroy, self._exec)

    def launch(self) -> None:
        """Replay the graph on its stream."""
        check(cudart().cudaGraphLaunch(self._exec, self._stream), "cudaGraphLaunch")
