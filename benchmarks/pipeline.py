"""The pipeline around the engine: end-to-end FPS / engine FPS, before and after, interleaved.

    PYTHONPATH=. .venv/bin/python benchmarks/pipeline.py --before /path/to/main   # 5 rounds, ~20 min on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/pipeline.py --before ../main --rounds 1 --frames 60 --models tiny

"Before" is another checkout of rvos-edge (main's code), "after" this one; each measurement
is a fresh process with PYTHONPATH set to the checkout measured (`--measure`, below), so the
package holds no old code path. The processes alternate (round 1: demo 854x480 before,
after, demo 1920x1080 before, after, ..., the same at 1 ORT thread; round 2: ...), so load
from elsewhere on the machine hits both alike.

One measurement, as `rvos-edge bench` measures at batch 1 (ONNX Runtime, fp32, CPU):
- engine: 3 warm-up clips, then clips of random frames timed one by one, at least
  ENGINE_FRAMES frames and ENGINE_SECONDS, once before and once after the end-to-end run
  (so a change of load during the process hits both); engine FPS = frames / their seconds;
- end to end: a synthetic mp4v video (rvos_edge.bench.write_synthetic_video) decoded on the
  prefetch thread of rvos_edge.runtime.video and pushed through a Segmenter; one warm-up
  clip, then the timed clips; end-to-end FPS = frames / the seconds of the timed clips
  (the wait for each frame and its push). A checkout whose Segmenter has `prepare` (after)
  prepares each frame on the prefetch thread, as `rvos-edge run` does, and pushes the
  `PreparedFrame`; one without (before) pushes the decoded frame, as `rvos-edge bench` did;
- the stages: seconds per frame of the wait for the next frame, resize (on the prefetch
  thread after, on the main thread before), engine and upsample (main thread);
- CPU: the process's CPU seconds (all threads: ORT's, decode, resize, ...) per frame, engine
  only and end to end. On a shared machine wall-clock FPS follow other jobs' load; CPU time
  per frame much less, and it bounds what 2 idle cores can do: end-to-end FPS <= 2 / its
  CPU seconds per frame.
ratio = end-to-end FPS / engine FPS of the same process. Reported: the median and p90
(rvos_edge.bench.percentile) of each over the rounds, per model, video size, ORT threads
and checkout.

Writes benchmarks/results/<machine>/pipeline.json and .md (machine as in
rvos_edge.bench.machine_name, e.g. intel-xeon-2c).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from exported import exported

REPO = Path(__file__).resolve().parents[1]
ENGINE_FRAMES = 96          # at least this many frames and ENGINE_SECONDS in each engine-only block
ENGINE_SECONDS = 2.0
VIDEO_FRAMES = 300
SIZES = {"854x480": (854, 480), "1920x1080": (1920, 1080)}
# (model, video) pairs of the goals, with the end-to-end / engine ratio each should reach
GOALS = {("demo", "854x480"): 0.9, ("demo", "1920x1080"): 0.8, ("tiny", "854x480"): 0.6}


# ---------------------------------------------------------------- one measurement (a fresh process)

def engine_block(timed: Callable[[], float], clip_len: int) -> tuple[float, float, int]:
    """(seconds, CPU seconds of the process, frames) of engine-only clips until both ENGINE_FRAMES and
    ENGINE_SECONDS are reached."""
    seconds, frames, cpu = 0.0, 0, time.process_time()
    while frames < ENGINE_FRAMES or seconds < ENGINE_SECONDS:
        seconds += timed()
        frames += clip_len
    return seconds, time.process_time() - cpu, frames


def measure(artifacts: Path, video: Path, threads: int) -> dict[str, Any]:
    """Engine FPS, end-to-end FPS and the stages' seconds per frame of the checkout on sys.path."""
    from rvos_edge.bench import EXPRESSION
    from rvos_edge.engines import open_engines
    from rvos_edge.engines.base import clip_feeds, empty_history
    from rvos_edge.runtime import Segmenter
    from rvos_edge.runtime.video import open_video, prefetch
    from rvos_edge.tokenizer import tokenize_for_prompts

    engines = open_engines(artifacts, "ort", "fp32", device="cpu", threads=threads)
    cfg, tc = engines.config, engines.resolve_clip_len(None)
    tokens = tokenize_for_prompts([EXPRESSION], cfg.language_prompts, cfg.context_length).tokens
    text = engines.text.run({"tokens": tokens})
    frames = np.random.default_rng(0).integers(0, 256, (1, tc, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    timed = engines.clip.timer(clip_feeds(frames, text, empty_history(cfg), has_history=False))
    for _ in range(3):
        timed()
    engine_s, engine_cpu, engine_frames = engine_block(timed, tc)

    seg = Segmenter(engines, tc)
    seg.set_expression(EXPRESSION)
    prepared = hasattr(seg, "prepare")
    source = open_video(video)
    resize = [0.0]                                          # seconds preparing frames on the prefetch thread

    def ready(items: Iterable[tuple[str, np.ndarray]]) -> Iterator[Any]:
        for _, frame in items:
            t0 = time.perf_counter()
            item = seg.prepare(frame)
            resize[0] += time.perf_counter() - t0
            yield item

    stream = prefetch(ready(source) if prepared else (frame for _, frame in source))
    n = (source.length or VIDEO_FRAMES) // tc * tc
    wait, elapsed = 0.0, 0.0
    try:
        for i in range(n):
            if i == tc:                                     # the warm-up clip is done
                seg.timings, wait, elapsed, resize[0] = type(seg.timings)(), 0.0, 0.0, 0.0
                cpu = time.process_time()
            t0 = time.perf_counter()
            frame = next(stream)
            t1 = time.perf_counter()
            seg.push(frame)
            wait += t1 - t0
            elapsed += time.perf_counter() - t0
        cpu = time.process_time() - cpu
    finally:
        stream.close()
        source.close()
    timed_frames = n - tc
    seconds, cpu_seconds, count = engine_block(timed, tc)
    engine_fps = (engine_frames + count) / (engine_s + seconds)
    t = seg.timings
    return {"engine_fps": engine_fps, "end_to_end_fps": timed_frames / elapsed,
            "ratio": timed_frames / elapsed / engine_fps, "prepared_on_prefetch_thread": prepared,
            "cpu_ms_per_frame": {"engine": 1000 * (engine_cpu + cpu_seconds) / (engine_frames + count),
                                 "end_to_end": 1000 * cpu / timed_frames},
            "ms_per_frame": {"wait": 1000 * wait / timed_frames,
                             "resize": 1000 * (resize[0] + t.resize_s) / timed_frames,
                             "engine": 1000 * t.engine_s / timed_frames, "upsample": 1000 * t.upsample_s / timed_frames}}


# ---------------------------------------------------------------- the interleaved runs

def prepare_inputs(work: Path, models: list[str], frames: int) -> tuple[dict[str, Path], dict[str, Path]]:
    """Artifact folders per model and videos per size under `work` (kept between runs)."""
    from rvos_edge.bench import write_synthetic_video

    folders = {model: exported(work, model) for model in models}
    videos = {}
    for name, size in SIZES.items():
        videos[name] = work / f"video_{name}_{frames}.mp4"
        if not videos[name].is_file():
            write_synthetic_video(videos[name], frames, size)
    return folders, videos


def run_measurement(checkout: Path, artifacts: Path, video: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, __file__, "--measure", str(artifacts), str(video), str(threads)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline: the measurement with {checkout} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and p90 of the FPS, ratio and stages over the rounds."""
    from rvos_edge.bench import percentile

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "p90": percentile(values, 90)}

    return {"rounds": len(runs), **{k: stats([r[k] for r in runs]) for k in ("engine_fps", "end_to_end_fps", "ratio")},
            "ms_per_frame": {k: statistics.median(r["ms_per_frame"][k] for r in runs) for k in runs[0]["ms_per_frame"]},
            "cpu_ms_per_frame": {k: statistics.median(r["cpu_ms_per_frame"][k] for r in runs)
                                 for k in runs[0]["cpu_ms_per_frame"]},
            "runs": runs}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# The pipeline around the engine on {result['machine']}", "",
             f"{env['cpu_model']}, {env['usable_cores']} cores (load average {env['load_average_1m']:.1f} at the start: "
             "the machine is shared with other jobs); CPU flags: " + ", ".join(result["cpu_flags"]) + ".",
             f"ONNX Runtime {env['libraries'].get('onnxruntime')} fp32 on the CPU, batch 1, the model's clip length; "
             f"synthetic mp4v videos of {result['video_frames']} frames; {result['rounds']} interleaved rounds, each "
             "measurement a fresh process (benchmarks/pipeline.py). before: main's code (" + result["before"] + "), "
             "after: this branch. ratio = end-to-end FPS / engine FPS of the same process; median (p90 in brackets).",
             "", "| model | video | ORT threads | checkout | engine FPS | end-to-end FPS | ratio | goal | "
             "ms/frame: wait / resize / engine / upsample | CPU ms/frame: engine / end to end |",
             "|---|---|---:|---|---:|---:|---:|---:|---|---|"]
    for row in result["rows"]:
        for checkout in ("before", "after"):
            r = row[checkout]
            ms = r["ms_per_frame"]
            goal = GOALS.get((row["model"], row["video"]))
            lines.append(
                f"| {row['model']} | {row['video']} | {row['threads']} | {checkout} | "
                f"{r['engine_fps']['median']:.1f} | {r['end_to_end_fps']['median']:.1f} | "
                f"{r['ratio']['median']:.2f} ({r['ratio']['p90']:.2f}) | {'-' if goal is None else f'{goal:.1f}'} | "
                f"{ms['wait']:.1f} / {ms['resize']:.1f} / {ms['engine']:.1f} / {ms['upsample']:.1f} | "
                f"{r['cpu_ms_per_frame']['engine']:.1f} / {r['cpu_ms_per_frame']['end_to_end']:.1f} |")
    lines += ["", "wait: the main thread waiting for the next frame (decode, and after: its resize, on the "
                  "prefetch thread); resize: seconds preparing frames (main thread before, prefetch thread "
                  "after, where it overlaps the engine).", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--measure":
        print(json.dumps(measure(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code to compare with (main)")
    parser.add_argument("--after", type=Path, default=REPO, help="checkout of the new code (default: this one)")
    parser.add_argument("--models", nargs="+", default=["demo", "tiny"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="ORT intra-op threads to measure")
    parser.add_argument("--frames", type=int, default=VIDEO_FRAMES, help="frames per video")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "pipeline")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    from rvos_edge.bench import cpu_flags, environment, machine_name, save_results

    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    folders, videos = prepare_inputs(args.work, args.models, args.frames)
    configs = [(m, v, t) for t in args.threads for (m, v) in GOALS if m in args.models]
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[tuple[str, str, int], dict[str, list]] = {c: {"before": [], "after": []} for c in configs}
    for round_ in range(args.rounds):
        for model, video, threads in configs:
            for name, checkout in checkouts.items():
                r = run_measurement(checkout, folders[model], videos[video], threads)
                runs[(model, video, threads)][name].append(r)
                print(f"round {round_ + 1}: {model} {video} threads={threads} {name}: engine {r['engine_fps']:.1f} "
                      f"FPS, end to end {r['end_to_end_fps']:.1f} FPS, ratio {r['ratio']:.2f}", flush=True)
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "rounds": args.rounds,
              "video_frames": args.frames, "engine_frames": ENGINE_FRAMES, "before": str(checkouts["before"]),
              "after": str(checkouts["after"]),
              "rows": [{"model": m, "video": v, "threads": t, "goal": GOALS[(m, v)],
                        **{name: summarise(rs) for name, rs in runs[(m, v, t)].items()}} for m, v, t in configs]}
    save_results(args.results / result["machine"], "pipeline", result, markdown(result))
    print(f"pipeline: {len(configs)} settings x {args.rounds} rounds -> "
          f"{args.results / result['machine'] / 'pipeline.md'}")


if __name__ == "__main__":
    main()
