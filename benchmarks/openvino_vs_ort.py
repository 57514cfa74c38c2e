"""The clip graph on the CPU: ONNX Runtime against OpenVINO, FP32, BF16 and INT8 (issue 21).

    .venv/bin/python benchmarks/openvino_vs_ort.py                       # demo, 40 timed clips per setting
    .venv/bin/python benchmarks/openvino_vs_ort.py --models demo vit-b16 --clips 40 8

Exports (kept under --work between runs): demo from the shipped checkpoint
(rvos_edge/assets/demo.safetensors.gz), other presets from random weights (seed 0); each
gets an INT8 Q/DQ variant (`calibrate(DIR, "synthetic:1:8", samples=8)`, as
`rvos-edge calib DIR --data synthetic:1:8 --samples 8`) unless --no-int8.

Settings: ORT fp32 (the reference), ORT int8, OpenVINO fp32, bf16 (where the CPU has
BF16) and int8 (the same Q/DQ graphs), --threads each (default 2), batch 1, the model's
clip length. Speed: the clip graph alone, one clip at a time, all settings opened in one
process and run interleaved (clip 1 of every setting, clip 2 of every setting, ...) after
2 warm-up clips each, so load from elsewhere on the machine hits them alike; median, p90 and
p99 ms per clip, FPS from the median, ratios against ORT fp32. Accuracy against ORT fp32: max
abs error and mask IoU of the mask logits over 2 chained clips of a synthetic video
(`rvos_edge.check`'s inputs: video 0, whose target is small, so the IoU is a strict one). Start-up: OpenVINO's open with its compiled-model cache
emptied, then again from the cache. Memory: the peak RSS (VmHWM) of a fresh process per
setting that opens the folder and runs 10 clips (Linux).

Writes benchmarks/results/<machine>/openvino_vs_ort.json and .md (machine as in
rvos_edge.bench.machine_name), with the CPU flags of /proc/cpuinfo.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Hashable, TypeVar

import numpy as np
from exported import exported

from rvos_edge.bench import EXPRESSION, cpu_flags, environment, latency_stats, machine_name, save_results
from rvos_edge.check import check_inputs, mask_iou, run_clips
from rvos_edge.engines import Engines, open_engines
from rvos_edge.engines.base import clip_feeds, empty_history
from rvos_edge.engines.openvino.runner import CACHE_FOLDER, cpu_capabilities, shared_core
from rvos_edge.tokenizer import tokenize_for_prompts

REPO = Path(__file__).resolve().parents[1]
SETTINGS = (("ort", "fp32"), ("ort", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))
WARMUP = 2
RSS_CLIPS = 10
K = TypeVar("K", bound=Hashable)


def export(work: Path, model: str, int8: bool) -> Path:
    """The artifact folder of `model` under `work` (exported once), with an INT8 variant when `int8`."""
    from rvos_edge.artifacts.manifest import load_manifest
    from rvos_edge.calib.int8 import calibrate

    folder = exported(work, model)
    if int8 and "int8" not in load_manifest(folder).precisions:
        print(calibrate(folder, "synthetic:1:8", samples=8, progress=False).summary(), flush=True)
    return folder


def settings_for(folder: Path) -> list[tuple[str, str]]:
    """The settings this folder and CPU can run (int8 needs the variant, bf16 the CPU's BF16)."""
    from rvos_edge.artifacts.manifest import load_manifest

    precisions = load_manifest(folder).precisions
    has_bf16 = "BF16" in cpu_capabilities(shared_core())
    return [(b, p) for b, p in SETTINGS if (p != "int8" or "int8" in precisions) and (p != "bf16" or has_bf16)]


def clip_of(engines: Engines) -> dict[str, np.ndarray]:
    """One clip's feeds: random frames (seeded), EXPRESSION's text features, an empty history."""
    cfg = engines.config
    tokens = tokenize_for_prompts([EXPRESSION], cfg.language_prompts, cfg.context_length).tokens
    text = engines.text.run({"tokens": tokens})
    frames = np.random.default_rng(0).integers(0, 256, (1, engines.resolve_clip_len(None), cfg.image_size,
                                                        cfg.image_size, 3), dtype=np.uint8)
    return clip_feeds(frames, text, empty_history(cfg), has_history=False)


def interleaved_ms(engines: dict[K, Engines], feeds: dict[str, np.ndarray], clips: int) -> dict[K, list[float]]:
    """ms per clip of each engine's clip graph on `feeds`: WARMUP clips each, then `clips` rounds of one clip
    per engine in turn, so load from elsewhere on the machine hits them alike."""
    timers = {key: e.clip.timer(feeds) for key, e in engines.items()}
    for timed in timers.values():
        for _ in range(WARMUP):
            timed()
    ms: dict[K, list[float]] = {key: [] for key in engines}
    for _ in range(clips):
        for key, timed in timers.items():
            ms[key].append(1000.0 * timed())
    return ms


def accuracy_vs(reference: Engines, engines: dict[K, Engines]) -> dict[K, tuple[float, float]]:
    """(max abs error, mask IoU) of each engine's mask logits against `reference`'s, on `check`'s inputs
    (2 chained clips of a synthetic video, rvos_edge.check)."""
    tokens, chained = check_inputs(reference.config, reference.resolve_clip_len(None), 2, seed=0)
    expected = run_clips(reference, tokens, chained)
    out = {}
    for key, e in engines.items():
        got = run_clips(e, tokens, chained)
        out[key] = float(np.abs(got - expected).max()), mask_iou(got > 0, expected > 0)
    return out


def startup(folder: Path, threads: int) -> dict[str, float]:
    """Seconds to open the fp32 graphs in OpenVINO with an empty compiled-model cache, then from it."""
    shutil.rmtree(folder / CACHE_FOLDER, ignore_errors=True)
    seconds = {}
    for name in ("cold_s", "cached_s"):
        t0 = time.perf_counter()
        open_engines(folder, "openvino", "fp32", threads=threads)
        seconds[name] = time.perf_counter() - t0
    return seconds


def peak_rss_mb(folder: Path, backend: str, precision: str, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that opens `folder` and runs RSS_CLIPS clips."""
    p = subprocess.run([sys.executable, __file__, "--rss-child", str(folder), backend, precision, str(threads)],
                       capture_output=True, text=True, check=True)
    return float(p.stdout.split()[-1])


def rss_child(folder: str, backend: str, precision: str, threads: str) -> None:
    """Open `folder`, run RSS_CLIPS clips, print the peak RSS in MB: VmHWM, since ru_maxrss keeps the
    parent's peak across fork and exec (Linux)."""
    engines = open_engines(folder, backend, precision, threads=int(threads))
    feeds = clip_of(engines)
    for _ in range(RSS_CLIPS):
        engines.clip.run(feeds)
    status = Path("/proc/self/status").read_text()
    print(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024)


def measure(folder: Path, clips: int, threads: int) -> dict[str, Any]:
    """Speed, accuracy, start-up and memory of every setting on `folder` (see the module docstring)."""
    settings = settings_for(folder)
    start = startup(folder, threads)
    engines = {s: open_engines(folder, *s, threads=threads) for s in settings}
    feeds = clip_of(engines[("ort", "fp32")])
    ms = interleaved_ms(engines, feeds, clips)
    reference = engines[("ort", "fp32")]
    clip_len = reference.resolve_clip_len(None)
    accuracy = accuracy_vs(reference, engines)
    rows = []
    for s in engines:
        stats = latency_stats(ms[s])
        rows.append({"backend": s[0], "precision": s[1], "latency_ms": stats, "latencies_ms": ms[s],
                     "fps": 1000.0 * clip_len / stats["p50"], "max_abs_vs_ort_fp32": accuracy[s][0],
                     "mask_iou_vs_ort_fp32": accuracy[s][1],
                     "peak_rss_mb": peak_rss_mb(folder, *s, threads)})
    base = rows[0]["fps"]
    for r in rows:
        r["speedup_vs_ort_fp32"] = r["fps"] / base
    return {"folder": str(folder), "preset": reference.config.name, "clip_len": clip_len, "clips": clips,
            "openvino_startup": start, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    libs = env["libraries"]
    lines = [f"# The clip graph on the CPU: ONNX Runtime against OpenVINO on {result['machine']}", "",
             f"{env['cpu_model']}, {env['usable_cores']} cores (load average {env['load_average_1m']:.1f} at the "
             f"start); CPU flags: {', '.join(result['cpu_flags'])}; OpenVINO's CPU capabilities: "
             f"{', '.join(result['openvino_capabilities'])}. ONNX Runtime {libs.get('onnxruntime')}, OpenVINO "
             f"{libs.get('openvino')}, {result['threads']} threads each, batch 1; the clip graph alone, settings "
             "interleaved in one process (benchmarks/openvino_vs_ort.py). Accuracy: against ORT fp32 over 2 chained "
             f"clips of a synthetic video; peak RSS: a fresh process opening the folder and running {RSS_CLIPS} clips.",
             ""]
    for m in result["models"].values():
        start = m["openvino_startup"]
        lines += [f"## {m['preset']} (Tc={m['clip_len']}, {m['clips']} timed clips per setting)", "",
                  "| backend | precision | FPS | x ORT fp32 | p50 ms | p90 ms | p99 ms | max abs err | mask IoU | peak RSS MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["rows"]:
            lat = r["latency_ms"]
            lines.append(f"| {r['backend']} | {r['precision']} | {r['fps']:.1f} | {r['speedup_vs_ort_fp32']:.2f} | "
                         f"{lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {r['max_abs_vs_ort_fp32']:.1e} | "
                         f"{r['mask_iou_vs_ort_fp32']:.4f} | {r['peak_rss_mb']:.0f} |")
        lines += ["", f"OpenVINO start-up (fp32, both graphs): {start['cold_s']:.2f} s compiling, "
                      f"{start['cached_s']:.2f} s from its cache ({CACHE_FOLDER}/).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo"])
    parser.add_argument("--clips", nargs="+", type=int, default=[40], help="timed clips per setting, per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true", help="do not calibrate an INT8 variant")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "openvino_vs_ort")
    parser.add_argument("--rss-child", nargs=4, metavar=("DIR", "BACKEND", "PRECISION", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    clips = args.clips + [args.clips[-1]] * (len(args.models) - len(args.clips))
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    models = {}
    for model, n in zip(args.models, clips):
        models[model] = measure(export(args.work, model, not args.no_int8), n, args.threads)
        print(f"{model}: " + ", ".join(f"{r['backend']} {r['precision']} {r['fps']:.1f} FPS"
                                       for r in models[model]["rows"]), flush=True)
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(),
              "openvino_capabilities": list(cpu_capabilities(shared_core())), "threads": args.threads,
              "models": models}
    save_results(REPO / "benchmarks" / "results" / result["machine"], "openvino_vs_ort", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
