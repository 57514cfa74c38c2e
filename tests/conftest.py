"""Shared fixtures: a tiny model built once per session, and inputs for it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rvos_edge.tokenizer import tokenize_for_prompts


@pytest.fixture(scope="session")
def tiny_model():
    from rvos_edge.model import build_model
    return build_model("tiny", seed=0).eval()


def make_frames(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 frames [B, Tc, S, S, 3]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, size, size, 3), generator=g, dtype=torch.uint8)


def make_tokens(texts: list[str], prompts: int) -> torch.Tensor:
    return torch.from_numpy(tokenize_for_prompts(texts, prompts).tokens)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny checkpoint (seed 0) exported once per session. Never written to: each test
    module takes its own copy (export_tiny), so six modules share one export instead of running six."""
    from rvos_edge.export.onnx_export import export_artifacts
    from rvos_edge.model import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("tiny-export")
    save_checkpoint(build_model("tiny", seed=0), root / "tiny.safetensors")
    export_artifacts(root / "tiny.safetensors", root / "art", progress=False)
    return root / "art"


def export_tiny(root: Path, exported: Path) -> Path:
    """root/"art": a copy of `exported` (the tiny_export fixture), its own folder: callers add variants to it."""
    return Path(shutil.copytree(exported, root / "art"))
