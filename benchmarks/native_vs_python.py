"""End-to-end FPS of the native `rvos-edge-run` against `rvos-edge run` on the same video.

    make native && .venv/bin/python benchmarks/native_vs_python.py       # tiny and demo, 3 rounds
    .venv/bin/python benchmarks/native_vs_python.py --frames 120 --rounds 1 --models tiny

Both tools segment one 854x480 mp4v video (VIDEO_FRAMES synthetic frames) for one expression
with the same export, ONNX Runtime on the CPU with its default threads, each run in a fresh
process. The runs are interleaved (round 1: tiny Python, tiny native, demo Python, demo
native; round 2: ...) so load from elsewhere on the machine hits both alike; each figure is
the median over the rounds of summary.json's fps.end_to_end (decode, pipeline and writing
masks and overlay) and fps.engine. Also measured: the size of librvos_edge (shared and
static) and the time of a fresh configure and build (-j2) of the native runtime.

Writes benchmarks/results/<machine>/native_vs_python.json and .md (machine as in
rvos_edge.bench.machine_name, e.g. intel-xeon-2c), with the CPU flags of /proc/cpuinfo
that matter to the kernels (AVX2, AVX-512, VNNI, AMX ...).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from exported import exported
from rvos_edge.bench import cpu_flags, environment, machine_name, save_results

REPO = Path(__file__).resolve().parents[1]
VIDEO_SIZE = (854, 480)
VIDEO_FRAMES = 300
EXPRESSION = "the red circle moving right"
def write_video(path: Path, frames: int) -> None:
    """Moving shapes on a gradient, mp4v (what `rvos-edge run` writes and a camera pipeline might store)."""
    width, height = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 96)], -1).astype(np.uint8)
    for t in range(frames):
        frame = background.copy()
        cv2.circle(frame, (80 + t * 600 // frames, 160), 70, (0, 0, 230), -1)
        cv2.rectangle(frame, (560, 40 + t // 2), (680, 160 + t // 2), (220, 40, 20), -1)
        writer.write(frame)
    writer.release()


def exports(work: Path, models: list[str]) -> dict[str, Path]:
    """An artifact folder per model under `work` (kept between runs)."""
    return {model: exported(work, model) for model in models}


def run_once(command: list[str], out: Path) -> dict[str, float]:
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"native_vs_python: {command[0]} failed: {proc.stderr.strip()}")
    fps = json.loads((out / "summary.json").read_text())["fps"]
    return {"end_to_end": fps["end_to_end"], "engine": fps["engine"]}


def build_seconds() -> float:
    """Seconds for a fresh configure and build of the native runtime (-j2), dependencies already there."""
    with tempfile.TemporaryDirectory() as tmp:
        deps = REPO / "build" / "native" / "deps" / "onnxruntime.cmake"
        t0 = time.perf_counter()
        subprocess.run(["cmake", "-S", str(REPO), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release",
                        f"-DRVOS_EDGE_ORT_CMAKE={deps}"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", tmp, "-j2"], check=True, capture_output=True)
        return time.perf_counter() - t0


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# rvos-edge-run (C++) against rvos-edge run (Python) on {result['machine']}", "",
             f"{env['cpu_model']}, {env['usable_cores']} cores (load average {env['load_average_1m']:.1f} at the start: "
             "the machine is shared); CPU flags: " + ", ".join(result["cpu_flags"]) + ".",
             f"One {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} mp4v video of {result['frames']} frames, one expression, "
             f"ONNX Runtime {env['libraries'].get('onnxruntime')} on the CPU; median of {result['rounds']} "
             "interleaved rounds, each run a fresh process.", "",
             "| model | Python end-to-end FPS | native end-to-end FPS | native / Python | Python engine FPS | native engine FPS |",
             "|---|---:|---:|---:|---:|---:|"]
    for model, r in result["models"].items():
        lines.append(f"| {model} | {r['python']['end_to_end']:.1f} | {r['native']['end_to_end']:.1f} | "
                     f"{r['ratio_end_to_end']:.2f} | {r['python']['engine']:.1f} | {r['native']['engine']:.1f} |")
    size = result["library_bytes"]
    lines += ["", f"librvos_edge.so {size['shared'] / 2**20:.2f} MiB (of which the built-in BPE vocabulary "
                  f"{size['vocabulary'] / 2**20:.2f} MiB), librvos_edge.a {size['static'] / 2**20:.2f} MiB; "
                  f"a fresh configure and build (-j2, tests included) {result['build_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--frames", type=int, default=VIDEO_FRAMES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "native_vs_python")
    parser.add_argument("--native", type=Path, default=REPO / "build" / "native" / "native" / "rvos-edge-run")
    args = parser.parse_args()
    if not args.native.is_file():
        raise SystemExit(f"native_vs_python: {args.native} is missing: run `make native` first")
    args.work.mkdir(parents=True, exist_ok=True)
    video = args.work / f"video_{args.frames}.mp4"
    if not video.is_file():
        write_video(video, args.frames)
    folders = exports(args.work, args.models)
    python_tool = Path(sys.executable).parent / "rvos-edge"

    runs: dict[str, dict[str, list[dict[str, float]]]] = {m: {"python": [], "native": []} for m in args.models}
    for round_ in range(args.rounds):
        for model in args.models:
            for impl, tool in (("python", [str(python_tool), "run"]), ("native", [str(args.native)])):
                command = [*tool, str(folders[model]), "--video", str(video), "--expr", EXPRESSION]
                fps = run_once(command, args.work / f"out_{model}_{impl}")
                runs[model][impl].append(fps)
                print(f"round {round_ + 1}: {model} {impl}: {fps['end_to_end']:.1f} fps end-to-end", flush=True)

    models = {}
    for model, by_impl in runs.items():
        median = {impl: {k: statistics.median(r[k] for r in rs) for k in ("end_to_end", "engine")}
                  for impl, rs in by_impl.items()}
        models[model] = {**median, "ratio_end_to_end": median["native"]["end_to_end"] / median["python"]["end_to_end"],
                         "runs": by_impl}
    lib_dir = args.native.parent
    vocab = REPO / "rvos_edge" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    env = environment()
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "frames": args.frames,
              "video_size": list(VIDEO_SIZE), "rounds": args.rounds, "expression": EXPRESSION, "models": models,
              "library_bytes": {"shared": (lib_dir / "librvos_edge.so").resolve().stat().st_size,
                                "static": (lib_dir / "librvos_edge.a").stat().st_size,
                                "vocabulary": vocab.stat().st_size},
              "build_seconds": build_seconds()}
    save_results(REPO / "benchmarks" / "results" / result["machine"], "native_vs_python", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
