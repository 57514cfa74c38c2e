"""INT8 on the CPU: onnxruntime.quantization's Q/DQ graphs against NNCF's (`calib --quantizer nncf`, issue 21).

    nice .venv/bin/python benchmarks/nncf_vs_ort.py                                  # demo, 40 timed clips
    nice .venv/bin/python benchmarks/nncf_vs_ort.py --models demo vit-b16 --clips 40 8
    nice .venv/bin/python benchmarks/nncf_vs_ort.py --samples 64                     # demo, "demo-64clips"

Per model, the export (benchmarks/exported.py: demo from the shipped checkpoint, other presets
from random weights, seed 0; kept under --work) is copied to <model>-<N>-ort and <model>-<N>-nncf,
and each copy is calibrated as `rvos-edge calib DIR --data synthetic:1:N --samples N --quantizer Q`
(N = --samples, default 8: the calibration of benchmarks/cpu_backends.py; same data, seed, method
and exclusions), timed (the time includes the statistics both take for the TensorRT caches).

Settings: ORT fp32 (the reference) and, for each quantizer, ORT int8 and OpenVINO int8 (the same
Q/DQ graph read by both), --threads each, batch 1, the model's clip length, the clip graph alone.
Speed: all settings opened in one process and run interleaved (clip 1 of every setting, clip 2 of
every setting, ...) after 2 warm-up clips each, so load from elsewhere hits them alike; median and
p90 ms per clip, FPS from the median, ratio against ORT fp32. Accuracy against ORT fp32: `check`'s
rule (mask logits of 2 chained clips of synthetic video 0: max abs error, mask IoU, the int8
tolerance), and for demo --videos held-out synthetic videos through the Segmenter (mean mask IoU
against ORT fp32's masks, J&F against the ground truth; `rvos_edge.calib.report.score`).

Writes benchmarks/results/<machine>/nncf_vs_ort.json and .md (machine as in
rvos_edge.bench.machine_name), with the CPU flags of /proc/cpuinfo; models measured by an earlier
run and not by this one are kept (results are named by the model, "<model>-<N>clips" for N != 8).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from exported import exported
from openvino_vs_ort import accuracy_vs, clip_of, interleaved_ms

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.artifacts.precision import PRECISIONS
from rvos_edge.bench import cpu_flags, environment, latency_stats, machine_name, save_results
from rvos_edge.engines import Engines, open_engines

REPO = Path(__file__).resolve().parents[1]
QUANTIZERS = ("ort", "nncf")
SAMPLES = 8


def calibrated(work: Path, model: str, quantizer: str, samples: int) -> tuple[Path, float | None]:
    """work/<model>-<samples>-<quantizer>: the export with the int8 variant of `quantizer` from `samples` clips of
    synthetic:1:<samples>, and the seconds calibration took (None when an earlier run left the folder calibrated)."""
    from rvos_edge.calib.int8 import calibrate

    folder = work / f"{model}-{samples}-{quantizer}"
    if folder.is_dir() and "int8" in load_manifest(folder).precisions:
        return folder, None
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(exported(work, model), folder)
    t0 = time.perf_counter()
    print(calibrate(folder, f"synthetic:1:{samples}", samples=samples, quantizer=quantizer, progress=False).summary(),
          flush=True)
    return folder, time.perf_counter() - t0


def settings(folders: dict[str, Path]) -> dict[tuple[str, str], Path]:
    """(quantizer, backend) -> folder: ("fp32", "ort") is the reference, then ORT and OpenVINO int8 per quantizer."""
    out = {("fp32", "ort"): folders["ort"]}
    for q, folder in folders.items():
        out.update({(q, "ort"): folder, (q, "openvino"): folder})
    return out


def heldout(engines: dict[tuple[str, str], Engines], videos: int) -> dict[tuple[str, str], dict[str, float]]:
    """Each setting on `videos` held-out synthetic videos: mask IoU against the reference's masks, J&F."""
    from rvos_edge.calib.report import score
    from rvos_edge.data import HELDOUT_SEED, generate
    from rvos_edge.eval.evaluate import segment
    from rvos_edge.runtime.segmenter import Segmenter

    samples = [generate(HELDOUT_SEED, i) for i in range(videos)]
    masks = {s: [segment(Segmenter(e), v) for v in samples] for s, e in engines.items()}
    return {s: {"videos": videos, **score(m, masks["fp32", "ort"], samples)} for s, m in masks.items()}


def measure(work: Path, model: str, samples: int, clips: int, threads: int, videos: int) -> dict[str, Any]:
    """Calibration, speed and accuracy of every setting of `model` (see the module docstring)."""
    folders, seconds = {}, {}
    for q in QUANTIZERS:
        folders[q], seconds[q] = calibrated(work, model, q, samples)
    engines = {s: open_engines(folder, s[1], "fp32" if s[0] == "fp32" else "int8", threads=threads)
               for s, folder in settings(folders).items()}
    reference = engines["fp32", "ort"]
    feeds = clip_of(reference)
    ms = interleaved_ms(engines, feeds, clips)
    clip_len = reference.resolve_clip_len(None)
    accuracy = accuracy_vs(reference, engines)
    held = heldout(engines, videos) if model == "demo" and videos else {}
    rows = []
    for s in engines:
        max_abs, iou = accuracy[s]
        stats = latency_stats(ms[s])
        precision = "fp32" if s[0] == "fp32" else "int8"
        rows.append({"quantizer": None if s[0] == "fp32" else s[0], "backend": s[1], "precision": precision,
                     "latency_ms": stats, "latencies_ms": ms[s], "fps": 1000.0 * clip_len / stats["p50"],
                     "max_abs_vs_ort_fp32": max_abs, "mask_iou_vs_ort_fp32": iou,
                     "check_failures": PRECISIONS[precision].tolerance.failures(max_abs, iou),
                     **({"heldout": held[s]} if s in held else {})})
    for r in rows:
        r["speedup_vs_ort_fp32"] = r["fps"] / rows[0]["fps"]
    return {"preset": model, "clip_len": clip_len, "clips": clips, "calibration_data": f"synthetic:1:{samples}",
            "samples": samples,
            "calibration": {q: load_manifest(f).calibration for q, f in folders.items()},
            "calibration_s": seconds, "rows": rows}


def _seconds(seconds: float | None) -> str:
    return "calibrated by an earlier run" if seconds is None else f"calibration {seconds:.0f} s"


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    libs = env["libraries"]
    lines = [f"# INT8 on the CPU: onnxruntime.quantization against NNCF on {result['machine']}", "",
             f"{env['cpu_model']}, {env['usable_cores']} cores (shared with other work: the ratios, measured "
             f"interleaved, are what counts); CPU flags: {', '.join(result['cpu_flags'])}. ONNX Runtime "
             f"{libs.get('onnxruntime')}, OpenVINO {libs.get('openvino')}, {result['threads']} threads each, batch 1, "
             "the clip graph alone, settings interleaved in one process (benchmarks/nncf_vs_ort.py). Each quantizer "
             "writes one Q/DQ graph per model, read by both ONNX Runtime and OpenVINO. Accuracy: against ORT fp32 "
             "over 2 chained clips of synthetic video 0 (`check`'s rule, int8 tolerance mask IoU >= 0.95).", ""]
    for m in result["models"].values():
        tools = ", ".join(f"{q}: {c['tool']} ({_seconds(m['calibration_s'][q])})" for q, c in m["calibration"].items())
        lines += [f"## {m['preset']}, {m['samples']}-clip calibration (Tc={m['clip_len']}, {m['clips']} timed clips per setting, load average "
                  f"{m['environment']['load_average_1m']:.1f} at the start, {m['timestamp']})", "",
                  f"Calibration `{m['calibration_data']}`, {m['samples']} clips, the default exclusions; {tools}.", "",
                  "| quantizer | backend | precision | FPS | x ORT fp32 | p50 ms | p90 ms | max abs err | mask IoU "
                  "| check |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in m["rows"]:
            lat = r["latency_ms"]
            lines.append(f"| {r['quantizer'] or '-'} | {r['backend']} | {r['precision']} | {r['fps']:.2f} | "
                         f"{r['speedup_vs_ort_fp32']:.2f} | {lat['p50']:.1f} | {lat['p90']:.1f} | "
                         f"{r['max_abs_vs_ort_fp32']:.1e} | {r['mask_iou_vs_ort_fp32']:.4f} | "
                         f"{'; '.join(r['check_failures']) or 'ok'} |")
        held = [r for r in m["rows"] if "heldout" in r]
        if held:
            lines += ["", f"Held-out synthetic videos ({held[0]['heldout']['videos']}, seed 20240917, whole videos "
                      "through the Segmenter): mask IoU against ORT fp32's masks, J&F against the ground truth.", "",
                      "| quantizer | backend | mask IoU vs fp32 | J&F | J&F - ORT fp32 (points) |",
                      "|---|---|---:|---:|---:|"]
            for r in held:
                h = r["heldout"]
                lines.append(f"| {r['quantizer'] or '-'} | {r['backend']} | {h['mask_iou_vs_fp32']:.4f} | "
                             f"{h['J&F']:.4f} | {100 * (h['J&F'] - held[0]['heldout']['J&F']):+.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo"])
    parser.add_argument("--clips", nargs="+", type=int, default=[40], help="timed clips per setting, per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--videos", type=int, default=4, help="held-out synthetic videos scored (demo)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="calibration clips (default 8)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "nncf_vs_ort")
    args = parser.parse_args()
    clips = args.clips + [args.clips[-1]] * (len(args.models) - len(args.clips))
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    models = {}
    for model, n in zip(args.models, clips):
        model_env = environment()
        key = model if args.samples == SAMPLES else f"{model}-{args.samples}clips"
        models[key] = {**measure(args.work, model, args.samples, n, args.threads, args.videos),
                       "environment": model_env, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        print(f"{key}: " + ", ".join(f"{r['quantizer'] or 'fp32'} {r['backend']} {r['fps']:.2f} FPS IoU "
                                     f"{r['mask_iou_vs_ort_fp32']:.3f}" for r in models[key]["rows"]), flush=True)
    folder = REPO / "benchmarks" / "results" / machine_name(env)
    earlier = folder / "nncf_vs_ort.json"
    if earlier.is_file():                                    # models measured by an earlier run are kept
        models = {**json.loads(earlier.read_text())["models"], **models}
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "threads": args.threads,
              "models": models}
    save_results(folder, "nncf_vs_ort", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
