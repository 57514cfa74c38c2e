"""``rvos-edge check DIR``: every backend and precision of an artifact folder against ONNX Runtime FP32.

    rows = check_folder("artifacts/")
    print(format_table(rows)); print(summary_line("artifacts/", rows))
    exit_code = 1 if failed(rows) else 0

Inputs: `clips` consecutive clips of a synthetic referring video
(`rvos_edge.data.synthetic.generate(seed, 0)`, frames resized as the runtime does)
and its expression, the same for every engine set. Each engine set chains its own
history from clip to clip, as the `Segmenter` does (so the TensorRT backend's
device-side history is exercised). The reference is ONNX Runtime FP32 on the CPU.

Over all clips' mask_logits a row reports the max abs error and the mask IoU of
``logits > 0`` (1.0 when both masks are empty), judged by the precision's
tolerance (rvos_edge.artifacts.precision): FP32 max abs error <= 1e-3; FP16 mask IoU >= 0.98; INT8
mask IoU >= 0.95; BF16 mask IoU >= 0.97. Rows: ort at every precision the folder has graphs
for (but the reference), trt at every precision it has engines for, openvino at fp32, the
folder's variants and bf16. A row is "ok", "off" (outside its tolerance), "error" (the
engines cannot be opened or run: e.g. built by another TensorRT, for another GPU) or
"skipped" (TensorRT or OpenVINO is not installed, the CPU has no BF16).
Importing this module does not import torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.artifacts.precision import PRECISIONS, Tolerance, precision_names
from rvos_edge.artifacts.tensorrt import engine_entries
from rvos_edge.engines import Engines, backend_names, open_engines
from rvos_edge.engines.base import clip_feeds, empty_history
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.runtime.pipeline import prepare_frame


@dataclass(frozen=True)
class CheckRow:
    """One backend and precision against the reference (max_abs / iou None unless it ran)."""

    backend: str
    precision: str
    status: str
    max_abs: float | None = None
    iou: float | None = None
    note: str = ""

    @property
    def tolerance(self) -> Tolerance:
        return PRECISIONS[self.precision].tolerance


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def check_inputs(config: Any, clip_len: int, clips: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(tokens [1, 77], `clips` frame batches [1, Tc, S, S, 3]) from synthetic video `seed` (looped if short)."""
    from rvos_edge.data.synthetic import generate
    from rvos_edge.tokenizer import tokenize_for_prompts

    sample = generate(seed, 0)
    idx = np.arange(clips * clip_len) % sample.num_frames
    frames = np.stack([prepare_frame(np.ascontiguousarray(sample.frames[i][..., ::-1]), config.image_size)
                       for i in idx])                                      # synthetic frames are RGB
    tokens = tokenize_for_prompts([sample.expression], config.language_prompts, config.context_length).tokens
    return tokens, [frames[i * clip_len:(i + 1) * clip_len][None] for i in range(clips)]


def run_clips(engines: Engines, tokens: np.ndarray, clips: list[np.ndarray]) -> np.ndarray:
    """mask_logits [clips, Tc, m, m] (float32) of consecutive clips, each getting the previous one's history."""
    text = engines.text.run({"tokens": tokens})
    history = empty_history(engines.config)
    logits = []
    for i, frames in enumerate(clips):
        out = engines.clip.run(clip_feeds(frames, text, history, has_history=i > 0))
        history = out["history_out"]
        logits.append(np.asarray(out["mask_logits"], np.float32)[0])
    return np.stack(logits)


def _candidates(manifest: Any, backends: Sequence[str] | None,
                precisions: Sequence[str] | None) -> list[tuple[str, str]]:
    """(backend, precision) pairs to compare: the folder's other ORT precisions, its TensorRT engines and its
    graphs in OpenVINO (bf16 included)."""
    for name, chosen, known in (("backend", backends, backend_names("folder")), ("precision", precisions, precision_names())):
        unknown = [c for c in chosen or () if c not in known]
        if unknown:
            raise UserError(f"unknown {name} {unknown[0]!r} (choose from {', '.join(known)})")
    found = [("ort", p) for p in manifest.precisions if p != "fp32"]
    found += [("trt", p) for p in engine_entries(manifest)]
    found += [("openvino", p) for p in (*manifest.precisions, "bf16")]
    return [(b, p) for b, p in found if (not backends or b in backends) and (not precisions or p in precisions)]


def blocker(backend: str, precision: str) -> str | None:
    """Why this machine cannot run `backend` at `precision` (its runtime is not installed, the CPU has no
    BF16), None when nothing stands in the way."""
    try:
        if backend == "trt":
            from rvos_edge.engines.trt import runner as trt_backend
            trt_backend.import_tensorrt()
        elif backend == "openvino":
            from rvos_edge.engines.openvino import runner as openvino_backend
            core = openvino_backend.shared_core()
            if precision == "bf16":
                openvino_backend.check_bf16(core)
    except UserError as e:
        return str(e)
    return None


def check_folder(folder: str | os.PathLike[str], backends: Sequence[str] | None = None,
                 precisions: Sequence[str] | None = None, clips: int = 2, seed: int = 0, device: str = "cuda",
                 threads: int | None = None) -> list[CheckRow]:
    """Compare every (backend, precision) of `folder` (or those asked for) with ONNX Runtime FP32.

    device: the GPU of the trt rows; threads: ONNX Runtime's CPU threads.
    """
    if clips < 1:
        raise UserError(f"--clips must be >= 1, got {clips}")
    manifest = load_manifest(folder)
    candidates = _candidates(manifest, backends, precisions)
    if not candidates:
        raise UserError(f"nothing to check in {folder}: it has no other precision or TensorRT engines "
                        f"{'matching the request ' if backends or precisions else ''}to compare with ONNX Runtime "
                        "FP32 (rvos-edge build DIR --backend ort|trt --precision P)")
    reference = open_engines(folder, "ort", "fp32", threads=threads)
    clip_len = reference.resolve_clip_len(None)
    tokens, frames = check_inputs(reference.config, clip_len, clips, seed)
    expected = run_clips(reference, tokens, frames)
    rows = []
    for backend, precision in candidates:
        why = blocker(backend, precision)
        if why is not None:
            rows.append(CheckRow(backend, precision, "skipped", note=why))
            continue
        try:
            got = run_clips(open_engines(folder, backend, precision, device=device if backend == "trt" else None,
                                         threads=threads), tokens, frames)
        except (UserError, RuntimeError) as e:
            rows.append(CheckRow(backend, precision, "error", note=str(e).splitlines()[0]))
            continue
        rows.append(compare(backend, precision, got, expected))
    return rows


def compare(backend: str, precision: str, got: np.ndarray, expected: np.ndarray) -> CheckRow:
    """The row of `got` against the reference's `expected` mask_logits: max abs error and mask IoU of
    ``logits > 0``, "ok" when within the precision's tolerance, else "off" (the note says what is outside)."""
    max_abs = float(np.abs(got - expected).max())
    iou = mask_iou(got > 0, expected > 0)
    bad = PRECISIONS[precision].tolerance.failures(max_abs, iou)
    return CheckRow(backend, precision, "off" if bad else "ok", max_abs, iou, "; ".join(bad))


def failed(rows: Sequence[CheckRow]) -> list[CheckRow]:
    """The rows that make the check fail: off or error."""
    return [r for r in rows if r.status in ("off", "error")]


def format_table(rows: Sequence[CheckRow]) -> str:
    """A fixed-width table: backend, precision, max abs error, mask IoU, tolerance, result."""
    header = ("backend", "precision", "max abs err", "mask IoU", "tolerance", "result")
    lines = [header] + [(r.backend, r.precision, "-" if r.max_abs is None else f"{r.max_abs:.2e}",
                         "-" if r.iou is None else f"{r.iou:.4f}", str(r.tolerance),
                         r.status + (f": {r.note}" if r.note else "")) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def summary_line(folder: str | os.PathLike[str], rows: Sequence[CheckRow]) -> str:
    """The command's last line."""
    ran = [r for r in rows if r.status in ("ok", "off")]
    text = f"check {folder}: {sum(r.status == 'ok' for r in ran)} of {len(ran)} within tolerance of ONNX Runtime FP32"
    bad = failed(rows)
    if bad:
        text += "; failing: " + ", ".join(f"{r.backend} {r.precision} ({r.note})" for r in bad)
    skipped = [r for r in rows if r.status == "skipped"]
    if skipped:
        text += f"; skipped {len(skipped)} ({skipped[0].note})"
    return text


def write_json(path: str | os.PathLike[str], folder: str | os.PathLike[str], rows: Sequence[CheckRow]) -> None:
    """The rows, with their tolerances, as JSON (atomically)."""
    data = {"folder": str(folder), "reference": {"backend": "ort", "precision": "fp32"},
            "rows": [{**asdict(r), "tolerance": asdict(r.tolerance)} for r in rows], "failed": bool(failed(rows))}
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
