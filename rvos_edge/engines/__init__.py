"""Engines: one folder per engine, behind one registry and one `Runner` interface.

    engines = open_engines("artifacts/", backend="ort", precision="fp32", device="cpu", threads=4)
    out = engines.text.run({"tokens": tokens})          # numpy in, numpy out

| backend | opens                                  | devices                           | install          |
|---------|----------------------------------------|-----------------------------------|------------------|
| ort     | an artifact folder (manifest checked)  | cpu, cuda (CUDA execution provider) | the base install |
| torch   | a ``.safetensors`` checkpoint          | cpu, cuda                         | [torch]          |
| trt     | an artifact folder's TensorRT engines  | cuda (cuda:N)                     | [trt]            |
| openvino | an artifact folder (manifest checked) | cpu (OpenVINO's CPU plugin)       | [openvino]       |

`BACKENDS` is the registry: every --backend choice, what each opens and where it runs.
`engine_options` is the only place a device and a thread count become a backend's own
options. Each loader is imported only when used: opening "ort" never imports torch,
opening "trt" imports tensorrt, "openvino" openvino. A new backend is a folder under engines/ with a loader
``open_<name>(path, precision, **options) -> Engines`` and one line in BACKENDS.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvos_edge.artifacts.precision import check_backend, get_precision
from rvos_edge.engines.base import Engines, Runner
from rvos_edge.errors import UserError


@dataclass(frozen=True)
class Backend:
    """One engine: its loader ("module:function"), what it opens ("folder" or "checkpoint"),
    the devices it runs on (the first is its default)."""

    name: str
    loader: str
    opens: str
    devices: tuple[str, ...]


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("ort", "rvos_edge.engines.ort.runner:open_ort", "folder", ("cpu", "cuda")),
    Backend("torch", "rvos_edge.engines.torch.runner:open_torch", "checkpoint", ("cpu", "cuda")),
    Backend("trt", "rvos_edge.engines.trt.runner:open_trt", "folder", ("cuda",)),
    Backend("openvino", "rvos_edge.engines.openvino.runner:open_openvino", "folder", ("cpu",)),
)}

DEVICES = tuple(dict.fromkeys(d for b in BACKENDS.values() for d in b.devices))   # every --device choice

__all__ = ["BACKENDS", "DEVICES", "Backend", "Engines", "Runner", "backend_names", "default_backend", "default_device",
           "engine_options", "get_backend", "open_engines"]


def backend_names(opens: str | None = None) -> tuple[str, ...]:
    """Every backend (the --backend choices), or those that open `opens` ("folder", "checkpoint")."""
    return tuple(name for name, b in BACKENDS.items() if opens is None or b.opens == opens)


def get_backend(name: str) -> Backend:
    """The registry entry of `name`; an unknown name is a UserError listing the known ones."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[name]


def default_backend(path: str | Path) -> str:
    """The backend for `path` when none is named: torch for a checkpoint file, ort for a folder."""
    return "torch" if Path(path).is_file() else "ort"


def default_device(backend: str | None) -> str:
    """Where `backend` runs unless told: its first device (cuda for trt, cpu otherwise)."""
    return get_backend(backend).devices[0] if backend else "cpu"


def engine_options(backend: str, device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """The backend's own options for `device` ("cpu", "cuda" or "cuda:N"; None: its default) and
    `threads` (CPU threads; ignored by TensorRT): the only device -> options map."""
    device = device or default_device(backend)
    if device.split(":")[0] not in get_backend(backend).devices:
        raise UserError(f"the {backend} backend runs on {' or '.join(get_backend(backend).devices)}, not {device!r}")
    if backend == "ort":
        kind, _, index = device.partition(":")
        return {"providers": (kind,), "device_id": int(index or 0), "threads": threads}
    if backend in ("torch", "openvino"):
        return {"device": device, "threads": threads}
    return {"device": device}


def open_engines(path: str | Path, backend: str | None = None, precision: str = "fp32", device: str | None = None,
                 threads: int | None = None, **options: Any) -> Engines:
    """Open `path` with `backend` (None: `default_backend`) at `precision` on `device`.

    `options` are the backend's own extras on top of `engine_options` (trt: cuda_graph=True;
    openvino: hint="throughput"). A precision the backend does not run (bf16 but on openvino)
    is a UserError.
    """
    path = Path(path)
    backend = backend or default_backend(path)
    entry = get_backend(backend)
    check_backend(get_precision(precision), backend)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if entry.opens == "folder" and not path.is_dir():
        hint = ("export it and build them (rvos-edge build DIR --backend trt)" if backend == "trt" else
                "export it first (rvos-edge export CKPT --out DIR) or use --backend torch")
        raise UserError(f"{path} is a file, the {backend} backend opens an artifact folder: {hint}")
    if entry.opens == "checkpoint" and not path.is_file():
        raise UserError(f"{path} is a folder, the {backend} backend opens a .safetensors checkpoint: use --backend ort")
    module, _, function = entry.loader.partition(":")
    loader = getattr(importlib.import_module(module), function)
    return loader(path, precision, **engine_options(backend, device, threads), **options)
