"""A bounded load test of `rvos-edge serve`: S streams x F frames at once, against one local Segmenter.

    .venv/bin/python benchmarks/serve_load.py                       # tiny, 8 streams x 300 frames
    .venv/bin/python benchmarks/serve_load.py --streams 4 --frames 60 --artifacts art/

A random-weight tiny checkpoint is exported (unless --artifacts names a folder), and one
local Segmenter (ONNX Runtime, the server's thread count) segments the S videos one after
another: its frames per second are the baseline, its results the expectation. Then a
`rvos-edge serve` child on 127.0.0.1 gets all S streams at once (rvos_edge.serving.load:
one thread and RemoteSegmenter per stream, a clip's frames per call, so each call's
latency is one clip's round trip), and every frame that comes back is checked: lost,
duplicated or misrouted (a mask or score other than the local Segmenter's for that
stream and index). Videos: random uint8 frames of --size, a different seed per stream.

Writes benchmarks/results/<machine>/serve_load.json and .md (machine as in
rvos_edge.bench.machine_name, e.g. intel-xeon-2c), naming the CPU flags that matter to the kernels.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rvos_edge.bench import cpu_flags, environment, machine_name, percentile, save_results
from rvos_edge.engines import open_engines
from rvos_edge.runtime.segmenter import Segmenter, SegmentResult
from rvos_edge.serving.load import check, drive, server_process

REPO = Path(__file__).resolve().parents[1]
EXPRESSIONS = ("the red cup", "a small dog", "the box on the left", "the person walking", "a white car",
               "the ball", "the green bottle", "a cat on the sofa")


def videos(streams: int, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Random BGR videos uint8 [frames, H, W, 3], seed = the stream's number."""
    return [np.random.default_rng(s).integers(0, 256, (frames, *size, 3), dtype=np.uint8) for s in range(streams)]


def local(art: Path, vids: list[np.ndarray], threads: int | None) -> tuple[list[list[SegmentResult]], float]:
    """One Segmenter over all videos, one after another: each video's results, and the wall seconds."""
    seg = Segmenter(open_engines(art, "ort", "fp32", threads=threads))
    out = []
    t0 = time.perf_counter()
    for s, video in enumerate(vids):
        seg.set_expression(EXPRESSIONS[s % len(EXPRESSIONS)])
        seg.reset()
        got = []
        for frame in video:
            got += seg.push(frame)
        out.append(got + seg.flush())
    return out, time.perf_counter() - t0


def export_tiny(work: Path) -> Path:
    from rvos_edge.export.onnx_export import export_artifacts
    from rvos_edge.model import build_model, save_checkpoint

    save_checkpoint(build_model("tiny", seed=0), work / "tiny.safetensors")
    export_artifacts(work / "tiny.safetensors", work / "art", progress=False)
    return work / "art"


def measure(art: Path, streams: int, frames: int, size: tuple[int, int], threads: int | None,
            max_batch: int, queue_delay_ms: float) -> dict:
    """The load run and its baseline (see the module docstring), as the JSON's fields."""
    vids = videos(streams, frames, size)
    expressions = [EXPRESSIONS[s % len(EXPRESSIONS)] for s in range(streams)]
    expected, local_s = local(art, vids, threads)
    flags = ["--max-streams", str(streams), "--max-batch", str(max_batch), "--queue-delay", str(queue_delay_ms)]
    flags += ["--threads", str(threads)] if threads else []
    with server_process(art, *flags) as server:
        clip_len = Segmenter(open_engines(art, "ort", "fp32", threads=1)).clip_len
        runs, wall_s = drive(server.url, vids, expressions, frames_per_call=clip_len)
    result = check(runs, expected)
    latencies = [1000.0 * x for r in runs for x in r.latencies_s]
    batches = [b for r in runs for b in r.batches]
    total = streams * frames
    return {
        "streams": streams, "frames_per_stream": frames, "frame_size": list(size), "clip_len": clip_len,
        "frames_per_call": clip_len, "threads": threads, "max_batch": max_batch, "queue_delay_ms": queue_delay_ms,
        "errors": [r.error for r in runs if r.error],
        "check": {"frames": result.frames, "lost": result.lost, "duplicated": result.duplicated,
                  "misrouted": result.misrouted},
        "server": {"wall_s": wall_s, "fps": total / wall_s,
                   "latency_ms": {"n": len(latencies), "p50": percentile(latencies, 50),
                                  "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
                                  "mean": statistics.fmean(latencies), "max": max(latencies)},
                   "engine_batch": {"mean": statistics.fmean(batches), "max": max(batches)}},
        "local": {"wall_s": local_s, "fps": total / local_s},
        "server_over_local": local_s / wall_s,
    }


def markdown(result: dict) -> str:
    r, s, lat = result["run"], result["run"]["server"], result["run"]["server"]["latency_ms"]
    c = r["check"]
    return "\n".join([
        f"# rvos-edge serve under load on {result['machine']}", "",
        f"{r['streams']} streams x {r['frames_per_stream']} frames ({r['frame_size'][1]}x{r['frame_size'][0]} "
        f"random BGR), all at once over gRPC on 127.0.0.1, {r['frames_per_call']} frames (one clip) per call; "
        f"the {result['model']} model (random weights), ONNX Runtime fp32 on the CPU, "
        f"{r['threads'] or 'all'} engine thread(s), max batch {r['max_batch']}, queue delay "
        f"{r['queue_delay_ms']:g} ms. Client threads, server and engine share the machine "
        f"({result['environment'].get('usable_cores')} usable cores, load average "
        f"{result['environment'].get('load_average_1m')} at the start); CPU flags: "
        + ", ".join(result["cpu_flags"]) + ".", "",
        "| | frames/s | p50 ms per clip | p99 ms per clip | mean engine batch |",
        "|---|---:|---:|---:|---:|",
        f"| `rvos-edge serve`, {r['streams']} streams | {s['fps']:.1f} | {lat['p50']:.1f} | {lat['p99']:.1f} | "
        f"{s['engine_batch']['mean']:.2f} (max {s['engine_batch']['max']}) |",
        f"| one local `Segmenter`, the videos in turn | {r['local']['fps']:.1f} | - | - | 1 |", "",
        f"Server / local throughput: {r['server_over_local']:.2f}x. Frames checked against the local "
        f"Segmenter: {c['frames']}; lost {c['lost']}, duplicated {c['duplicated']}, misrouted {c['misrouted']}."
        + (f" Stream errors: {r['errors']}." if r["errors"] else ""), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, help="artifact folder (default: a random tiny export)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--frames", type=int, default=300, help="frames per stream")
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--threads", type=int, help="ONNX Runtime threads, server and local (default: all cores)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay", type=float, default=2.0, metavar="MS")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<machine>)")
    args = p.parse_args(argv)
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        art = args.artifacts or export_tiny(Path(tmp))
        run = measure(art, args.streams, args.frames, tuple(args.size), args.threads, args.max_batch, args.queue_delay)
        model = "tiny" if args.artifacts is None else str(args.artifacts)
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "model": model, "run": run}
    folder = args.out or REPO / "benchmarks" / "results" / result["machine"]
    save_results(folder, "serve_load", result, markdown(result))
    print(markdown(result))
    return 0 if run["check"]["lost"] == run["check"]["duplicated"] == run["check"]["misrouted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
