"""The VLP-RVOS model in PyTorch (DESIGN.md section 2).

    from rvos_edge.model import build_model, load_checkpoint, save_checkpoint, VLPRVOS

Attributes are imported lazily so that `rvos_edge.model.tokenizer` (used by the
torch-free runtime) can be imported without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VLPRVOS": "rvos_edge.model.vlprvos",
    "TextFeatures": "rvos_edge.model.text",
    "build_model": "rvos_edge.model.checkpoint",
    "save_checkpoint": "rvos_edge.model.checkpoint",
    "load_checkpoint": "rvos_edge.model.checkpoint",
    "read_checkpoint_config": "rvos_edge.model.checkpoint",
    "load_openai_clip": "rvos_edge.model.clip",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rvos_edge.model' has no attribute {name!r}")
