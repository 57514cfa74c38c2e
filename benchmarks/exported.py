"""The artifact folders the benchmarks run on, exported once under a work folder and kept between runs."""
from __future__ import annotations

from pathlib import Path


def exported(work: Path, model: str) -> Path:
    """work/model, the artifact folder of `model` (demo: the shipped checkpoint; any other preset: random
    weights, seed 0, the same cost), exported on the first call and reused after (needs the torch extra then)."""
    folder = work / model
    if not (folder / "manifest.json").is_file():
        from rvos_edge.demo import DEMO_CHECKPOINT
        from rvos_edge.export.onnx_export import export_artifacts
        checkpoint = DEMO_CHECKPOINT
        work.mkdir(parents=True, exist_ok=True)
        if model != "demo":
            from rvos_edge.model import build_model, save_checkpoint
            checkpoint = work / f"{model}.safetensors"
            save_checkpoint(build_model(model, seed=0), checkpoint)
        export_artifacts(checkpoint, folder, progress=False)
    return folder
