"""The optional parts of rvos-edge (pyproject.toml's extras) and the one line naming a missing one.

`pip install rvos-edge` is the torch-free runtime. A command or backend that needs
more calls `require` before importing it, so a plain install answers with one
line and exit 2 (a `UserError`) instead of a ModuleNotFoundError from deep inside:

    rvos-edge export: error: this command needs the torch extra (not installed: torch, onnxscript,
    safetensors): pip install 'rvos-edge[torch]'

The TensorRT backend names its extra itself (`rvos_edge.engines.trt`), since TensorRT
may also come from JetPack rather than pip.
"""
from __future__ import annotations

import importlib.util

from rvos_edge.errors import UserError

EXTRAS: dict[str, tuple[str, ...]] = {
    # export (torch.onnx's dynamo exporter writes through onnxscript), checkpoints (safetensors), the model
    "torch": ("torch", "onnxscript", "safetensors"),
    # rvos-edge serve: pytriton (nvidia-pytriton, Linux only) and tritonclient[grpc]; rvos-edge triton and
    # RemoteSegmenter need tritonclient only (they ask for it alone)
    "serve": ("tritonclient", "pytriton"),
    "openvino": ("openvino",),            # --backend openvino (rvos_edge.engines.openvino)
    "nncf": ("nncf",),                    # rvos-edge calib --quantizer nncf (rvos_edge.calib.int8)
    "ray": ("ray", "pyarrow"),            # rvos-edge batch (rvos_edge.serving.batch): ray[data], pyarrow<26
}
"""Each extra -> the top-level modules its packages install (as in pyproject.toml's optional-dependencies;
IMPORT_NAMES maps a distribution to its module where the names differ)."""
IMPORT_NAMES = {"nvidia-pytriton": "pytriton"}
PINS = ("numpy",)
"""Base dependencies an extra only narrows (serve: numpy<2 for PyTriton), not packages of its own."""


def missing_modules(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The modules of `extra` (or those of them named in `modules`) that cannot be imported here (found
    without importing them)."""
    return [name for name in (modules or EXTRAS[extra]) if importlib.util.find_spec(name) is None]


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """A UserError naming `extra` and its pip command unless all of its modules are installed.

    what: the thing that needs the extra, as the message's subject ("this command", "the torch backend").
    modules: the extra's modules that `what` needs (default: all of EXTRAS[extra]).
    """
    missing = missing_modules(extra, modules)
    if missing:
        raise UserError(f"{what} needs the {extra} extra (not installed: {', '.join(missing)}): "
                        f"pip install 'rvos-edge[{extra}]'")
