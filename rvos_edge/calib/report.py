"""Accuracy of the precision variants, a per-group INT8 sensitivity sweep, and INT8 vs FP32 clip-graph speed.

    report = accuracy_report("artifacts/", "synthetic:20240917:200", calibration=calibrate(...), limit=50)
    write_report(report, "benchmarks/results/precision_demo.json")   # and precision_demo.md beside it

Everything runs through the runtime's `Segmenter` on ONNX Runtime's CPU provider,
one expression over one whole video at a time (as `rvos-edge eval` does):
- per precision of the folder (fp32, then fp16 / int8 when built): the mean mask
  IoU against the FP32 masks (per frame `region_similarity`, 1 when both are
  empty; mean over frames, then over expressions) and, when every sample has
  ground truth, J&F (DAVIS definition, `rvos_edge.eval`) and its change from FP32
  in points (x100). For fp16 it names the op types ORT's CPU provider runs in
  FP32 (it has no FP16 kernel for them), so the CPU numbers are FP16 storage with
  FP32 arithmetic for those ops; the CUDA provider or TensorRT run them in FP16;
- the sweep (needs the `CalibrationResult`): the quantizable nodes of one group
  at a time (`rvos_edge.calib.graph.GROUPS`, exclusions still applied) are
  quantized with onnxruntime.quantization from the calibration's statistics, the
  rest stays FP32 (whichever quantizer wrote the int8 variant: the sweep ranks the
  groups by sensitivity, the rows above measure the variant itself). A group is recommended for exclusion when its mask IoU against
  FP32 is below `min_iou` or it costs more than `max_drop` J&F points; the
  recommendation is given as ``--exclude`` patterns;
- speed (`time_clip_graphs`): the clip graph of each precision on the same input,
  runs interleaved in one process (so load on the machine hits all alike);
  median milliseconds per clip and the FP32 / precision ratio.
Targets of the project (DESIGN: FP16 within 0.2 J&F points of FP32, INT8 within 1.0)
are marked met or not when J&F is available.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from rvos_edge.artifacts.manifest import CLIP_MODEL, GRAPH_NAMES, TEXT_ENCODER, load_manifest
from rvos_edge.artifacts.precision import PRECISIONS
from rvos_edge.bench import cpu_model
from rvos_edge.calib.artifacts import engines_from_models
from rvos_edge.calib.data import calibration_data
from rvos_edge.calib.fp16 import ort_cpu_fp32_ops
from rvos_edge.calib.graph import GROUPS, node_groups
from rvos_edge.calib.int8 import CalibrationResult, quantize_ort
from rvos_edge.data import Sample, open_dataset
from rvos_edge.engines import Engines, open_engines
from rvos_edge.errors import UserError
from rvos_edge.eval.evaluate import score_video, segment
from rvos_edge.eval.metrics import region_similarity
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.runtime.segmenter import Segmenter


def _masks(engines: Engines, samples: Sequence[Sample], clip_len: int | None, desc: str, progress: bool) -> list[np.ndarray]:
    segmenter = Segmenter(engines, clip_len)
    return [segment(segmenter, s) for s in tqdm(samples, desc=desc, unit="video", disable=not progress, leave=False)]


def score(masks: Sequence[np.ndarray], reference: Sequence[np.ndarray], samples: Sequence[Sample]) -> dict[str, float]:
    """Mean mask IoU of `masks` against `reference` masks; J, F and J&F against ground truth when all samples have it."""
    out = {"mask_iou_vs_fp32": float(np.mean([np.mean([region_similarity(r, m) for r, m in zip(ref, pred)])
                                              for ref, pred in zip(reference, masks)]))}
    if all(s.masks is not None for s in samples):
        j, f = np.mean([score_video(s.masks, m) for s, m in zip(samples, masks)], axis=0)
        out.update({"J&F": float((j + f) / 2), "J": float(j), "F": float(f)})
    return out


def time_clip_graphs(directory: str | os.PathLike[str], precisions: Sequence[str], feeds: dict[str, np.ndarray],
                     repeats: int = 10, threads: int | None = None) -> dict[str, Any]:
    """Median ms per clip-graph run of each precision on `feeds`, interleaved; "ratio": fp32 ms / precision ms."""
    runners = {p: open_engines(directory, "ort", p, threads=threads).clip for p in precisions}
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for p, runner in runners.items():
        runner.run(feeds)                                       # warm-up: first-run allocations
    for _ in range(repeats):
        for p, runner in runners.items():
            t0 = time.perf_counter()
            runner.run(feeds)
            times[p].append(1000 * (time.perf_counter() - t0))
    ms = {p: float(np.median(t)) for p, t in times.items()}
    return {"ms": ms, "repeats": repeats, "threads": threads or os.cpu_count(),
            "ratio": {p: ms["fp32"] / ms[p] for p in precisions if "fp32" in ms}}


def _sweep(directory: Path, calibration: CalibrationResult, samples: Sequence[Sample], reference: list[np.ndarray],
           fp32_jf: float | None, clip_len: int | None, min_iou: float, max_drop: float, threads: int | None,
           progress: bool) -> list[dict[str, Any]]:
    manifest = calibration.manifest
    folded = {g: calibration.graphs[g].folded for g in GRAPH_NAMES}
    groups = {g: node_groups(folded[g], g) for g in GRAPH_NAMES}
    rows = []
    for group in GROUPS:
        graph = TEXT_ENCODER if group == "text_encoder" else CLIP_MODEL
        nodes = [n for n in calibration.graphs[graph].quantized if groups[graph][n] == group]
        row: dict[str, Any] = {"group": group, "nodes": len(nodes)}
        if nodes:
            models = dict(folded)
            models[graph] = quantize_ort(folded[graph], calibration.amax[graph], nodes)
            engines = engines_from_models(manifest, models[TEXT_ENCODER], models[CLIP_MODEL], "int8",
                                          f"{directory} (int8 {group} only)", threads)
            row.update(score(_masks(engines, samples, clip_len, f"sweep {group}", progress), reference, samples))
            if fp32_jf is not None:
                row["delta_J&F_points"] = 100 * (row["J&F"] - fp32_jf)
            row["recommend_exclude"] = bool(row["mask_iou_vs_fp32"] < min_iou
                                            or row.get("delta_J&F_points", 0.0) < -max_drop)
        rows.append(row)
    return rows


def accuracy_report(directory: str | os.PathLike[str], data: str, limit: int | None = None, split: str | None = None,
                    calibration: CalibrationResult | None = None, clip_len: int | None = None, min_iou: float = 0.98,
                    max_drop: float = 0.25, speed_repeats: int = 10, threads: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """The report of the module docstring as a JSON-ready dict (sweep only when `calibration` is given)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    dataset = open_dataset(data, split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 1:
        raise UserError(f"the report needs at least one expression, got limit {limit}")
    samples = [dataset[i] for i in range(count)]
    fp32 = open_engines(directory, "ort", "fp32", threads=threads)
    reference = _masks(fp32, samples, clip_len, "fp32", progress)
    results: dict[str, dict[str, Any]] = {}
    for precision in manifest.precisions:
        engines = fp32 if precision == "fp32" else open_engines(directory, "ort", precision, threads=threads)
        masks = reference if precision == "fp32" else _masks(engines, samples, clip_len, precision, progress)
        results[precision] = score(masks, reference, samples)
    fp32_jf = results["fp32"].get("J&F")
    for precision, r in results.items():
        if fp32_jf is not None and precision != "fp32":
            r["delta_J&F_points"] = 100 * (r["J&F"] - fp32_jf)
            target = PRECISIONS[precision].max_jf_drop
            if target is not None:
                r["target_max_drop_points"] = target
                r["target_met"] = bool(r["delta_J&F_points"] >= -target)
    if "fp16" in results:
        clip16 = onnx.load(str(directory / manifest.graph_files("fp16")[CLIP_MODEL]))
        results["fp16"]["ort_cpu_fp32_ops"] = ort_cpu_fp32_ops(clip16)
    speed_feeds = calibration_data(fp32, samples[:1], samples=1, clip_len=clip_len, progress=False).clip[0]
    report: dict[str, Any] = {
        "model": str(directory), "preset": manifest.config.name, "data": data, "split": split,
        "expressions": count, "frames": int(sum(s.num_frames for s in samples)),
        "clip_len": fp32.resolve_clip_len(clip_len),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "onnxruntime": ort.__version__, "provider": "CPUExecutionProvider", "threads": threads},
        "calibration": manifest.calibration, "precisions": results,
        "speed_clip_graph": time_clip_graphs(directory, manifest.precisions, speed_feeds, speed_repeats, threads),
    }
    if calibration is not None:
        rows = _sweep(directory, calibration, samples, reference, fp32_jf, clip_len, min_iou, max_drop, threads, progress)
        report["sweep"] = {"min_iou": min_iou, "max_drop_points": max_drop, "groups": rows,
                           "recommended_exclude": [("text_encoder/*" if r["group"] == "text_encoder"
                                                    else f"clip_model/{r['group']}/*")
                                                   for r in rows if r.get("recommend_exclude")]}
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (with the optional free-text "note" of the report under the title)."""
    m = report["machine"]
    lines = [f"# Precision report: {report['preset']} ({report['model']})", "",
             f"Data `{report['data']}`: {report['expressions']} expressions, {report['frames']} frames, clip length "
             f"{report['clip_len']}. ONNX Runtime {m['onnxruntime']} {m['provider']} on {m['cpu']} "
             f"({m['cores']} cores).", ""]
    if report.get("note"):
        lines += [f"Note: {report['note']}", ""]
    if report.get("calibration"):
        c = report["calibration"]
        lines += [f"INT8: {c['tool']}, {c['method']} calibration on `{c['data']}` ({c['samples']} clips, seed "
                  f"{c['seed']}), excluded: {', '.join(f'`{p}`' for p in c['exclude']) or 'nothing'}.", ""]
    lines += ["| precision | mask IoU vs FP32 | J&F | ΔJ&F (points) | target | clip graph ms | speed-up vs FP32 |",
              "|---|---|---|---|---|---|---|"]
    speed = report["speed_clip_graph"]
    for p, r in report["precisions"].items():
        jf = f"{100 * r['J&F']:.2f}" if "J&F" in r else "-"
        delta = f"{r['delta_J&F_points']:+.2f}" if "delta_J&F_points" in r else "-"
        target = (f"≤ {r['target_max_drop_points']} {'met' if r['target_met'] else 'MISSED'}"
                  if "target_met" in r else "-")
        lines.append(f"| {p} | {r['mask_iou_vs_fp32']:.4f} | {jf} | {delta} | {target} | {speed['ms'][p]:.1f} | "
                     f"{speed['ratio'].get(p, 1.0):.2f}x |")
    if "fp16" in report["precisions"]:
        ops = report["precisions"]["fp16"].get("ort_cpu_fp32_ops", [])
        lines += ["", f"ORT's CPU provider has no FP16 kernel for {', '.join(ops) or 'none of the ops'}: on the CPU "
                  "these run in FP32 on FP16-stored tensors."]
    if "sweep" in report:
        s = report["sweep"]
        lines += ["", f"## INT8 sensitivity (one group quantized at a time; exclude when mask IoU < {s['min_iou']} "
                  f"or ΔJ&F < -{s['max_drop_points']} points)", "",
                  "| group | quantized nodes | mask IoU vs FP32 | ΔJ&F (points) | exclude? |", "|---|---|---|---|---|"]
        for r in s["groups"]:
            if not r["nodes"]:
                lines.append(f"| {r['group']} | 0 | - | - | - |")
                continue
            delta = f"{r['delta_J&F_points']:+.2f}" if "delta_J&F_points" in r else "-"
            lines.append(f"| {r['group']} | {r['nodes']} | {r['mask_iou_vs_fp32']:.4f} | {delta} | "
                         f"{'yes' if r['recommend_exclude'] else 'no'} |")
        keep = (report.get("calibration") or {}).get("exclude", [])
        lines += ["", ("Recommended: `rvos-edge calib ... --exclude " + " ".join(f"'{p}'" for p in keep + s["recommended_exclude"])
                       + "`") if s["recommended_exclude"] else "Recommended: no exclusions beyond the calibration's."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the JSON to `path` and the markdown beside it (same name, .md); returns both paths."""
    path = Path(path)
    if path.suffix != ".json":
        raise UserError(f"the report path must end in .json (the markdown goes beside it), got {path}")
    md = path.with_suffix(".md")
    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode())
    atomic_write_bytes(md, markdown(report).encode())
    return path, md
