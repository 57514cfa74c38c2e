"""Peak memory and speed of artifact folders side by side: the same model exported two ways (issue 21).

    .venv/bin/python benchmarks/memory.py --folder before=build/old/vit-b16 --folder after=build/new/vit-b16
    .venv/bin/python benchmarks/memory.py --folder before=A --folder after=B --backend openvino --clips 8

Each folder is one setting, run with --backend/--precision (default ORT fp32), --threads each
(default 2), batch 1, the model's clip length. Memory: the peak RSS (VmHWM) of a fresh process
that opens the folder's engines (text encoder and clip graph) and runs 10 clips, --rss-runs
times per folder (default 3), alternating folders; median and range. Speed: the clip graph
alone, all folders opened in one process and run interleaved (clip 1 of every folder, clip 2
of every folder, ...) after 2 warm-up clips each; median, p90 and p99 ms per clip, ratios
against the first folder. Accuracy against the first folder: max abs error and mask IoU of the
mask logits over 2 chained clips of a synthetic video (as benchmarks/openvino_vs_ort.py).

Writes benchmarks/results/<machine>/memory_<backend>_<precision>.json and .md (or --name) (machine as in
rvos_edge.bench.machine_name), with the CPU flags of /proc/cpuinfo.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from openvino_vs_ort import RSS_CLIPS, accuracy_vs, clip_of, interleaved_ms, peak_rss_mb

from rvos_edge.bench import cpu_flags, environment, latency_stats, machine_name, save_results
from rvos_edge.engines import open_engines

REPO = Path(__file__).resolve().parents[1]


def measure(folders: dict[str, Path], backend: str, precision: str, clips: int, threads: int,
            rss_runs: int) -> list[dict[str, Any]]:
    """One row per folder: speed, accuracy against the first folder, peak RSS (see the module docstring)."""
    rss: dict[str, list[float]] = {label: [] for label in folders}
    for _ in range(rss_runs):
        for label, folder in folders.items():
            rss[label].append(peak_rss_mb(folder, backend, precision, threads))
    engines = {label: open_engines(folder, backend, precision, threads=threads) for label, folder in folders.items()}
    first = next(iter(engines.values()))
    feeds = clip_of(first)
    ms = interleaved_ms(engines, feeds, clips)
    clip_len = first.resolve_clip_len(None)
    accuracy = accuracy_vs(first, engines)
    rows = []
    for label, e in engines.items():
        stats = latency_stats(ms[label])
        rows.append({"label": label, "folder": str(folders[label]), "preset": e.config.name,
                     "latency_ms": stats, "latencies_ms": ms[label], "fps": 1000.0 * clip_len / stats["p50"],
                     "max_abs_vs_first": accuracy[label][0], "mask_iou_vs_first": accuracy[label][1],
                     "peak_rss_mb": statistics.median(rss[label]), "peak_rss_runs_mb": rss[label]})
    for r in rows:
        r["speed_vs_first"] = r["fps"] / rows[0]["fps"]
        r["peak_rss_vs_first"] = r["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return rows


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# Peak memory and speed of artifact folders on {result['machine']}", "",
             f"{env['cpu_model']}, {env['usable_cores']} cores (load average {env['load_average_1m']:.1f} at the "
             f"start); CPU flags: {', '.join(result['cpu_flags'])}. {result['backend']} {result['precision']}, "
             f"{result['threads']} threads, batch 1 (benchmarks/memory.py). Peak RSS: median of "
             f"{result['rss_runs']} fresh processes per folder, each opening the engines and running {RSS_CLIPS} "
             f"clips; speed: the clip graph alone, {result['clips']} clips per folder interleaved in one process; "
             "accuracy: mask logits against the first folder over 2 chained clips of a synthetic video.", "",
             "| folder | preset | peak RSS MB (runs) | x first | FPS | x first | p50 ms | p90 ms | p99 ms "
             "| max abs err | mask IoU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lat = r["latency_ms"]
        runs = ", ".join(f"{v:.0f}" for v in r["peak_rss_runs_mb"])
        lines.append(f"| {r['label']} | {r['preset']} | {r['peak_rss_mb']:.0f} ({runs}) | {r['peak_rss_vs_first']:.2f} "
                     f"| {r['fps']:.2f} | {r['speed_vs_first']:.3f} | {lat['p50']:.1f} | {lat['p90']:.1f} | "
                     f"{lat['p99']:.1f} | {r['max_abs_vs_first']:.1e} | {r['mask_iou_vs_first']:.4f} |")
    lines += [""] + [f"- {r['label']}: `{r['folder']}`" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def labelled(text: str) -> tuple[str, Path]:
    """LABEL=DIR -> (LABEL, DIR)."""
    label, sep, folder = text.partition("=")
    if not sep or not label or not Path(folder, "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR with DIR an artifact folder, got {text!r}")
    return label, Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=labelled, action="append", required=True, metavar="LABEL=DIR",
                        help="an artifact folder to measure (repeat; the first is the reference)")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--clips", type=int, default=8, help="timed clips per folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rss-runs", type=int, default=3, help="fresh processes per folder for the peak RSS")
    parser.add_argument("--name", help="results file name (default memory_BACKEND_PRECISION)")
    args = parser.parse_args()
    folders = dict(args.folder)
    env = environment()
    rows = measure(folders, args.backend, args.precision, args.clips, args.threads, args.rss_runs)
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "backend": args.backend,
              "precision": args.precision, "threads": args.threads, "clips": args.clips, "rss_runs": args.rss_runs,
              "rows": rows}
    name = args.name or f"memory_{args.backend}_{args.precision}"
    save_results(REPO / "benchmarks" / "results" / result["machine"], name, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
