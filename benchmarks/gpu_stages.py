"""The stages of `benchmarks/gpu_check.py`, each run in a process of its own (see that file).

Each stage is a function (sizes, save) -> dict: `sizes` says what to run (GPU: the shapes of
the goals; DRY: tiny ones on the CPU), `save(data)` records what it has so far, so that a
stage killed at its time limit still reports its measurements. torch is imported inside
the stages, never when this module is imported (the parent process stays torch-free).
"""
from __future__ import annotations

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
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")


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
    train_steps: tuple[int, int]          # CLIP pretraining, VLP-RVOS prompt tuning


GPU = Sizes(
    presets=("vit-b16", "vit-l14"), batches=(1, 8), dtypes=("float16", "bfloat16"), warmup=5, reps=30,
    cf_cases=(("vit-b16", 1, 8, 32, 6, 22, 22, 11), ("vit-b16 Tc=36", 1, 8, 32, 36, 22, 22, 11),
              ("vit-b16 B=8", 8, 8, 32, 6, 22, 22, 11)),
    prtc_cases=(("vit-b16", 1, 12, 64, 6 * 4, 6 * 485), ("vit-b16 Tc=36", 1, 12, 64, 36 * 4, 36 * 485),
                ("vit-b16 B=8", 8, 12, 64, 6 * 4, 6 * 485)),
    long_case="vit-b16 Tc=36", kernel_warmup=5, kernel_reps=50, ort_checkpoint="demo", ort_clips=8,
    compile_options={"mode": "max-autotune"}, train_preset="demo", train_steps=(300, 200))
DRY = Sizes(
    presets=("tiny",), batches=(1, 2), dtypes=("float16", "bfloat16"), warmup=1, reps=3,
    cf_cases=(("tiny", 1, 2, 16, 2, 4, 4, 2), ("tiny Tc=4", 1, 2, 16, 4, 4, 4, 2)),
    prtc_cases=(("tiny", 1, 2, 16, 2 * 2, 2 * 17),), long_case="tiny Tc=4", kernel_warmup=1, kernel_reps=2,
    ort_checkpoint="tiny", ort_clips=2, compile_options={"backend": "eager"}, train_preset="tiny",
    train_steps=(2, 2))


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


def _cpu_flags() -> list[str]:
    """The flags of CPU_FLAGS that /proc/cpuinfo lists (what decides CPU kernels' speed)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    return [f for f in CPU_FLAGS if f in have]


def stage_environment(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    import importlib.metadata

    import torch

    from rvos_edge.bench import environment

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
            "cpu_flags": _cpu_flags(), "memory_gb": env["memory_gb"], "platform": env["platform"]}


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
    import torch

    import kernels

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
    import torch

    import kernels
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


def stage_train(sizes: Sizes, save: Callable[[dict], None]) -> dict:
    from rvos_edge.train.clip_pretrain import CLIPTrainOptions, train_clip
    from rvos_edge.train.rvos import RVOSTrainOptions, train_rvos

    device = _device().type
    clip_steps, rvos_steps = sizes.train_steps
    out: dict[str, Any] = {"preset": sizes.train_preset, "device": device}
    with tempfile.TemporaryDirectory(prefix="gpu-check-train-") as tmp:
        s = train_clip(CLIPTrainOptions(out=f"{tmp}/clip", preset=sizes.train_preset, steps=clip_steps,
                                        warmup=min(100, clip_steps), save_every=clip_steps, device=device))
        out["clip"] = {"steps": clip_steps, "seconds": s["seconds"], "s_per_step": s["seconds"] / clip_steps,
                       "loss_first": s["loss_first"], "loss_last": s["loss_last"],
                       "heldout_accuracy": s["heldout_accuracy"], "probes": s["attribute_accuracy"],
                       "patch_shuffle_cosine": s["patch_shuffle_cosine"]}
        save(out)
        s = train_rvos(RVOSTrainOptions(out=f"{tmp}/rvos", preset=sizes.train_preset, clip_weights=s["weights"],
                                        steps=rvos_steps, warmup=min(100, rvos_steps), save_every=rvos_steps,
                                        device=device))
        out["rvos"] = {"steps": rvos_steps, "seconds": s["seconds"], "s_per_step": s["seconds"] / rvos_steps,
                       "loss_first": s["loss_first"], "loss_last": s["loss_last"]}
    return out


STAGE_RUNS: dict[str, Callable[[Sizes, Callable[[dict], None]], dict]] = {
    "environment": stage_environment, "cuda_tests": stage_cuda_tests, "kernels": stage_kernels,
    "throughput": stage_throughput, "ort_cpu": stage_ort_cpu, "compile": stage_compile, "train": stage_train}
