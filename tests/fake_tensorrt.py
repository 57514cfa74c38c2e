"""Stand-ins for tensorrt and libcudart on the CPU, under Polygraphy's real code, to test the TensorRT backend.

FakeCudart: the libcudart functions Polygraphy's CUDA wrapper and rvos_edge.engines.trt.cuda
call through ctypes, with the same arguments (ctypes pointers and values); "device"
memory is host memory, so every copy is a memmove. It records the copies (kind,
destination, bytes), the streams' captures and the graph launches, and fails (a
CUDA error status) a copy touching freed memory. `install_cudart` makes it the
library behind ``polygraphy.cuda.wrapper()``.

FakeTrt: one fake ``tensorrt`` module, FAKE_TRT (Polygraphy binds its lazy import of tensorrt
once per process, so every test shares this object; `reset` sets its state):
the attributes Polygraphy's TrtRunner, engine_from_bytes, Calibrator and
get_trt_logger and the backend use. FakeEngine: an ONNX graph in onnxruntime
behind TensorRT's name-based engine API (one optimisation profile); its context
reads its inputs from the bound addresses, asks the output allocator for the
outputs' memory and writes them there, or records the launch while its stream
is capturing. FakeTrt.Runtime "deserializes" an engine file holding ONNX bytes.
"""
from __future__ import annotations

import ctypes
import enum
import itertools
import sys
import types
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

_ORT_TYPES = {"tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(float)": "float32"}
HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 1, 2, 3      # cudaMemcpyKind
ERROR_INVALID_VALUE = 1


def _value(arg: Any) -> Any:
    """The Python value of a ctypes argument (c_void_p(None) -> 0)."""
    value = getattr(arg, "value", arg)
    return 0 if value is None else value


def _out(ref: Any, value: int) -> None:
    """Write `value` through a ctypes.byref(...) argument."""
    ref._obj.value = value


class FakeStream:
    """A stream: `capture` is the list of launches recorded while capturing, None otherwise."""

    def __init__(self) -> None:
        self.capture: list[Callable[[], None]] | None = None


class FakeCudart:
    """The libcudart functions used, as plain functions (so that ctypes' restype can be set on them)."""

    def __init__(self, gpu: tuple[str, int, int] = ("Fake GPU", 8, 7), devices: int = 1) -> None:
        self.gpu, self.devices = gpu, devices
        self.memory: dict[int, np.ndarray] = {}
        self.freed: set[int] = set()
        self.streams: dict[int, FakeStream] = {}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.copies: list[tuple[int, int, int]] = []
        self.launches = 0
        ids = itertools.count(1)

        def cudaMalloc(ref: Any, nbytes: Any) -> int:
            buffer = np.zeros(max(_value(nbytes), 1), np.uint8)
            self.memory[buffer.ctypes.data] = buffer
            _out(ref, buffer.ctypes.data)
            return 0

        def cudaFree(ptr: Any) -> int:
            self.freed.add(_value(ptr))
            return 0

        def cudaMemcpyAsync(dst: Any, src: Any, nbytes: Any, kind: Any, stream: Any = None) -> int:
            dst, src, nbytes, kind = _value(dst), _value(src), _value(nbytes), _value(kind)
            if dst in self.freed or src in self.freed:
                return ERROR_INVALID_VALUE
            ctypes.memmove(dst, src, nbytes)
            self.copies.append((kind, dst, nbytes))
            return 0

        def cudaStreamCreate(ref: Any) -> int:
            stream = next(ids)
            self.streams[stream] = FakeStream()
            _out(ref, stream)
            return 0

        def cudaStreamBeginCapture(stream: Any, mode: int) -> int:
            self.streams[_value(stream)].capture = []
            return 0

        def cudaStreamEndCapture(stream: Any, ref: Any) -> int:
            fake = self.streams[_value(stream)]
            graph = next(ids)
            self.graphs[graph], fake.capture = fake.capture, None
            _out(ref, graph)
            return 0

        def cudaGraphInstantiateWithFlags(ref: Any, graph: Any, flags: Any) -> int:
            exec_graph = next(ids)
            self.graphs[exec_graph] = list(self.graphs[_value(graph)])
            _out(ref, exec_graph)
            return 0

        def cudaGraphLaunch(exec_graph: Any, stream: Any) -> int:
            self.launches += 1
            for launch in self.graphs[_value(exec_graph)]:
                launch()
            return 0

        def cudaGetDeviceCount(ref: Any) -> int:
            _out(ref, self.devices)
            return 0

        def cudaGetDeviceProperties_v2(props: Any, index: int) -> int:
            name = self.gpu[0].encode() + b"\0"
            ctypes.memmove(props, name, len(name))
            return 0

        def cudaDeviceGetAttribute(ref: Any, attribute: int, index: int) -> int:
            _out(ref, {75: self.gpu[1], 76: self.gpu[2]}[attribute])
            return 0

        def ok(*args: Any) -> int:
            return 0

        self.cudaMalloc, self.cudaFree, self.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
        self.cudaMemcpy = cudaMemcpyAsync
        self.cudaStreamCreate, self.cudaStreamDestroy, self.cudaStreamSynchronize = cudaStreamCreate, ok, ok
        self.cudaStreamBeginCapture, self.cudaStreamEndCapture = cudaStreamBeginCapture, cudaStreamEndCapture
        self.cudaGraphInstantiateWithFlags, self.cudaGraphLaunch = cudaGraphInstantiateWithFlags, cudaGraphLaunch
        self.cudaGraphDestroy = self.cudaGraphExecDestroy = self.cudaSetDevice = ok
        self.cudaGetDeviceCount, self.cudaGetDeviceProperties_v2 = cudaGetDeviceCount, cudaGetDeviceProperties_v2
        self.cudaDeviceGetAttribute = cudaDeviceGetAttribute
        self.cudaGetErrorName = lambda status: b"cudaErrorInvalidValue"

    def copies_into(self, ptr: int) -> list[int]:
        """The kinds (HOST_TO_DEVICE, ...) of the copies into `ptr` so far."""
        return [kind for kind, dst, _ in self.copies if dst == ptr]


def install_cudart(cudart: FakeCudart) -> None:
    """Make `cudart` the library behind Polygraphy's global CUDA wrapper.

    It stays after the test, so that runners freed later free their memory in a fake, not in the
    real library (only a process without TensorRT installs it, where nothing else uses CUDA).
    """
    from polygraphy.cuda import Cuda

    wrapper = Cuda.__new__(Cuda)             # Polygraphy's wrapper, without loading the real library
    wrapper.handle = cudart
    sys.modules["polygraphy.cuda.cuda"].G_CUDA = wrapper


class DataType(enum.Enum):
    """tensorrt.DataType (its members are also module attributes: trt.float32, ...)."""

    float32 = "float32"
    float16 = "float16"
    int32 = "int32"
    int8 = "int8"
    int64 = "int64"
    uint8 = "uint8"
    bool = "bool"


class ICudaEngine:
    pass


class IExecutionContext:
    pass


class IOutputAllocator:
    def __init__(self) -> None:
        pass


class ILogger:
    def __init__(self) -> None:
        pass


class IInt8Calibrator:
    def __init__(self) -> None:
        pass


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IInt8EntropyCalibrator(IInt8Calibrator):
    pass


class IInt8MinMaxCalibrator(IInt8Calibrator):
    pass


class IInt8LegacyCalibrator(IInt8Calibrator):
    pass


def _read(ptr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))[:nbytes].view(
        dtype).reshape(shape).copy()


class FakeContext(IExecutionContext):
    """An execution context: input shapes and addresses, output allocators; `executions` counts real runs."""

    active_optimization_profile = 0

    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    def set_output_allocator(self, name: str, allocator: Any) -> bool:
        self.allocators[name] = allocator
        return True

    def _compute(self) -> dict[str, np.ndarray]:
        e = self.engine
        feeds = {n: _read(self.addresses[n], e.dtypes[n], self.shapes[n]) for n in e.input_names}
        self.executions += 1
        return {n: np.ascontiguousarray(v, e.dtypes[n]) for n, v in zip(e.output_names, e.session.run(None, feeds))}

    def execute_async_v3(self, stream_ptr: int) -> bool:
        capture = self.engine.trt.cudart.streams[stream_ptr].capture
        if capture is None:
            for name, value in self._compute().items():
                self.allocators[name].notify_shape(name, value.shape)
                ptr = self.allocators[name].reallocate_output_async(name, 0, value.nbytes, 256, stream_ptr)
                ctypes.memmove(ptr, value.ctypes.data, value.nbytes)
            return True
        # capturing: the allocator is asked for the memory now (same sizes as the last run), the work recorded
        targets = {n: a.reallocate_output_async(n, 0, a.buffers[n].nbytes, 256, stream_ptr)
                   for n, a in self.allocators.items()}

        def launch() -> None:
            for name, value in self._compute().items():
                ctypes.memmove(targets[name], value.ctypes.data, value.nbytes)

        capture.append(launch)
        return True


class FakeEngine(ICudaEngine):
    """An ONNX graph in onnxruntime as a TensorRT engine; `profiles`: {input: (min, opt, max)}."""

    def __init__(self, onnx_bytes: bytes, profiles: dict[str, tuple], trt: "FakeTrt") -> None:
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.trt = trt
        self.input_names = [a.name for a in self.session.get_inputs()]
        self.output_names = [a.name for a in self.session.get_outputs()]
        args = [*self.session.get_inputs(), *self.session.get_outputs()]
        self.dtypes = {a.name: np.dtype(_ORT_TYPES[a.type]) for a in args}
        self.profiles = {n: profiles[n] for n in self.input_names}
        self.contexts: list[FakeContext] = []
        trt.engines.append(self)

    @property
    def num_io_tensors(self) -> int:
        return len(self.input_names) + len(self.output_names)

    def get_tensor_name(self, i: int) -> str:
        return [*self.input_names, *self.output_names][i]

    def get_tensor_mode(self, name: str) -> "FakeTrt.TensorIOMode":
        return FakeTrt.TensorIOMode.INPUT if name in self.input_names else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self.dtypes[name].name)

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(-1 for _ in self.profiles.get(name, ((),))[0])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.profiles[name]]

    def get_tensor_format(self, name: str, profile: int) -> "FakeTrt.TensorFormat":
        return FakeTrt.TensorFormat.LINEAR

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeRuntime:
    """trt.Runtime: "deserializes" ONNX bytes; anything else fails with a TensorRT-like error on the logger."""

    def __init__(self, trt: "FakeTrt", logger: Any) -> None:
        self.trt, self.logger = trt, logger

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        if not bytes(data).startswith(b"\x08"):          # an ONNX ModelProto starts with its ir_version field
            self.logger.log(FakeTrt.Logger.ERROR, "1: [runtime.cpp::parsePlan::314] Error Code 1: Serialization "
                                              "assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.")
            return None
        return FakeEngine(bytes(data), self.trt.profiles, self.trt)


class FakeTrt(types.ModuleType):
    """The fake tensorrt module; `reset` gives it a test's CUDA runtime, profiles and version."""

    class TensorIOMode(enum.Enum):
        INPUT = 0
        OUTPUT = 1

    class TensorFormat(enum.Enum):
        LINEAR = 0
        HWC = 1
        CHW16 = 2

    class Logger(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1
        PREFER_AOT_PYTHON_PLUGINS = 2
        PREFER_JIT_PYTHON_PLUGINS = 3

    ICudaEngine, IExecutionContext, IOutputAllocator, ILogger = ICudaEngine, IExecutionContext, IOutputAllocator, ILogger
    IInt8Calibrator, IInt8LegacyCalibrator = IInt8Calibrator, IInt8LegacyCalibrator
    IInt8EntropyCalibrator2, IInt8EntropyCalibrator = IInt8EntropyCalibrator2, IInt8EntropyCalibrator
    IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
    float32, float16, int32, int8 = DataType.float32, DataType.float16, DataType.int32, DataType.int8
    int64, uint8, bool = DataType.int64, DataType.uint8, DataType.bool

    def __init__(self) -> None:
        super().__init__("tensorrt")
        self.__file__ = __file__
        self.reset(FakeCudart())

    def reset(self, cudart: FakeCudart, profiles: dict[str, tuple] | None = None, version: str = "10.3.0") -> None:
        self.cudart, self.profiles, self.__version__ = cudart, profiles or {}, version
        self.engines: list[FakeEngine] = []

    @staticmethod
    def nptype(dtype: DataType) -> np.dtype:
        return np.dtype(dtype.value)

    @staticmethod
    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        return True

    def Runtime(self, logger: Any) -> FakeRuntime:
        return FakeRuntime(self, logger)


FAKE_TRT = FakeTrt()


def install_tensorrt(monkeypatch: Any, cudart: FakeCudart, profiles: dict[str, tuple] | None = None,
                     version: str = "10.3.0") -> FakeTrt:
    """Make `import tensorrt` (ours and Polygraphy's) give FAKE_TRT, reset for this test, on `cudart`."""
    FAKE_TRT.reset(cudart, profiles, version)
    monkeypatch.setitem(sys.modules, "tensorrt", FAKE_TRT)
    install_cudart(cudart)
    return FAKE_TRT
