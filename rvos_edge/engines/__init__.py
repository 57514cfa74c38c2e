"""Backends: load a model into `Engines` (a text runner and a clip runner) for the pipeline.

    engines = open_engines("artifacts/", backend="ort", precision="fp32", threads=4)
    out = engines.text.run({"tokens": tokens})          # numpy in, numpy out

| backend | opens                                  | options                                   |
|---------|----------------------------------------|-------------------------------------------|
| ort     | an artifact folder (manifest checked)  | providers=("cpu",), threads, device_id    |
| torch   | a ``.safetensors`` checkpoint          | device="cpu", threads                     |
| trt     | an artifact folder's TensorRT engines  | device="cuda" (or "cuda:N"), cuda_graph   |

Each backend module is imported only when used: opening "ort" never imports torch,
opening "trt" imports tensorrt and cuda-python (`pip install 'rvos-edge[trt]'`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rvos_edge.errors import UserError
from rvos_edge.engines.base import Engines, Runner

BACKENDS = ("ort", "torch", "trt")

__all__ = ["BACKENDS", "Engines", "Runner", "default_backend", "open_engines"]


def default_backend(path: str | Path) -> str:
    """The backend for `path` when none is named: torch for a checkpoint file, ort for a folder."""
    return "torch" if Path(path).is_file() else "ort"


def open_engines(path: str | Path, backend: str = "ort", precision: str = "fp32", **opts: Any) -> Engines:
    """Open `path` with `backend` at `precision`; `opts` go to the backend's loader (see the table above)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if backend == "trt":
        if not path.is_dir():
            raise UserError(f"{path} is a file, the trt backend opens an artifact folder with TensorRT engines: "
                            "export it and build them (rvos-edge build DIR --backend trt)")
        from rvos_edge.engines.trt.runner import open_trt

        opts.pop("threads", None)       # CPU threads do not apply to TensorRT engines
        opts.pop("providers", None)     # onnxruntime's execution providers
        return open_trt(path, precision, **opts)
    if backend == "ort":
        if not path.is_dir():
            raise UserError(f"{path} is a file, the ort backend opens an artifact folder: export it first "
                            "(rvos-edge export CKPT --out DIR) or use --backend torch")
        from rvos_edge.engines.ort.runner import open_ort

        return open_ort(path, precision, **opts)
    if not path.is_file():
        raise UserError(f"{path} is a folder, the torch backend opens a .safetensors checkpoint: use --backend ort")
    from rvos_edge.engines.torch.runner import open_torch

    return open_torch(path, precision, **opts)
