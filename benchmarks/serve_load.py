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
from typing import Callable

import numpy as np

from rvos_edge.bench import cpu_flags, environment, machine_name, percentile, save_results
from rvos_edge.engines import open_engines
from rvos_edge.runtime.segmenter import Segmenter, SegmentResult
from rvos_edge.serving.load import check, drive, server_process

REPO = Path(__file__).resolve().parents[1]
CLIP_FRAMES = 3                 # frames per call: the tiny model's clip, so each call that runs is one clip
EXPRESSIONS = ("the red cup", "a small dog", "the box on the left", "the person walking", "a white car",
               "the ball", "the green bottle", "a cat on the sofa")


def videos(streams: int, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Random BGR videos uint8 [frames, H, W, 3], seed = the stream's number."""
    return [np.random.default_rng(s).integers(0, 256, (frames, *size, 3), dtype=np.uint8) for s in range(streams)]


def local(art: Path, vids: list[np.ndarray], threads: int | None
          ) -> tuple[list[list[SegmentResult]], float, list[float]]:
    """One Segmenter over all videos, one after another: each video's results, the wall seconds and
    the latency of each push that completed a clip."""
    seg = Segmenter(open_engines(art, "ort", "fp32", threads=threads))
    out, latencies = [], []
    t0 = time.perf_counter()
    for s, video in enumerate(vids):
        seg.set_expression(EXPRESSIONS[s % len(EXPRESSIONS)])
        seg.reset()
        got = []
        for frame in video:
            t1 = time.perf_counter()
            results = seg.push(frame)
            if results:
                latencies.append(time.perf_counter() - t1)
            got += results
        out.append(got + seg.flush())
    return out, time.perf_counter() - t0, latencies


def latency_ms(seconds: list[float]) -> dict[str, float]:
    ms = [1000.0 * x for x in seconds]
    return {"n": len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "mean": statistics.fmean(ms), "max": max(ms)}


def export_tiny(work: Path) -> Path:
    from rvos_edge.export.onnx_export import export_artifacts
    from rvos_edge.model import build_model, save_checkpoint

    save_checkpoint(build_model("tiny", seed=0), work / "tiny.safetensors")
    export_artifacts(work / "tiny.safetensors", work / "art", progress=False)
    return work / "art"


def measure(art: Path, streams: int, frames: int, size: tuple[int, int], threads: int | None,
            max_batch: int, queue_delay_ms: float, rounds: int) -> dict:
    """The load runs and their baselines, interleaved (round k: the local Segmenter, then the server's
    streams; the server stays up and idle meanwhile), as the JSON's fields; figures are medians."""
    vids = videos(streams, frames, size)
    expressions = [EXPRESSIONS[s % len(EXPRESSIONS)] for s in range(streams)]
    flags = ["--max-streams", str(streams), "--max-batch", str(max_batch), "--queue-delay", str(queue_delay_ms)]
    flags += ["--threads", str(threads)] if threads else []
    total = streams * frames
    per_round = []
    with server_process(art, *flags) as server:
        for _ in range(rounds):
            expected, local_s, local_latencies = local(art, vids, threads)
            runs, wall_s = drive(server.url, vids, expressions, frames_per_call=CLIP_FRAMES)
            result = check(runs, expected)
            batches = [b for r in runs for b in r.batches]
            per_round.append({
                "errors": [r.error for r in runs if r.error],
                "check": {"frames": result.frames, "lost": result.lost, "duplicated": result.duplicated,
                          "misrouted": result.misrouted},
                "server": {"wall_s": wall_s, "fps": total / wall_s,
                           "latency_ms": latency_ms([x for r in runs for x in r.latencies_s]),
                           "engine_batch": {"mean": statistics.fmean(batches), "max": max(batches)}},
                "local": {"wall_s": local_s, "fps": total / local_s, "latency_ms": latency_ms(local_latencies)},
                "server_over_local": local_s / wall_s})

    def median(key: Callable[[dict], float]) -> float:
        return statistics.median(key(r) for r in per_round)

    return {
        "streams": streams, "frames_per_stream": frames, "frame_size": list(size), "frames_per_call": CLIP_FRAMES,
        "threads": threads, "max_batch": max_batch, "queue_delay_ms": queue_delay_ms, "rounds": per_round,
        "median": {"server_fps": median(lambda r: r["server"]["fps"]),
                   "server_p50_ms": median(lambda r: r["server"]["latency_ms"]["p50"]),
                   "server_p99_ms": median(lambda r: r["server"]["latency_ms"]["p99"]),
                   "engine_batch_mean": median(lambda r: r["server"]["engine_batch"]["mean"]),
                   "local_fps": median(lambda r: r["local"]["fps"]),
                   "local_p50_ms": median(lambda r: r["local"]["latency_ms"]["p50"]),
                   "local_p99_ms": median(lambda r: r["local"]["latency_ms"]["p99"]),
                   "server_over_local": median(lambda r: r["server_over_local"])},
        "check": {k: sum(r["check"][k] for r in per_round) for k in ("frames", "lost", "duplicated", "misrouted")},
        "errors": [e for r in per_round for e in r["errors"]],
    }


def markdown(result: dict) -> str:
    r = result["run"]
    m, c, env = r["median"], r["check"], result["environment"]
    rows = [f"| {k + 1} | {x['server']['fps']:.1f} | {x['server']['latency_ms']['p50']:.1f} | "
            f"{x['server']['latency_ms']['p99']:.1f} | {x['server']['engine_batch']['mean']:.2f} | "
            f"{x['local']['fps']:.1f} | {x['server_over_local']:.2f}x |" for k, x in enumerate(r["rounds"])]
    return "\n".join([
        f"# rvos-edge serve under load on {result['machine']}", "",
        f"{r['streams']} streams x {r['frames_per_stream']} frames ({r['frame_size'][1]}x{r['frame_size'][0]} "
        f"random BGR), all at once over gRPC on 127.0.0.1, {r['frames_per_call']} frames (one clip) per call, "
        f"against one local `Segmenter` segmenting the same videos in turn; the {result['model']} model "
        f"(random weights), ONNX Runtime fp32 on the CPU, {r['threads'] or 'all'} engine thread(s), max batch "
        f"{r['max_batch']}, queue delay {r['queue_delay_ms']:g} ms. Client threads, server and engine share "
        f"the machine ({env.get('usable_cores')} usable cores, load average {env.get('load_average_1m'):.1f} "
        f"at the start, other work running); CPU flags: " + ", ".join(result["cpu_flags"]) + ".", "",
        "| | frames/s | p50 ms per clip | p99 ms per clip | mean engine batch |",
        "|---|---:|---:|---:|---:|",
        f"| `rvos-edge serve`, {r['streams']} streams | {m['server_fps']:.1f} | {m['server_p50_ms']:.1f} | "
        f"{m['server_p99_ms']:.1f} | {m['engine_batch_mean']:.2f} |",
        f"| one local `Segmenter` | {m['local_fps']:.1f} | {m['local_p50_ms']:.1f} | {m['local_p99_ms']:.1f} | 1 |",
        "", f"Medians of {len(r['rounds'])} interleaved rounds; server / local throughput "
        f"{m['server_over_local']:.2f}x. A clip's latency: the round trip of the call that carried its "
        "frames (server), the push that completed it (local). Frames checked against the local Segmenter: "
        f"{c['frames']}; lost {c['lost']}, duplicated {c['duplicated']}, misrouted {c['misrouted']}."
        + (f" Stream errors: {r['errors']}." if r["errors"] else ""), "",
        "| round | server frames/s | p50 ms | p99 ms | mean batch | local frames/s | server / local |",
        "|---:|---:|---:|---:|---:|---:|---:|", *rows, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, help="artifact folder (default: a random tiny export)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--frames", type=int, default=300, help="frames per stream")
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--threads", type=int, help="ONNX Runtime threads, server and local (default: all cores)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay", type=float, default=2.0, metavar="MS")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of local and server (medians reported)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<machine>)")
    args = p.parse_args(argv)
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        art = args.artifacts or export_tiny(Path(tmp))
        run = measure(art, args.streams, args.frames, tuple(args.size), args.threads, args.max_batch, args.queue_delay,
                      args.rounds)
        model = "tiny" if args.artifacts is None else str(args.artifacts)
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "model": model, "run": run}
    folder = args.out or REPO / "benchmarks" / "results" / result["machine"]
    save_results(folder, "serve_load", result, markdown(result))
    print(markdown(result))
    c = run["check"]
    return 0 if c["lost"] == c["duplicated"] == c["misrouted"] == 0 and not run["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
