"""The stages of `benchmarks/gpu_check.py`, each run in a process of its own (see that file).

Each stage is a function (sizes, save) -> dict: `sizes` says what to run (GPU: the shapes of
the goals; DRY: tiny ones on the CPU), `save(data)` records what it has so far, so that a
stage killed at its time limit still reports its measurements. torch is imported inside
the stages, never when this module is imported (the parent process stays torch-free).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ("tests/test_kernels_triton.py", "tests/test_model_cuda.py", "tests/test_bench.py",
              "tests/test_tensorrt_gpu.py")
DEADLINE_ENV = "GPU_CHECK_DEADLINE"
"""Set by gpu_check.py for each stage's process: the time.time() at which it will be killed."""
@dataclass(frozen=True)
class Sizes:
    """What the stages run: the GPU's shapes, or the dry run's tiny ones on the CPU."""
    presets: tuple[str, ...]              # throughput; the first is also profiled and compiled
    batches: tuple[int, int]              # (single stream, batched)
    dtypes: tuple[str, ...]               # autocast dtypes; the first is also profiled and compiled
    warmup: int
    reps: int
    cf_cases: tuple[tuple, ...]           # kernels.py CF_CASES rows; the one named `long_case` decides a goal
    prtc_cases: tuple[tuple, ...]
    long_case: str
    kernel_warmup: int
    kernel_reps: int
    ort_checkpoint: str                   # "demo" (the shipped checkpoint) or a preset with random weights
    ort_clips: int
    compile_options: dict[str, Any]       # torch.compile keyword arguments
    train_preset: str
    train_seconds: float                  # training time of the two legs, at most (stage_train)
    train_reserve_s: float                # of the stage's time: start-up, probes, packing, J&F
    train_batches: tuple[int, int]        # CLIP pairs, VLP-RVOS samples per optimizer step
    train_lrs: tuple[float, float]
    train_workers: int                    # batch-making processes, at most (and at most cores - 1)
    train_probe_every: int                # CLIP steps between probes (the probe curve)
    train_eval_videos: int                # held-out videos of the J&F after training


GPU = Sizes(
    presets=("vit-b16", "vit-l14"), batches=(1, 8), dtypes=("float16", "bfloat16"), warmup=5, reps=30,
    cf_cases=(("vit-b16", 1, 8, 32, 6, 22, 22, 11), ("vit-b16 Tc=36", 1, 8, 32, 36, 22, 22, 11),
              ("vit-b16 B=8", 8, 8, 32, 6, 22, 22, 11)),
    prtc_cases=(("vit-b16", 1, 12, 64, 6 * 4, 6 * 485), ("vit-b16 Tc=36", 1, 12, 64, 36 * 4, 36 * 485),
                ("vit-b16 B=8", 8, 12, 64, 6 * 4, 6 * 485)),
    long_case="vit-b16 Tc=36", kernel_warmup=5, kernel_reps=50, ort_checkpoint="demo", ort_clips=8,
    compile_options={"mode": "max-autotune"}, train_preset="demo",
    # Training sizes, from CPU measurements (1 thread, this project's EPYC VM) and FLOP counts
    # (torch.utils.flop_counter) of the demo preset; an H200 has not run them yet:
    # - CLIP, default recipe: 1.5 GFLOP per pair forward + backward (captions, 2 hard negatives
    #   and the batch's phrases); 0.75 s per step of 32 on one core. On the GPU a step of 256
    #   pairs is 0.4 TFLOP: about 20-40 ms at the 10-20 TFLOP/s such small matrices (width 192,
    #   65 tokens) reach, plus ~10 ms of kernel launches. Making a pair takes ~2 ms of one core
    #   (frame, caption, region targets), so 15 workers make ~7,500 pairs/s: ~30 steps/s of
    #   256, which the GPU matches. 180 s: ~5,000 steps, ~1.3 M pairs (the shipped CLIP saw
    #   45 k; the 3000-step CPU run 190 k).
    # - VLP-RVOS: 14 GFLOP per sample forward + backward (two clips of 6 frames, CLIP frozen,
    #   gradients through it for the prompts); 0.7 s per sample on one core. A step of 32 is
    #   0.46 TFLOP, 30-60 ms on the GPU; a sample takes ~8 ms of one core to make, so 15
    #   workers make ~1,900/s against ~500-1,000/s used. 120 s: ~2,000-4,000 steps, 60-120 k
    #   samples (the shipped model saw 15 k).
    #   Its lr is 3e-3: on the CPU, batch 2 x 4 accumulated at 3e-3 beat 1e-3 and 3e-4
    #   (benchmarks/results/intel-xeon-2c/rvos_lr_sweep.md) and stayed stable for 80 minutes
    #   (rvos_lr_long.md); a batch of 32 is four times that one.
    # Both legs stop on the clock (--time-budget), so a slower GPU trains less, never longer.
    train_seconds=300, train_reserve_s=45, train_batches=(256, 32), train_lrs=(1e-3, 3e-3), train_workers=15,
    train_probe_every=1000, train_eval_videos=100)
DRY = Sizes(
    presets=("tiny",), batches=(1, 2), dtypes=("float16", "bfloat16"), warmup=1, reps=3,
    cf_cases=(("tiny", 1, 2, 16, 2, 4, 4, 2), ("tiny Tc=4", 1, 2, 16, 4, 4, 4, 2)),
    prtc_cases=(("tiny", 1, 2, 16, 2 * 2, 2 * 17),), long_case="tiny Tc=4", kernel_warmup=1, kernel_reps=2,
    ort_checkpoint="tiny", ort_clips=2, compile_options={"backend": "eager"}, train_preset="tiny",
    train_seconds=4, train_reserve_s=20, train_batches=(8, 2), train_lrs=(5e-4, 1e-3), train_workers=2,
    train_probe_every=20, train_eval_videos=2)
CLIP_SHARE = 0.6
"""Of the training time, the CLIP's part; VLP-RVOS gets the rest."""
RETURN_LIMIT = 16 * 2**20
"""The largest file the device machine brings back from $OUT."""
TRAIN_SUMMARY, TRAIN_CHECKPOINT = "train_summary.json", "train_demo.safetensors.gz"


class StageFailed(Exception):
    """The stage ran to its end, but what it checked failed (tests); `data` is its full result."""

    def __init__(self, message: str, data: dict) -> None:
        super().__init__(message)
        self.data = data


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _nvidia_smi(field: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=20)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def stage_environment(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    import importlib.metadata

    import torch

    from rvos_edge.bench import cpu_flags, environment

    env = environment()
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
               "multiprocessors": p.multi_processor_count, "driver": _nvidia_smi("driver_version"),
               "count": torch.cuda.device_count()}

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"gpu": gpu, "cuda": torch.version.cuda, "torch": torch.__version__, "triton": version("triton"),
            "onnxruntime": version("onnxruntime"), "numpy": version("numpy"), "python": env["python"],
            "cpu_model": env["cpu_model"], "cpu_count": env["logical_cores"], "usable_cores": env["usable_cores"],
            "cpu_flags": cpu_flags(), "memory_gb": env["memory_gb"], "platform": env["platform"]}


def parse_junit(path: Path) -> list[dict]:
    """One {test, outcome, seconds, message} per test case of a pytest --junitxml file."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                outcome, message = name, (found.get("message") or "").strip().splitlines()[:1]
                message = message[0][:300] if message else ""
                break
        tests.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0.0), "message": message})
    return tests


def stage_cuda_tests(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", *TEST_FILES]
        done = subprocess.run([sys.executable, "-m", "pytest", *args, f"--junitxml={junit}"], cwd=ROOT)
        tests = parse_junit(junit) if junit.exists() else []
    counts = Counter(t["outcome"] for t in tests)
    data = {"command": "pytest " + " ".join(args), "exit_code": done.returncode,
            "counts": {k: counts.get(k, 0) for k in ("passed", "failed", "error", "skipped")}, "tests": tests}
    bad = counts.get("failed", 0) + counts.get("error", 0)
    if bad or done.returncode not in (0, 5):          # 5: nothing collected
        raise StageFailed(f"{bad} of {len(tests)} tests failed (pytest exit code {done.returncode})", data)
    return data


def stage_kernels(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    import kernels
    import torch

    device = _device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    max_bytes = (60 if device.type == "cuda" else 2) * 2**30
    torch.manual_seed(0)
    rows = kernels.bench(device, dtype, sizes.kernel_warmup, sizes.kernel_reps, False, max_bytes,
                         list(sizes.cf_cases), list(sizes.prtc_cases))
    return {"machine": kernels.machine(device), "dtype": str(dtype).replace("torch.", ""), "shift": 0,
            "warmup": sizes.kernel_warmup, "reps": sizes.kernel_reps, "long_case": sizes.long_case, "rows": rows}


def _random_tokens(batch: int, words: int = 6, seed: int = 0):
    """[B, 77] rows [SOS, `words` random word ids, EOS, 0 ...]: text for timing, no tokenizer needed."""
    import torch

    from rvos_edge.tokenizer import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN

    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, CONTEXT_LENGTH, dtype=torch.int64)
    tokens[:, 0], tokens[:, words + 1] = SOT_TOKEN, EOT_TOKEN
    tokens[:, 1:words + 1] = torch.randint(1, SOT_TOKEN, (batch, words), generator=g)
    return tokens


def _model(preset: str, device):
    """A random-weight model, prompts folded, Triton attention on CUDA (impl "auto")."""
    import torch

    from rvos_edge.model import build_model

    with torch.device(device):
        return build_model(preset, seed=0).fold_prompts().eval()


def _autocast(device, dtype, cache: bool = True):
    import torch
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def _clip_inputs(model, batch: int, dtype) -> tuple:
    """(frames, text, history, has_history) on the model's device for one clip of random frames."""
    import torch

    cfg, device = model.config, next(model.parameters()).device
    g = torch.Generator().manual_seed(batch)
    frames = torch.randint(0, 256, (batch, cfg.clip_len, cfg.image_size, cfg.image_size, 3), generator=g,
                           dtype=torch.uint8).to(device)
    with torch.inference_mode(), _autocast(device, dtype):
        text = model.encode_text(_random_tokens(batch).to(device))
    history = torch.zeros(batch, cfg.history_prompts, cfg.embed_dim, device=device)
    return frames, text, history, torch.zeros(batch, 1, device=device)


def _clip_forward(forward_clip: Callable, inputs: tuple, dtype, cache: bool = True) -> Callable[[], Any]:
    """A closure running `forward_clip` (the model's, or a compiled one) on `inputs` under autocast."""
    import torch

    device = inputs[0].device

    def forward():
        with torch.inference_mode(), _autocast(device, dtype, cache):
            return forward_clip(*inputs)
    return forward


def _graphed(forward: Callable[[], Any]) -> Callable[[], None]:
    """CUDA-graph replay of `forward` (warmed up on a side stream, then captured once)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def _timed_row(row: dict, run: Callable[[], Any], device, frames_per_call: int, sizes: Sizes) -> dict:
    """Fill `row` with FPS, latency stats (ms per clip) and peak GPU memory of `run`."""
    import kernels
    import torch

    from rvos_edge.bench import latency_stats

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ms = kernels.time_ms(run, device, sizes.warmup, sizes.reps)
    row.update(fps=frames_per_call * len(ms) / (sum(ms) / 1000.0), latency_ms=latency_stats(ms),
               peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None)
    return row


def _profile(forward: Callable[[], Any], device, reps: int = 5, top: int = 15) -> dict:
    """The `top` kernels (CUDA) or ops (CPU) by self time over `reps` clips, from torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    forward()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(reps):
            forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [(e.key, getattr(e, attr), e.count) for e in prof.key_averages()]
    if device.type == "cuda":              # kernels carry device time; the CPU-side ops have none of their own
        events = [e for e in events if e[1] > 0]
    total = sum(us for _, us, _ in events) or 1.0
    events.sort(key=lambda e: -e[1])
    return {"timer": attr, "reps": reps, "ms_per_clip": total / reps / 1000.0,
            "top": [{"name": name[:90], "calls_per_clip": count / reps, "ms_per_clip": us / reps / 1000.0,
                     "share": us / total} for name, us, count in events[:top]]}


def _mode_row(model, inputs: tuple, dtype, mode: str, sizes: Sizes) -> dict:
    """One clip timed in `mode`: "eager", or "cuda-graph" (captured once, then replayed)."""
    device, batch = inputs[0].device, inputs[0].shape[0]
    row = {"model": model.config.name, "dtype": str(dtype).replace("torch.", ""), "batch": batch, "mode": mode}
    if mode == "cuda-graph" and device.type != "cuda":
        return row | {"skipped": "needs CUDA"}
    try:
        run = (_clip_forward(model.forward_clip, inputs, dtype) if mode == "eager" else
               _graphed(_clip_forward(model.forward_clip, inputs, dtype, cache=False)))
        return _timed_row(row, run, device, batch * model.config.clip_len, sizes)
    except RuntimeError as e:                  # out of memory, a capture that fails: recorded, the rest still run
        return row | {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"}


def stage_throughput(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    """Every preset x dtype x batch in eager and CUDA-graph mode, the text encoder, and a profile
    of the first preset in the first dtype at the larger batch."""
    import torch

    device = _device()
    out: dict[str, Any] = {"device": device.type, "clip_len": None, "rows": [], "text_encoder": [], "profile": None}
    for preset in sizes.presets:
        model = _model(preset, device)
        out["clip_len"] = model.config.clip_len
        for dtype in (getattr(torch, name) for name in sizes.dtypes):
            for batch in sizes.batches:
                tokens = _random_tokens(batch).to(device)

                def encode(model=model, tokens=tokens, dtype=dtype) -> None:
                    with torch.inference_mode(), _autocast(device, dtype):
                        model.encode_text(tokens)
                out["text_encoder"].append(_timed_row(
                    {"model": preset, "dtype": str(dtype).replace("torch.", ""), "batch": batch}, encode, device,
                    batch, sizes))
                inputs = _clip_inputs(model, batch, dtype)
                for mode in ("eager", "cuda-graph"):
                    out["rows"].append(_mode_row(model, inputs, dtype, mode, sizes))
                    save(out)
                del inputs
        if preset == sizes.presets[0]:
            dtype, batch = getattr(torch, sizes.dtypes[0]), sizes.batches[1]
            forward = _clip_forward(model.forward_clip, _clip_inputs(model, batch, dtype), dtype)
            out["profile"] = {"model": preset, "dtype": sizes.dtypes[0], "batch": batch, **_profile(forward, device)}
            save(out)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def stage_compile(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    import torch

    device = _device()
    preset, dtype_name = sizes.presets[0], sizes.dtypes[0]
    dtype = getattr(torch, dtype_name)
    model = _model(preset, device)
    label = "compile " + ",".join(f"{k}={v}" for k, v in sizes.compile_options.items())
    rows: list[dict] = []
    out = {"options": sizes.compile_options, "rows": rows}
    for batch in sizes.batches:
        row = {"model": preset, "dtype": dtype_name, "batch": batch, "mode": label, "status": "compiling"}
        rows.append(row)
        save(out)                                   # a kill while compiling leaves this row saying so
        compiled = torch.compile(model.forward_clip, dynamic=False, **sizes.compile_options)
        inputs = _clip_inputs(model, batch, dtype)
        forward = _clip_forward(compiled, inputs, dtype)
        t0 = time.perf_counter()
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["compile_s"] = time.perf_counter() - t0
        del row["status"]
        _timed_row(row, forward, device, batch * model.config.clip_len, sizes)
        save(out)
    return out


def stage_ort_cpu(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    from rvos_edge.bench import run_bench, usable_cores
    from rvos_edge.export.onnx_export import export_artifacts

    rows: list[dict] = []
    out = {"checkpoint": sizes.ort_checkpoint, "threads": usable_cores(), "rows": rows}
    with tempfile.TemporaryDirectory(prefix="gpu-check-ort-") as tmp:
        if sizes.ort_checkpoint == "demo":
            from rvos_edge.demo import DEMO_CHECKPOINT
            checkpoint = DEMO_CHECKPOINT
        else:
            from rvos_edge.model import build_model, save_checkpoint
            checkpoint = Path(tmp) / f"{sizes.ort_checkpoint}.safetensors"
            save_checkpoint(build_model(sizes.ort_checkpoint, seed=0), checkpoint)
        t0 = time.perf_counter()
        manifest, _ = export_artifacts(checkpoint, Path(tmp) / "artifacts", progress=False)
        out["export_s"] = time.perf_counter() - t0
        tc = manifest.config.clip_len
        for batch in sizes.batches:
            r = run_bench(Path(tmp) / "artifacts", backend="ort", batch=batch, frames=batch * tc * sizes.ort_clips,
                          threads=out["threads"], progress=False)
            e2e = r["end_to_end"]
            rows.append({"model": r["model"]["name"], "batch": batch, "clip_len": r["clip_len"],
                         "fps": r["engine"]["fps"], "latency_ms": r["engine"]["latency_ms"],
                         "end_to_end_fps": e2e["fps"] if e2e else None,
                         "first_result_ms": r["first_result"]["first_result_ms"],
                         "peak_rss_mb": r["memory"]["peak_rss_mb"]})
            save(out)
    return out


def training_seconds(sizes: Sizes) -> float:
    """Seconds the two training legs may take: sizes.train_seconds, or less when the stage's
    deadline (DEADLINE_ENV, a time.time() value) leaves less after train_reserve_s."""
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline is None:
        return sizes.train_seconds
    return max(1.0, min(sizes.train_seconds, float(deadline) - time.time() - sizes.train_reserve_s))


def return_files(packed: Path, out: Path, limit: int = RETURN_LIMIT) -> list[str]:
    """Copy the packed checkpoint (`rvos-edge pack`) into `out` as TRAIN_CHECKPOINT when it fits
    in `limit` bytes, else as pieces TRAIN_CHECKPOINT.part1, .part2, ... of at most `limit`
    bytes each (`cat TRAIN_CHECKPOINT.part* > TRAIN_CHECKPOINT` joins them). The names written."""
    data = packed.read_bytes()
    if len(data) <= limit:
        (out / TRAIN_CHECKPOINT).write_bytes(data)
        return [TRAIN_CHECKPOINT]
    names = [f"{TRAIN_CHECKPOINT}.part{i // limit + 1}" for i in range(0, len(data), limit)]
    for name, i in zip(names, range(0, len(data), limit)):
        (out / name).write_bytes(data[i:i + limit])
    return names


def _heldout_jf(checkpoint: Path, videos: int, device: str) -> dict:
    """J&F of the torch engine on the first `videos` held-out synthetic videos, overall and per kind."""
    from rvos_edge.data import HELDOUT_SEED, SyntheticDataset
    from rvos_edge.eval.evaluate import evaluate
    from rvos_edge.runtime import Segmenter

    segmenter = Segmenter.open(checkpoint, "torch", device=device)
    report = evaluate(segmenter, SyntheticDataset(HELDOUT_SEED, videos), progress=False)
    return {"data": f"synthetic:{HELDOUT_SEED}:{videos}", "engine": "torch fp32", "fps": report.fps,
            **report.summary}


def stage_train(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    """The demo recipe, time-boxed: CLIP pretraining with the default recipe (contrastive, hard
    negatives, dense region-phrase alignment), then VLP-RVOS prompt tuning on that CLIP, each leg
    stopped by the clock (--time-budget, training_seconds split CLIP_SHARE : rest), batches made
    by worker processes. The packed checkpoint (return_files) and TRAIN_SUMMARY go to $OUT (the
    device machine's return folder; runs/gpu-check without it). The same commands, with a
    smaller budget, train on the CPU:
        rvos-edge train --stage clip --out runs/clip --time-budget S --workers N ...
        rvos-edge train --stage rvos --clip-weights runs/clip/clip.safetensors --time-budget S ..."""
    import torch

    from rvos_edge.model import load_checkpoint, save_checkpoint
    from rvos_edge.train.clip_pretrain import CLIPTrainOptions, train_clip
    from rvos_edge.train.rvos import RVOSTrainOptions, train_rvos

    device = _device().type
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    seconds = training_seconds(sizes)
    workers = max(0, min(sizes.train_workers, (os.cpu_count() or 1) - 1))
    (clip_batch, rvos_batch), (clip_lr, rvos_lr) = sizes.train_batches, sizes.train_lrs
    summary: dict[str, Any] = {"preset": sizes.train_preset, "device": device, "workers": workers,
                               "training_seconds": seconds}

    def record() -> None:
        save(summary)
        (out / TRAIN_SUMMARY).write_text(json.dumps(summary, indent=1, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu-check-train-") as tmp:
        clip = CLIPTrainOptions(out=f"{tmp}/clip", preset=sizes.train_preset, steps=1_000_000, batch_size=clip_batch,
                                lr=clip_lr, warmup=200 if device == "cuda" else 2, time_budget=seconds * CLIP_SHARE,
                                workers=workers, probe_every=sizes.train_probe_every, save_every=1_000_000,
                                device=device)
        s = train_clip(clip, progress=False)
        summary["clip"] = {"options": dataclasses.asdict(clip), "steps": s["steps"], "seconds": s["seconds"],
                           "probe_seconds": s["probe_seconds"],
                           "s_per_step": (s["seconds"] - s["probe_seconds"]) / max(1, s["steps"]),
                           "loss_first": s["loss_first"],
                           "loss_last": s["loss_last"], "heldout_accuracy": s["heldout_accuracy"],
                           "probes": s["attribute_accuracy"], "patch_shuffle_cosine": s["patch_shuffle_cosine"],
                           "probe_curve": s["probe_curve"]}
        record()
        rvos = RVOSTrainOptions(out=f"{tmp}/rvos", preset=sizes.train_preset, clip_weights=s["weights"],
                                steps=1_000_000, batch_size=rvos_batch, lr=rvos_lr,
                                warmup=100 if device == "cuda" else 2, time_budget=seconds * (1 - CLIP_SHARE),
                                workers=workers, save_every=1_000_000, device=device)
        r = train_rvos(rvos, progress=False)
        summary["rvos"] = {"options": dataclasses.asdict(rvos), "steps": r["steps"], "seconds": r["seconds"],
                           "s_per_step": r["seconds"] / max(1, r["steps"]), "loss_first": r["loss_first"],
                           "loss_last": r["loss_last"]}
        record()
        packed = Path(tmp) / TRAIN_CHECKPOINT
        save_checkpoint(load_checkpoint(r["checkpoint"], s["weights"]), packed)
        summary["files"] = return_files(packed, out)
        record()
        summary["heldout"] = _heldout_jf(packed, sizes.train_eval_videos, device)
    record()
    return summary


STAGE_RUNS: dict[str, Callable[[Sizes, Callable[[dict], None]], dict]] = {
    "environment": stage_environment, "cuda_tests": stage_cuda_tests, "kernels": stage_kernels,
    "throughput": stage_throughput, "ort_cpu": stage_ort_cpu, "compile": stage_compile, "train": stage_train}
