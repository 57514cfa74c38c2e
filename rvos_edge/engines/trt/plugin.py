"""The CubeFrameAttention TensorRT plugin: ``rvos_edge::CubeFrameAttention`` registered with ``tensorrt.plugin``.

    plugin_blocker()            # None, or why this machine cannot build or run the plugin
    register_plugin(aot=True)   # before parsing the plugin graph, or loading an engine that runs it just in time

The node itself (schema, export) is `rvos_edge.export.plugin_graph`. `register_plugin`
registers, with ``tensorrt.plugin`` (quickly deployable plugins): the shape
function; a just-in-time implementation (TensorRT >= 10.6) that launches the
Triton kernel on TensorRT's buffers and stream through torch; and, with TensorRT
>= 10.9, an ahead-of-time implementation returning the kernel compiled to PTX,
which TensorRT bakes into the engine so that it runs without Python. Both run
`rvos_edge.kernels.trt_plugin` (the fused Triton kernel the model uses).
Importing this module imports numpy only; tensorrt, torch and triton are imported when used.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import numpy.typing as npt

from rvos_edge.artifacts.tensorrt import PLUGIN_OP

MIN_TRITON = (3, 3)          # ASTSource(fn, signature, constexprs) for the ahead-of-time kernel
_registered: set[str] = set()


def plugin_blocker() -> str | None:
    """Why this machine cannot build or run the plugin apart from the TensorRT version; None if it can."""
    for module in ("torch", "triton"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    import triton

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < MIN_TRITON:
        return f"triton {triton.__version__} is older than {MIN_TRITON[0]}.{MIN_TRITON[1]}"
    return None


def _geometry(q: Any, grid: np.ndarray, cube: int, shift: int, scale: float, head_dim: int) -> Any:
    """The kernel's Geometry of one plugin call (q: its first input, whose dtype picks fp16 or fp32)."""
    import tensorrt as trt

    from rvos_edge.kernels.trt_plugin import Geometry

    return Geometry(int(grid[0]), int(grid[1]), int(cube), int(shift), int(head_dim), float(scale),
                    "fp16" if q.dtype == trt.float16 else "fp32")


def register_plugin(aot: bool) -> None:
    """Register ``rvos_edge::CubeFrameAttention`` with tensorrt.plugin (once per process).

    aot: also register the ahead-of-time implementation (TensorRT >= 10.9; the
    network then needs NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS,
    since the plugin has both implementations).
    """
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if PLUGIN_OP not in _registered:
        @trtp.register(PLUGIN_OP)
        def desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, grid: npt.NDArray[np.int32], cube: int,
                 shift: int, heads: int, scale: float) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
            lse = trtp.from_shape_expr((q.shape_expr[0], q.shape_expr[1], q.shape_expr[2]), dtype=trt.float32)
            return q.like(), lse

        @trtp.autotune(PLUGIN_OP)
        def autotune(q, k, v, outputs) -> list[trtp.AutoTuneCombination]:
            # weakly typed builds (TensorRT 10.x with FP16) may pick either; lse stays FP32
            return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32")]

        @trtp.impl(PLUGIN_OP)
        def impl(q, k, v, grid, cube, shift, scale, outputs, stream) -> None:
            import torch

            from rvos_edge.kernels.trt_plugin import launch

            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                tq, tk, tv, out, lse = (torch.as_tensor(t, device="cuda") for t in (q, k, v, *outputs))
                launch(tq, tk, tv, out, lse, _geometry(q, grid, cube, shift, scale, q.shape[3]))

        _registered.add(PLUGIN_OP)
    if aot and f"{PLUGIN_OP}/aot" not in _registered:
        @trtp.aot_impl(PLUGIN_OP)
        def aot_impl(q, k, v, grid, cube, shift, scale, outputs, tactic) -> tuple[
                str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
            from rvos_edge.kernels.trt_plugin import compile_ptx

            geo = _geometry(q, grid, cube, shift, scale, q.shape_expr[3].constant_value())
            kernel = compile_ptx(geo)
            frames = q.shape_expr[2] // (geo.height * geo.width)
            params = trtp.KernelLaunchParams()
            params.grid_x = frames * kernel.tiles
            params.grid_y = q.shape_expr[0] * q.shape_expr[1]
            params.block_x = kernel.threads
            params.shared_mem = kernel.shared
            return kernel.name, kernel.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(frames)])

        _registered.add(f"{PLUGIN_OP}/aot")
