"""`rvos-edge bench`: throughput, latency and memory of a model on this machine.

    result = run_bench("artifacts/", backend="ort", clip_len=6, batch=1, frames=48, threads=4)
    print(markdown_table([result]))

What is measured, in this order, in one process:
1. first result (cold): engine load (`open_engines`), the first text encoding
   (tokenizer included), the first clip; first_result_ms is their sum (the wait from start-up to the first
   masks, not counting the camera filling the first clip);
2. engine only: `warmup` more clips, then ceil(frames / (batch * Tc)) timed clips
   of random uint8 frames [B, Tc, S, S, 3] with one expression's text features.
   torch backend: inputs resident on the engine's device, forward_clip timed with
   CUDA events after a torch.cuda.synchronize on GPU, perf_counter on CPU; ort:
   `session.run` numpy in / numpy out (host<->device copies included with the CUDA
   provider; run returns once the outputs are on the host); trt (always on the GPU):
   the runner's `run`, copies included, which synchronises its CUDA stream before returning;
3. end to end (batch 1 only: the Segmenter runs one stream): a video decoded with
   OpenCV (`video`, or a synthetic 854x480 mp4 written beforehand) and resized on a
   background thread as `run` does, each frame pushed through `Segmenter` (clip model,
   upsample, threshold); one warm-up clip, then the timed frames. A clip's latency is
   the wait for its frames + their push time; ms_per_frame "resize" is the background
   thread's time, which overlaps the rest.
FPS = frames / summed seconds of the timed clips. Percentiles: `percentile`.
Peak memory: the process's peak resident set (`vm_peak_mb`: VmHWM on Linux, everything since
start-up, so run one configuration per process for comparable numbers: `--backend all` does) and, on GPU,
torch.cuda.max_memory_allocated (torch) or the process's used memory from
nvidia-smi (onnxruntime, TensorRT: their buffers are not freed during the run, so after
it that is their peak).

The JSON (`SCHEMA`) holds: schema, timestamp, model {name, source, image_size},
backend, precision, device, threads, clip_len, batch, environment {cpu_model,
logical_cores, usable_cores, load_average_1m, memory_gb, gpu, platform, python,
libraries, ort_providers}, machine, flops {gmacs_per_frame, gflops_per_frame, convention},
first_result {engine_load_ms, text_ms, first_clip_ms, first_result_ms},
engine {timer, warmup_clips, clips, frames, fps, gflops_per_s, latency_ms, latencies_ms},
end_to_end (null at batch > 1) {video, width, height, warmup_clips, clips, frames, fps,
latency_ms, latencies_ms, ms_per_frame {decode, resize, engine, upsample}},
memory {peak_rss_mb, peak_gpu_mb, gpu_memory_source}.
latency_ms = {n, mean, min, max, p50, p90, p99} in milliseconds per clip.

`run_bench_all` (`rvos-edge bench DIR --backend all`) runs every CPU backend and precision the
folder has (`cpu_settings`, read from the backend and precision registries) on the same clips, each
in a process of its own so that its peak RSS is its own, timed interleaved; accuracy is `check`'s
against ONNX Runtime FP32, and `fastest_within_tolerance` names the fastest setting within the
precision's tolerance. Its JSON (`ALL_SCHEMA`) holds: schema, timestamp, model, device, threads,
clip_len, batch, warmup_clips, clips, check {clips, seed, reference}, environment, machine,
cpu_flags, flops, rows (see `run_bench_all`), fastest {backend, precision, fps, speedup_vs_ort_fp32}.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from rvos_edge.engines import Engines, default_backend, open_engines
from rvos_edge.engines.base import clip_feeds, empty_history
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes, make_folder
from rvos_edge.flops import count_flops
from rvos_edge.runtime.pipeline import PreparedFrame, StageTimes
from rvos_edge.runtime.segmenter import Segmenter
from rvos_edge.runtime.video import open_video, prefetch
from rvos_edge.tokenizer import tokenize_for_prompts

SCHEMA = "rvos-edge-bench/1"
PERCENTILES = (50, 90, 99)
EXPRESSION = "the person walking on the left"
VIDEO_SIZE = (854, 480)          # width, height of the synthetic video (DAVIS 480p)
_LIBRARIES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "opencv-python",
              "opencv-python-headless", "tensorrt", "openvino", "rvos-edge")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) by linear interpolation between closest ranks.

    With the values sorted x_0 <= ... <= x_{n-1}, rank r = q/100 * (n - 1) and the result is
    x_i + (r - i) * (x_{i+1} - x_i) for i = floor(r) (numpy's default method "linear",
    Hyndman & Fan type 7): p0 is the minimum, p100 the maximum, p50 the usual median.
    """
    if not values:
        raise UserError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise UserError(f"percentile must be within 0..100, got {q}")
    xs = sorted(values)
    r = q / 100 * (len(xs) - 1)
    i = math.floor(r)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (r - i) * (xs[i + 1] - xs[i])


def latency_stats(ms: Sequence[float]) -> dict[str, float]:
    """{n, mean, min, max, p50, p90, p99} of a sample of milliseconds."""
    return {"n": len(ms), "mean": sum(ms) / len(ms), "min": min(ms), "max": max(ms),
            **{f"p{q}": percentile(ms, q) for q in PERCENTILES}}


# ---------------------------------------------------------------- environment

def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The flags of CPU_FLAGS that /proc/cpuinfo lists (they decide CPU kernels' speed; every result names them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    return [f for f in CPU_FLAGS if f in have]


def save_results(folder: str | Path, stem: str, result: dict[str, Any], markdown: str) -> None:
    """folder/stem.json (indented) and folder/stem.md, each written atomically, the folder made if needed."""
    folder = make_folder(folder)
    write_json(folder / f"{stem}.json", result)
    atomic_write_bytes(folder / f"{stem}.md", markdown.encode())


def _gpu_name() -> str | None:
    """The first GPU's name (nvidia-smi, else torch when it is already imported), None without one."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment() -> dict[str, Any]:
    """CPU and GPU model, core counts, the load average when the run starts (other processes
    competing for the cores skew CPU timings), memory, OS, Python and library versions."""
    libraries = {}
    for name in _LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    import onnxruntime
    return {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "memory_gb": _memory_gb(), "gpu": _gpu_name(), "platform": platform.platform(),
            "python": platform.python_version(), "libraries": libraries,
            "ort_providers": onnxruntime.get_available_providers()}


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|@.*$", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def machine_name(env: dict[str, Any]) -> str:
    """Folder name for a machine's results: the CPU model, its usable cores and the GPU, e.g. amd-epyc-2c."""
    name = f"{_slug(env['cpu_model'])}-{env['usable_cores']}c"
    return f"{name}-{_slug(env['gpu'])}" if env.get("gpu") else name


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10      # bytes on macOS, KiB on Linux


def vm_peak_mb() -> float:
    """This process's own peak resident set in MB: VmHWM of /proc/self/status (Linux; a fresh mm at exec, so
    nothing of the parent's), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mb()


def _nvidia_smi_process_mb() -> float | None:
    """GPU memory nvidia-smi reports for this process (None when it cannot tell, e.g. in another PID namespace)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()) and used.strip().isdigit():
            return float(used.strip())
    return None


# ---------------------------------------------------------------- inputs and timers

def _feeds(engines: Engines, text: dict[str, np.ndarray], batch: int, clip_len: int) -> dict[str, np.ndarray]:
    """Random frames (seeded) for `batch` streams, the text features tiled, empty histories."""
    s = engines.config.image_size
    frames = np.random.default_rng(0).integers(0, 256, (batch, clip_len, s, s, 3), dtype=np.uint8)
    return clip_feeds(frames, text, empty_history(engines.config, batch), has_history=False)


def write_synthetic_video(path: Path, frames: int, size: tuple[int, int] = VIDEO_SIZE, fps: float = 24.0) -> Path:
    """An mp4v video of `frames` frames: a bright square moving over a textured background."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write an mp4v video to {path}")
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 5)
    for i in range(frames):
        frame = background.copy()
        x = (40 + 12 * i) % (w - 120)
        cv2.rectangle(frame, (x, h // 3), (x + 100, h // 3 + 100), (40, 200, 240), -1)
        writer.write(frame)
    writer.release()
    return path


def _prepared(source: Iterator[tuple[str, np.ndarray]], seg: Segmenter) -> Iterator[tuple[PreparedFrame, float]]:
    """Each frame of `source` prepared for `seg` (resized), with the seconds that took."""
    for _, frame in source:
        t0 = time.perf_counter()
        prepared = seg.prepare(frame)
        yield prepared, time.perf_counter() - t0


def _end_to_end(engines: Engines, clip_len: int, video: Path, clips: int, bar: tqdm,
                decode_threads: int) -> dict[str, Any]:
    """Decode + Segmenter over one warm-up clip and `clips` timed clips of `video`.

    As in `run`, a background thread decodes (on `decode_threads`, video.open_video) and resizes
    each frame (`Segmenter.prepare`) while the main thread runs the engine and upsamples; "decode"
    is the main thread's wait for the next prepared frame, "resize" the background thread's time
    for the timed frames.
    """
    source = open_video(video, decode_threads)
    width, height = None, None
    seg = Segmenter(engines, clip_len)
    seg.set_expression(EXPRESSION)
    latencies, decode_s, resize_s, clip_s = [], 0.0, 0.0, 0.0
    frames = prefetch(_prepared(iter(source), seg))         # decoding and resizing overlap inference, as in `run`
    try:
        for i in range((clips + 1) * clip_len):
            if i == clip_len:                               # the warm-up clip is done: start timing
                seg.timings, decode_s, resize_s, latencies = StageTimes(), 0.0, 0.0, []
            t0 = time.perf_counter()
            try:
                frame, frame_resize_s = next(frames)
            except StopIteration:
                raise UserError(f"video {video} has {i} frames; the benchmark needs {(clips + 1) * clip_len} "
                                f"(one warm-up clip and {clips} timed clips of {clip_len})") from None
            t1 = time.perf_counter()
            height, width = frame.size
            results = seg.push(frame)
            decode_s += t1 - t0
            resize_s += frame_resize_s
            clip_s += time.perf_counter() - t0
            if results:
                latencies.append(1000.0 * clip_s)
                clip_s = 0.0
                bar.update()
    finally:
        frames.close()
        source.close()
    timed_frames = clips * clip_len
    ms = {**seg.timings.ms(), "decode": 1000.0 * decode_s, "resize": 1000.0 * resize_s}
    return {"video": str(video), "width": width, "height": height, "warmup_clips": 1, "clips": clips,
            "frames": timed_frames, "fps": timed_frames / (sum(latencies) / 1000.0),
            "latency_ms": latency_stats(latencies), "latencies_ms": latencies,
            "ms_per_frame": {k: ms[k] / timed_frames for k in ("decode", "resize", "engine", "upsample")}}


def run_bench(path: str | Path, backend: str | None = None, precision: str = "fp32", clip_len: int | None = None,
              batch: int = 1, frames: int = 48, warmup: int = 2, threads: int | None = None, device: str = "cpu",
              video: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Benchmark the artifact folder or checkpoint at `path` (see the module docstring); returns the JSON dict.

    threads: CPU threads of the engine (default: the usable cores); device "cuda" runs the
    torch backend on the GPU and the ort backend with the CUDA execution provider (trt is
    always on the GPU).
    """
    threads = usable_cores() if threads is None else threads
    for name, value, low in (("batch", batch, 1), ("frames", frames, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    if video is not None and not Path(video).is_file():
        raise UserError(f"video {video} does not exist")
    backend = backend or default_backend(path)
    device = "cuda" if backend == "trt" else device          # TensorRT engines run on the GPU only
    env = environment()

    t0 = time.perf_counter()
    engines = open_engines(path, backend, precision, device=device, threads=threads)
    load_s = time.perf_counter() - t0
    cfg = engines.config
    clip_len = engines.resolve_clip_len(clip_len)
    t0 = time.perf_counter()
    tokens = tokenize_for_prompts([EXPRESSION], cfg.language_prompts, cfg.context_length).tokens
    text = engines.text.run({"tokens": tokens})
    text_s = time.perf_counter() - t0
    feeds = _feeds(engines, text, batch, clip_len)
    t0 = time.perf_counter()
    engines.clip.run(feeds)
    first_clip_s = time.perf_counter() - t0

    clips = math.ceil(frames / (batch * clip_len))
    e2e = batch == 1
    with tqdm(total=warmup + clips + (clips + 1 if e2e else 0), unit="clip", disable=not progress, leave=False,
              desc=f"bench {cfg.name} {backend} Tc={clip_len} B={batch}") as bar:
        timed, timer = engines.clip.timer(feeds), engines.clip.timing
        for _ in range(warmup):
            timed()
            bar.update()
        latencies = []
        for _ in range(clips):
            latencies.append(1000.0 * timed())
            bar.update()
        end_to_end = None
        if e2e:
            with tempfile.TemporaryDirectory(prefix="rvos-edge-bench-") as tmp:
                source = Path(video) if video else write_synthetic_video(Path(tmp) / "bench.mp4", (clips + 1) * clip_len)
                end_to_end = _end_to_end(engines, clip_len, source, clips, bar, 1 if device == "cpu" else 0)
                if not video:
                    end_to_end["video"] = f"synthetic {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} mp4v"

    peak_gpu, gpu_source = None, None
    if device == "cuda" and backend == "torch":
        import torch
        peak_gpu = torch.cuda.max_memory_allocated(engines.clip.device) / 2**20
        gpu_source = "torch.cuda.max_memory_allocated"
    elif device == "cuda":
        peak_gpu, gpu_source = _nvidia_smi_process_mb(), "nvidia-smi used memory of this process"
    flops = count_flops(cfg, clip_len)
    timed_frames = clips * batch * clip_len
    fps = timed_frames / (sum(latencies) / 1000.0)
    return {
        "schema": SCHEMA, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": cfg.name, "source": str(path), "image_size": cfg.image_size},
        "backend": backend, "precision": precision, "device": device, "threads": threads,
        "clip_len": clip_len, "batch": batch, "environment": env, "machine": machine_name(env),
        "flops": {"gmacs_per_frame": flops.gmacs_per_frame, "gflops_per_frame": flops.gflops_per_frame,
                  "convention": "rvos_edge.flops: 1 multiply-add = 2 FLOPs, text encoder over 100 frames"},
        "first_result": {"engine_load_ms": 1000.0 * load_s, "text_ms": 1000.0 * text_s,
                         "first_clip_ms": 1000.0 * first_clip_s,
                         "first_result_ms": 1000.0 * (load_s + text_s + first_clip_s)},
        "engine": {"timer": timer, "warmup_clips": 1 + warmup, "clips": clips, "frames": timed_frames, "fps": fps,
                   "gflops_per_s": fps * flops.gflops_per_frame,
                   "latency_ms": latency_stats(latencies), "latencies_ms": latencies},
        "end_to_end": end_to_end,
        "memory": {"peak_rss_mb": vm_peak_mb(), "peak_gpu_mb": peak_gpu, "gpu_memory_source": gpu_source},
    }


# ---------------------------------------------------------------- reporting

_COLUMNS = ("model", "backend", "precision", "device", "threads", "Tc", "B", "engine FPS",
            "p50 / p90 / p99 ms per clip", "end-to-end FPS", "first result ms", "peak RSS MB", "peak GPU MB")


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_row(r: dict[str, Any]) -> str:
    lat = r["engine"]["latency_ms"]
    e2e = r["end_to_end"]
    cells = (r["model"]["name"], r["backend"], r["precision"], r["device"], str(r["threads"]), str(r["clip_len"]),
             str(r["batch"]), _fmt(r["engine"]["fps"], 2),
             f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f}", _fmt(e2e and e2e["fps"], 2),
             _fmt(r["first_result"]["first_result_ms"], 0), _fmt(r["memory"]["peak_rss_mb"], 0),
             _fmt(r["memory"]["peak_gpu_mb"], 0))
    return "| " + " | ".join(cells) + " |"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per result, the columns of `_COLUMNS`."""
    align = "|".join("---" if i < 7 else "---:" for i in range(len(_COLUMNS)))
    header = "| " + " | ".join(_COLUMNS) + f" |\n|{align}|"
    return "\n".join([header, *(markdown_row(r) for r in results)])


def summary_line(r: dict[str, Any]) -> str:
    """One line: what ran, engine and end-to-end FPS, latency percentiles, first result."""
    lat, e2e = r["engine"]["latency_ms"], r["end_to_end"]
    e2e_text = f", end to end {e2e['fps']:.2f} FPS" if e2e else ""
    return (f"{r['model']['name']} {r['backend']} {r['precision']} {r['device']} threads={r['threads']} "
            f"Tc={r['clip_len']} B={r['batch']}: engine {r['engine']['fps']:.2f} FPS "
            f"(p50/p90/p99 {lat['p50']:.1f}/{lat['p90']:.1f}/{lat['p99']:.1f} ms per clip, {lat['n']} clips){e2e_text}, "
            f"first result {r['first_result']['first_result_ms'] / 1000:.2f} s, "
            f"peak RSS {r['memory']['peak_rss_mb']:.0f} MB")


def write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


# ---------------------------------------------------------------- every CPU backend and precision (--backend all)

ALL_SCHEMA = "rvos-edge-bench-all/1"
REFERENCE = ("ort", "fp32")           # the setting every ratio and every accuracy is measured against


def cpu_settings(folder: str | Path) -> list[tuple[str, str, str | None]]:
    """(backend, precision, blocker) of every setting `--backend all` considers for `folder`, the reference first.

    The backends are those of the registry (rvos_edge.engines.BACKENDS) that open a folder and run on the CPU;
    the precisions those of the registry (rvos_edge.artifacts.precision.PRECISIONS) the backend runs and the
    folder has graphs for. blocker: why this machine cannot run it (`rvos_edge.check.blocker`: the backend's
    runtime is not installed, the CPU has no BF16), None when it can.
    """
    from rvos_edge.artifacts.manifest import load_manifest
    from rvos_edge.artifacts.precision import PRECISIONS, graph_precision
    from rvos_edge.check import blocker
    from rvos_edge.engines import BACKENDS, backend_names

    have = load_manifest(folder).precisions
    found = [(b, p) for b in backend_names("folder") if "cpu" in BACKENDS[b].devices for p, entry in PRECISIONS.items()
             if (entry.backends is None or b in entry.backends) and graph_precision(p) in have]
    found.sort(key=lambda s: s != REFERENCE)
    return [(b, p, blocker(b, p)) for b, p in found]


def _setting_worker(conn: Any, folder: str, backend: str, precision: str, threads: int, clip_len: int | None,
                    batch: int, check_clips: int, seed: int) -> None:
    """One setting in its own (spawned) process: open it, report its first result and its logits on `check`'s
    inputs, then time one clip per "clip" request until "end", answered with its peak RSS."""
    from rvos_edge.check import check_inputs, run_clips
    try:
        t0 = time.perf_counter()
        engines = open_engines(folder, backend, precision, device="cpu", threads=threads)
        load_s = time.perf_counter() - t0
        cfg = engines.config
        clip_len = engines.resolve_clip_len(clip_len)
        t0 = time.perf_counter()
        text = engines.text.run({"tokens": tokenize_for_prompts([EXPRESSION], cfg.language_prompts,
                                                                cfg.context_length).tokens})
        text_s = time.perf_counter() - t0
        feeds = _feeds(engines, text, batch, clip_len)
        t0 = time.perf_counter()
        engines.clip.run(feeds)
        first_s = time.perf_counter() - t0
        tokens, clips = check_inputs(cfg, clip_len, check_clips, seed)
        logits = run_clips(engines, tokens, clips)
        timed = engines.clip.timer(feeds)
    except (UserError, RuntimeError) as e:
        conn.send(("error", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
        return
    conn.send(("ready", {"config": cfg, "clip_len": clip_len, "timer": engines.clip.timing, "logits": logits,
                         "first_result": {"engine_load_ms": 1000.0 * load_s, "text_ms": 1000.0 * text_s,
                                          "first_clip_ms": 1000.0 * first_s,
                                          "first_result_ms": 1000.0 * (load_s + text_s + first_s)}}))
    try:
        while conn.recv() == "clip":
            conn.send(timed())
        conn.send(vm_peak_mb())
    except (EOFError, BrokenPipeError):                  # the parent is gone (interrupted): end quietly
        return


class _Worker:
    """The parent's end of a `_setting_worker`: a spawned process and its pipe."""

    def __init__(self, folder: Path, backend: str, precision: str, **kwargs: Any) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")        # a fresh interpreter: its peak RSS is its own
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_setting_worker, args=(child, str(folder), backend, precision),
                                       kwargs=kwargs, daemon=True)
        self.process.start()
        child.close()

    def ask(self, request: str | None = None) -> Any:
        """Send `request` (if any) and return the answer; a UserError when the process died."""
        try:
            if request is not None:
                self.conn.send(request)
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise UserError(f"its process died (exit code {self.process.exitcode})") from None

    def close(self) -> None:
        self.conn.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def fastest_within_tolerance(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest (highest FPS) row whose accuracy is within `check`'s tolerance (status "ok"); None if none is."""
    ok = [r for r in rows if r["status"] == "ok"]
    return max(ok, key=lambda r: r["fps"]) if ok else None


def run_bench_all(path: str | Path, clip_len: int | None = None, batch: int = 1, frames: int = 48, warmup: int = 2,
                  threads: int | None = None, check_clips: int = 2, seed: int = 0,
                  progress: bool = True) -> dict[str, Any]:
    """Every CPU backend and precision of the artifact folder `path` on the same clips (`rvos-edge bench DIR
    --backend all`); returns the JSON dict (ALL_SCHEMA).

    Each setting of `cpu_settings` runs in a process of its own (spawned), so its peak RSS (VmHWM) is its
    own; they are opened one after the other, then timed interleaved: `warmup` clips of each, then clip 1 of
    every setting, clip 2 of every setting, ... (ceil(frames / (batch * Tc)) each), so load from elsewhere on
    the machine hits them alike. Every process stays alive until the end, so the machine needs the sum of
    their memory. Accuracy is `rvos-edge check`'s: the mask logits of `check_clips` chained clips of synthetic
    video `seed` against ORT FP32's, judged by each precision's tolerance (rvos_edge.check.compare).
    A row: backend, precision, status ("ok" within tolerance, "off" outside it, "error" cannot open or run,
    "skipped" cannot run here), note, fps, speedup_vs_ort_fp32, latency_ms, latencies_ms, first_result,
    peak_rss_mb, max_abs, mask_iou, tolerance. "fastest": the fastest "ok" row (`fastest_within_tolerance`).
    """
    from rvos_edge.artifacts.precision import PRECISIONS
    from rvos_edge.check import compare

    threads = usable_cores() if threads is None else threads
    for name, value, low in (("batch", batch, 1), ("frames", frames, 1), ("warmup", warmup, 0), ("threads", threads, 1),
                             ("check clips", check_clips, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not an artifact folder: --backend all runs a folder's graphs on every CPU backend "
                        "(export it first: rvos-edge export CKPT --out DIR)")
    settings = cpu_settings(path)
    env = environment()
    rows: list[dict[str, Any]] = [{"backend": b, "precision": p, "status": "skipped" if why else "pending",
                                   "note": why or "", "tolerance": str(PRECISIONS[p].tolerance)} for b, p, why in settings]
    workers: dict[int, _Worker] = {}
    ready: dict[int, dict[str, Any]] = {}
    try:
        with tqdm(total=len(rows), unit="setting", disable=not progress, leave=False,
                  desc=f"open {path.name} on every CPU backend") as bar:
            for i, row in enumerate(rows):
                if row["status"] == "skipped":
                    bar.update()
                    continue
                workers[i] = _Worker(path, row["backend"], row["precision"], threads=threads, clip_len=clip_len,
                                     batch=batch, check_clips=check_clips, seed=seed)
                try:
                    kind, answer = workers[i].ask()
                except UserError as e:
                    kind, answer = "error", str(e)
                if kind == "error":
                    row.update(status="error", note=answer)
                    workers.pop(i).close()
                else:
                    ready[i] = answer
                bar.update()
        if 0 not in ready:
            raise UserError(f"ONNX Runtime FP32, the reference, cannot run {path}: {rows[0]['note']}")
        clip_len = ready[0]["clip_len"]
        clips = math.ceil(frames / (batch * clip_len))
        latencies: dict[int, list[float]] = {i: [] for i in ready}
        with tqdm(total=(warmup + clips) * len(ready), unit="clip", disable=not progress, leave=False,
                  desc=f"bench {ready[0]['config'].name} on every CPU backend Tc={clip_len} B={batch}") as bar:
            for n in range(warmup + clips):
                for i in list(workers):
                    try:
                        seconds = workers[i].ask("clip")
                    except UserError as e:
                        rows[i].update(status="error", note=str(e))
                        workers.pop(i).close()
                        ready.pop(i)
                        continue
                    if n >= warmup:
                        latencies[i].append(1000.0 * seconds)
                    bar.update()
        for i in list(workers):
            try:
                rows[i]["peak_rss_mb"] = workers[i].ask("end")
            except UserError as e:
                rows[i].update(status="error", note=str(e))
                ready.pop(i)
    finally:
        for worker in workers.values():
            worker.close()
    if 0 not in ready:
        raise UserError(f"ONNX Runtime FP32, the reference, failed on {path}: {rows[0]['note']}")
    expected = ready[0]["logits"]
    for i, info in ready.items():
        row = rows[i]
        check = compare(row["backend"], row["precision"], info["logits"], expected)
        ms = latencies[i]
        row.update(status=check.status, note=check.note, max_abs=check.max_abs, mask_iou=check.iou,
                   fps=clips * batch * clip_len / (sum(ms) / 1000.0), latency_ms=latency_stats(ms), latencies_ms=ms,
                   first_result=info["first_result"], timer=info["timer"])
    for row in rows:
        if "fps" in row:
            row["speedup_vs_ort_fp32"] = row["fps"] / rows[0]["fps"]
    fastest = fastest_within_tolerance(rows)
    cfg = ready[0]["config"]
    flops = count_flops(cfg, clip_len)
    return {"schema": ALL_SCHEMA, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name": cfg.name, "source": str(path), "image_size": cfg.image_size},
            "device": "cpu", "threads": threads, "clip_len": clip_len, "batch": batch, "warmup_clips": 1 + warmup,
            "clips": clips, "check": {"clips": check_clips, "seed": seed, "reference": "ort fp32"},
            "environment": env, "machine": machine_name(env), "cpu_flags": cpu_flags(),
            "flops": {"gmacs_per_frame": flops.gmacs_per_frame, "gflops_per_frame": flops.gflops_per_frame},
            "rows": rows,
            "fastest": None if fastest is None else {k: fastest[k] for k in ("backend", "precision", "fps",
                                                                              "speedup_vs_ort_fp32")}}


_ALL_COLUMNS = ("backend", "precision", "FPS", "x ORT fp32", "p50 / p99 ms per clip", "first result ms",
                "peak RSS MB", "max abs err", "mask IoU", "tolerance", "result")


def all_markdown_table(result: dict[str, Any]) -> str:
    """One row per setting of a `run_bench_all` result, the columns of `_ALL_COLUMNS`."""
    align = "|".join("---" if c in ("backend", "precision", "tolerance", "result") else "---:" for c in _ALL_COLUMNS)
    lines = ["| " + " | ".join(_ALL_COLUMNS) + f" |\n|{align}|"]
    for r in result["rows"]:
        ran = "fps" in r
        lat = r.get("latency_ms") or {}
        cells = (r["backend"], r["precision"], _fmt(r.get("fps"), 2), _fmt(r.get("speedup_vs_ort_fp32"), 2),
                 f"{lat['p50']:.1f} / {lat['p99']:.1f}" if ran else "-",
                 _fmt(r["first_result"]["first_result_ms"], 0) if ran else "-", _fmt(r.get("peak_rss_mb"), 0),
                 f"{r['max_abs']:.1e}" if ran else "-", _fmt(r.get("mask_iou"), 4), r["tolerance"],
                 r["status"] + (f": {r['note']}" if r["note"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def all_summary_line(result: dict[str, Any]) -> str:
    """The last line of `bench --backend all`: the fastest setting within tolerance and its ratio to ORT FP32."""
    rows, fastest = result["rows"], result["fastest"]
    ran = sum("fps" in r for r in rows)
    head = (f"{result['model']['name']} on {ran} CPU settings (threads={result['threads']} Tc={result['clip_len']} "
            f"B={result['batch']}): ")
    if fastest is None:
        return head + "none is within check's tolerance of ONNX Runtime FP32"
    return head + (f"fastest within check's tolerance: {fastest['backend']} {fastest['precision']}, "
                   f"{fastest['fps']:.2f} FPS = {fastest['speedup_vs_ort_fp32']:.2f}x ONNX Runtime FP32")
