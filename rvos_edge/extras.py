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
    "serve": ("tritonclient",),           # rvos-edge triton (rvos_edge.serving): tritonclient[grpc]
    "openvino": ("openvino",),            # --backend openvino (rvos_edge.engines.openvino)
    "ray": ("ray",),                      # rvos-edge batch (rvos_edge.serving.batch): ray[data]
}
"""Each extra -> the top-level modules its packages install (as in pyproject.toml's optional-dependencies)."""


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, what: str) -> None:
    """A UserError naming `extra` and its pip command unless all of its modules are installed.

    what: the thing that needs the extra, as the message's subject ("this command", "the torch backend").
    """
    missing = missing_modules(extra)
    if missing:
        raise UserError(f"{what} needs the {extra} extra (not installed: {', '.join(missing)}): "
                        f"pip install 'rvos-edge[{extra}]'")
