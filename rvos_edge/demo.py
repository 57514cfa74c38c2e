"""`rvos-edge demo` (what `make demo` runs): the shipped demo checkpoint end to end on the CPU.

1. Export the checkpoint (default: DEMO_CHECKPOINT, the `demo` preset trained on
   the synthetic world) to OUT/artifacts, as `rvos-edge export` does. A folder
   that already holds an export of the same checkpoint file (its sha256 is kept
   in OUT/artifacts/source.sha256) is reused. The checkpoint is loaded before
   anything is created, so a bad one leaves no OUT behind.
2. Write the first `videos` held-out synthetic videos (seed HELDOUT_SEED, never
   used in training; one of each kind with the default 4) as PNG frames under
   OUT/frames/<name>, and run each with ONNX Runtime on the CPU exactly as
   `rvos-edge run OUT/artifacts --frames ... --expr ... --out OUT/<name>` does:
   masks under OUT/<name>/masks, OUT/<name>/overlay.mp4, OUT/<name>/summary.json
   (each OUT/<name> is replaced as a whole, so the frames live apart).
3. Score the masks written on disk against the ground truth (J&F, DAVIS
   definitions) and print one line per video and a summary line with J&F and
   frames per second; OUT/demo.json holds the same numbers.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rvos_edge.data import HELDOUT_SEED, Sample, generate
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes, make_folder, sha256_file

DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "demo.safetensors.gz"
SOURCE_FILE = "source.sha256"


def _artifacts(checkpoint: Path, out: Path) -> tuple[Path, float]:
    """OUT/artifacts exported from `checkpoint` (reused when already done); the seconds it took."""
    from rvos_edge.artifacts.manifest import MANIFEST_NAME
    from rvos_edge.export.onnx_export import export_artifacts

    folder, digest = out / "artifacts", sha256_file(checkpoint)
    stamp = folder / SOURCE_FILE
    if (folder / MANIFEST_NAME).is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return folder, 0.0
    t0 = time.perf_counter()
    export_artifacts(checkpoint, folder)
    atomic_write_bytes(stamp, (digest + "\n").encode())
    return folder, time.perf_counter() - t0


def _write_frames(sample: Sample, folder: Path) -> None:
    make_folder(folder)
    for i, frame in enumerate(sample.frames):
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise UserError(f"cannot encode frame {i} of {sample.name} as PNG")
        atomic_write_bytes(folder / f"{i:05d}.png", png.tobytes())


def _read_masks(folder: Path, count: int) -> np.ndarray:
    """The masks `run` wrote, bool [T, H, W]."""
    masks = [cv2.imread(str(folder / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE) for i in range(count)]
    if any(m is None for m in masks):
        raise UserError(f"{folder} lacks masks for some frames")
    return np.stack(masks) > 127


def run_demo(checkpoint: str | Path | None = None, out: str | Path = "demo_out", videos: int = 4,
             threads: int | None = None) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns what OUT/demo.json holds."""
    from rvos_edge.eval.evaluate import score_video
    from rvos_edge.runtime.run import run_command

    checkpoint = Path(checkpoint) if checkpoint is not None else DEMO_CHECKPOINT
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    if videos < 1:
        raise UserError(f"--videos must be >= 1, got {videos}")
    out = Path(out)
    artifacts, export_s = _artifacts(checkpoint, out)
    rows, frames, wall, engine_s = [], 0, 0.0, 0.0
    for index in range(videos):
        sample = generate(HELDOUT_SEED, index)
        name = sample.name.replace("/", "_")
        folder, frames_folder = out / name, out / "frames" / name
        _write_frames(sample, frames_folder)
        run_command(str(artifacts), expressions=[sample.expression], frames=str(frames_folder), out=str(folder),
                    backend="ort", threads=threads)
        summary = json.loads((folder / "summary.json").read_text())
        j, f = score_video(sample.masks, _read_masks(folder / "masks", sample.num_frames))
        rows.append({"video": folder.name, "kind": sample.kind, "expression": sample.expression,
                     "frames": sample.num_frames, "J": j, "F": f, "J&F": (j + f) / 2,
                     "fps_end_to_end": summary["fps"]["end_to_end"]})
        print(f"  {folder.name}  {sample.kind:<12} J&F {(j + f) / 2:.3f}  \"{sample.expression}\"")
        frames += sample.num_frames
        wall += sample.num_frames / summary["fps"]["end_to_end"]
        engine_s += sample.num_frames / summary["fps"]["engine"]
    result = {"checkpoint": str(checkpoint), "artifacts": str(artifacts), "export_seconds": export_s,
              "backend": "ort", "device": "cpu", "threads": threads, "data": f"synthetic:{HELDOUT_SEED}:{videos}",
              "J&F": float(np.mean([r["J&F"] for r in rows])), "frames": frames,
              "fps": {"end_to_end": frames / wall, "engine": frames / engine_s}, "videos": rows}
    atomic_write_bytes(out / "demo.json", json.dumps(result, indent=1).encode())
    return result
