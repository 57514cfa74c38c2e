"""Stand-ins for tensorrt and cuda-python's runtime on the CPU, to test the TensorRT backend's logic.

FakeCudart: "device" memory is host memory, so every copy is a memmove; it records
the copies (kind, destination, bytes), the streams' captures and the graph launches.
FakeEngine: an ONNX graph in onnxruntime behind TensorRT's name-based engine API
(one optimisation profile); its context reads its inputs from the bound addresses,
runs the graph and writes the outputs to the bound addresses, or records the call
while its stream is capturing. FakeTrt: the few module attributes the backend uses;
its Runtime "deserializes" an engine file holding ONNX bytes.
"""
from __future__ import annotations

import ctypes
import enum
import itertools
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

_ORT_TYPES = {"tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64,
              "tensor(float)": np.float32}


class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorInvalidDevice = 101


class _Kind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class _Mode(enum.Enum):
    cudaStreamCaptureModeThreadLocal = 2


OK = _Err.cudaSuccess


class FakeStream:
    ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.capture: list | None = None

    def __int__(self) -> int:
        return self.id


class FakeCudart:
    cudaError_t = _Err
    cudaMemcpyKind = _Kind
    cudaStreamCaptureMode = _Mode

    def __init__(self, gpu: tuple[str, int, int] = ("Fake GPU", 8, 7), devices: int = 1) -> None:
        self.gpu, self.devices = gpu, devices
        self.buffers: dict[int, np.ndarray] = {}
        self.streams: dict[int, FakeStream] = {}
        self.copies: list[tuple[_Kind, int, int]] = []
        self.launches = 0

    def cudaGetErrorName(self, err: _Err) -> tuple:
        return OK, err.name.encode()

    def cudaGetDeviceProperties(self, index: int) -> tuple:
        if index >= self.devices:
            return (_Err.cudaErrorInvalidDevice, None)
        name, major, minor = self.gpu
        return OK, SimpleNamespace(name=name.encode() + b"\0\0", major=major, minor=minor)

    def cudaSetDevice(self, index: int) -> tuple:
        return (OK,)

    def cudaStreamCreate(self) -> tuple:
        stream = FakeStream()
        self.streams[stream.id] = stream
        return OK, stream

    def cudaStreamDestroy(self, stream: FakeStream) -> tuple:
        return (OK,)

    def cudaMalloc(self, nbytes: int) -> tuple:
        buf = np.zeros(nbytes, np.uint8)
        self.buffers[buf.ctypes.data] = buf
        return OK, buf.ctypes.data

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr: int) -> tuple:
        return (OK,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: _Kind, stream: FakeStream) -> tuple:
        ctypes.memmove(dst, src, nbytes)
        self.copies.append((kind, dst, nbytes))
        return (OK,)

    def cudaStreamSynchronize(self, stream: FakeStream) -> tuple:
        return (OK,)

    def cudaStreamBeginCapture(self, stream: FakeStream, mode: _Mode) -> tuple:
        stream.capture = []
        return (OK,)

    def cudaStreamEndCapture(self, stream: FakeStream) -> tuple:
        graph, stream.capture = stream.capture, None
        return OK, graph

    def cudaGraphInstantiate(self, graph: list, flags: int) -> tuple:
        return OK, list(graph)

    def cudaGraphDestroy(self, graph: list) -> tuple:
        return (OK,)

    def cudaGraphExecDestroy(self, graph: list) -> tuple:
        return (OK,)

    def cudaGraphLaunch(self, graph: list, stream: FakeStream) -> tuple:
        self.launches += 1
        for call in graph:
            call()
        return (OK,)


def _read(ptr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))[:nbytes].view(
        dtype).reshape(shape).copy()


class FakeContext:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def _feeds(self, zeros: bool = False) -> dict[str, np.ndarray]:
        e = self.engine
        return {n: np.zeros(self.shapes[n], e.dtypes[n]) if zeros else _read(self.addresses[n], e.dtypes[n],
                                                                             self.shapes[n]) for n in e.input_names}

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.input_names:
            return self.shapes[name]
        outputs = self.engine.session.run(None, self._feeds(zeros=True))
        return tuple(outputs[self.engine.output_names.index(name)].shape)

    def _execute(self) -> None:
        self.executions += 1
        for name, value in zip(self.engine.output_names, self.engine.session.run(None, self._feeds())):
            value = np.ascontiguousarray(value, self.engine.dtypes[name])
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)

    def execute_async_v3(self, stream_handle: int) -> bool:
        stream = self.engine.cudart.streams[stream_handle]
        if stream.capture is not None:
            stream.capture.append(self._execute)
        else:
            self._execute()
        return True


class FakeEngine:
    def __init__(self, onnx_bytes: bytes, profiles: dict[str, tuple], cudart: FakeCudart) -> None:
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.cudart = cudart
        self.input_names = [a.name for a in self.session.get_inputs()]
        self.output_names = [a.name for a in self.session.get_outputs()]
        args = [*self.session.get_inputs(), *self.session.get_outputs()]
        self.dtypes = {a.name: np.dtype(_ORT_TYPES[a.type]) for a in args}
        self.profiles = {n: profiles[n] for n in self.input_names}
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.input_names) + len(self.output_names)

    def get_tensor_name(self, i: int) -> str:
        return [*self.input_names, *self.output_names][i]

    def get_tensor_mode(self, name: str) -> str:
        return FakeTrt.TensorIOMode.INPUT if name in self.input_names else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return self.dtypes[name]

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(-1 for _ in self.profiles.get(name, ((),))[0])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.profiles[name]]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeRuntime:
    def __init__(self, trt: "FakeTrt", logger: object) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        if not data.startswith(b"\x08"):            # an ONNX ModelProto starts with its ir_version field
            return None
        engine = FakeEngine(data, self.trt.profiles, self.trt.cudart)
        self.trt.engines.append(engine)
        return engine


class FakeTrt:
    """The tensorrt attributes the backend uses; `profiles` {input: (min, opt, max)} apply to every engine."""

    class TensorIOMode(enum.Enum):
        INPUT = 0
        OUTPUT = 1

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self) -> None:
            pass

    def __init__(self, cudart: FakeCudart, profiles: dict[str, tuple] | None = None,
                 version: str = "10.3.0") -> None:
        self.cudart, self.profiles, self.__version__ = cudart, profiles or {}, version
        self.engines: list[FakeEngine] = []

    @staticmethod
    def nptype(dtype: np.dtype) -> np.dtype:
        return dtype

    def Runtime(self, logger: object) -> FakeRuntime:
        return FakeRuntime(self, logger)
