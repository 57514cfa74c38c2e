"""Videos/s and frames/s of `rvos-edge batch` on a local Ray (1 and 2 actors) against a sequential loop.

    nice .venv/bin/python benchmarks/batch_ray.py                           # demo, 8 videos x 60 frames, 3 rounds
    nice .venv/bin/python benchmarks/batch_ray.py --rounds 5                # what the README reports
    nice .venv/bin/python benchmarks/batch_ray.py --model tiny --videos 4 --rounds 1

The same list of VIDEOS synthetic mp4v videos (FRAMES frames each, 320x240, one expression)
is segmented three ways, each in a fresh process, the three interleaved in every round and
their order rotated from one round to the next (round 1: sequential, 1 actor, 2 actors; round
2: 1 actor, 2 actors, sequential; ...) so load from elsewhere on the machine hits them alike:
- sequential: one process opens the engines once (ONNX Runtime with one thread per usable
  core, as batch's single actor gets) and calls `segment_video`, what each batch actor runs
  per video, on every video in turn, into an OUT laid out as batch's (the same writer, the
  same outputs, no Ray);
- batch, 1 actor (all cores) and 2 actors (the cores split between them): `rvos-edge batch`
  into an empty OUT.
Each figure is the median over the rounds (the markdown adds the range of frames/s).
"processing" counts from the moment the work starts: for the loop, opening the engines; for
batch, building the dataset (starting the actors, each opening its engines, included) after
Ray has started; "command" is the whole process (Python start, imports, Ray's start and
stop). Every run's masks are checked byte for byte against the first run's.

Writes benchmarks/results/<machine>/batch_ray.json and .md (machine as in
rvos_edge.bench.machine_name, e.g. intel-xeon-2c), with the CPU flags that matter to the kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from exported import exported

REPO = Path(__file__).resolve().parents[1]
SIZE = (320, 240)
EXPRESSION = "the yellow square"
MODES = ("sequential", "batch-1-actor", "batch-2-actors")


def write_list(work: Path, videos: int, frames: int) -> Path:
    """work/videos.jsonl over `videos` synthetic videos (made once)."""
    from rvos_edge.bench import write_synthetic_video
    folder = work / f"videos_{videos}x{frames}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(videos):
        path = folder / f"v{i:02d}.mp4"
        if not path.is_file():
            write_synthetic_video(path, frames, SIZE)
        rows.append(json.dumps({"video": str(path), "expr": [EXPRESSION]}))
    listing = work / f"videos_{videos}x{frames}.jsonl"
    listing.write_text("\n".join(rows) + "\n")
    return listing


def sequential(listing: str, artifacts: str, out: str) -> None:
    """The baseline (run in its own process): engines opened once, `segment_video` over the list; prints JSON."""
    t0 = time.perf_counter()
    from rvos_edge.engines import open_engines
    from rvos_edge.serving.batch import segment_video
    from rvos_edge.serving.batch_jobs import STAGING_NAME, parse_jobs
    jobs = parse_jobs(listing)
    (Path(out) / STAGING_NAME).mkdir(parents=True)
    t1 = time.perf_counter()
    engines = open_engines(artifacts, "ort", threads=len(os.sched_getaffinity(0)))
    records = [segment_video(engines, job.task(), Path(out), None) for job in jobs]
    process_s = time.perf_counter() - t1
    if any(r["status"] != "done" for r in records):
        raise SystemExit(f"batch_ray: the sequential loop failed: {records}")
    print(json.dumps({"process_s": process_s, "import_s": t1 - t0, "frames": sum(r["frames"] for r in records)}))


def run_mode(mode: str, listing: Path, artifacts: Path, out: Path) -> dict[str, Any]:
    """One fresh-process run of `mode` into an empty `out`: seconds processing and for the whole command, frames."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if mode == "sequential":
        command = [sys.executable, __file__, "--sequential", str(listing), str(artifacts), str(out)]
    else:
        actors = "1" if mode == "batch-1-actor" else "2"
        command = [sys.executable, "-m", "rvos_edge.cli", "batch", str(listing), "--artifacts", str(artifacts),
                   "--out", str(out), "--actors", actors, "--json", str(out.parent / f"{out.name}.json")]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    command_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batch_ray: {mode} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if mode == "sequential":
        r = json.loads(proc.stdout)
        return {"process_s": r["process_s"], "command_s": command_s, "frames": r["frames"], "ray_start_s": None}
    s = json.loads((out.parent / f"{out.name}.json").read_text())
    if s["failed"] or s["skipped"]:
        raise SystemExit(f"batch_ray: {mode}: {s}")
    return {"process_s": s["process_s"], "command_s": command_s, "frames": s["frames"], "ray_start_s": s["ray_start_s"],
            "threads_per_actor": s["threads_per_actor"]}


def masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/masks/**/*.png"))}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# rvos-edge batch on a local Ray against a sequential loop, on {result['machine']}", "",
             f"{env['cpu_model']}, {env['usable_cores']} cores (load average {env['load_average_1m']:.1f} at the "
             f"start, {result['load_average_1m_end']:.1f} at the end: the machine is shared); CPU flags: "
             + ", ".join(result["cpu_flags"]) + ".",
             f"{result['videos']} mp4v videos of {result['frames_per_video']} frames ({SIZE[0]}x{SIZE[1]}), one "
             f"expression each, the {result['model']} model, ONNX Runtime {env['libraries'].get('onnxruntime')} on "
             f"the CPU, Ray {result['ray_version']}; median of {result['rounds']} interleaved rounds, each run a "
             "fresh process. Masks identical to the sequential loop's in every run: "
             f"{'yes' if result['masks_identical'] else 'NO'}.", "",
             "| mode | ORT threads | videos/s (processing) | frames/s (processing) | frames/s range | processing s | "
             "Ray start s | command s | videos/s (command) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in result["modes"].items():
        ray_start = "-" if r["ray_start_s"] is None else f"{r['ray_start_s']:.1f}"
        rates = [run["frames"] / run["process_s"] for run in r["runs"]]
        lines.append(f"| {mode} | {r['threads']} | {r['videos_per_s']:.2f} | {r['frames_per_s']:.1f} | "
                     f"{min(rates):.1f}-{max(rates):.1f} | {r['process_s']:.1f} | {ray_start} | {r['command_s']:.1f} | "
                     f"{r['videos_per_s_command']:.2f} |")
    lines += ["", "processing: from opening the engines (the loop) or building the dataset, actors' start "
              "included (batch) to the last video written; command: the whole process, Python start and "
              "Ray's start and stop included.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="demo (the shipped checkpoint) or a preset with random weights")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "batch_ray")
    parser.add_argument("--sequential", nargs=3, metavar=("LIST", "ARTIFACTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sequential:
        sequential(*args.sequential)
        return
    import ray

    from rvos_edge.bench import cpu_flags, environment, machine_name, save_results
    args.work.mkdir(parents=True, exist_ok=True)
    artifacts = exported(args.work, args.model)
    listing = write_list(args.work, args.videos, args.frames)
    env = environment()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    reference: dict[str, bytes] | None = None
    identical = True
    for round_ in range(args.rounds):
        for mode in MODES[round_ % len(MODES):] + MODES[:round_ % len(MODES)]:
            out = args.work / f"out_{mode}"
            r = run_mode(mode, listing, artifacts, out)
            runs[mode].append(r)
            produced = masks(out)
            reference = reference or produced
            identical &= produced == reference and len(produced) == args.videos * args.frames
            print(f"round {round_ + 1}: {mode}: {r['frames'] / r['process_s']:.1f} frames/s processing, "
                  f"{r['command_s']:.1f} s command", flush=True)
    modes = {}
    for mode, rs in runs.items():
        process_s = statistics.median(r["process_s"] for r in rs)
        command_s = statistics.median(r["command_s"] for r in rs)
        ray_start = [r["ray_start_s"] for r in rs if r["ray_start_s"] is not None]
        frames = rs[0]["frames"]
        modes[mode] = {"threads": rs[0].get("threads_per_actor") or len(os.sched_getaffinity(0)),
                       "process_s": process_s, "command_s": command_s,
                       "ray_start_s": statistics.median(ray_start) if ray_start else None,
                       "videos_per_s": args.videos / process_s, "frames_per_s": frames / process_s,
                       "videos_per_s_command": args.videos / command_s, "runs": rs}
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "model": args.model,
              "videos": args.videos, "frames_per_video": args.frames, "video_size": list(SIZE),
              "rounds": args.rounds, "ray_version": ray.__version__, "masks_identical": identical, "modes": modes,
              "load_average_1m_end": os.getloadavg()[0]}
    save_results(REPO / "benchmarks" / "results" / result["machine"], "batch_ray", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
