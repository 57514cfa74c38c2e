"""Benchmark CF-MSA and PRTC attention implementations; writes JSON + markdown to benchmarks/results/.

    python benchmarks/kernels.py                 # CUDA if available, else CPU
    python benchmarks/kernels.py --device cpu --reps 5

CF-MSA (vit-b16 STR: 8 heads, d=32, 22x22 grid, Mw=11): triton, flex (torch.compile'd
FlexAttention with a block mask), decomposed (standard ops) and SDPA with the dense boolean
mask, at B=1 Tc=6, B=1 Tc=36 and B=8 Tc=6. PRTC (vit-b16 vision layer: 12 heads, d=64,
Tc*4 queries over Tc*(1+484) keys): triton split-K vs SDPA. Forward and forward+backward.

On CUDA every repetition is timed with CUDA events after warm-up (which also compiles);
on the CPU with perf_counter, and only the standard-op methods run (decomposed, dense SDPA; triton too
under TRITON_INTERPRET=1, as the GPU check's dry run does).
Effective TFLOP/s counts the useful FLOPs only, 4*B*heads*d per allowed (query, key) pair
(x3 for forward+backward), for every method, so a dense mask's wasted work is not credited.
Speed-up is against dense SDPA. A method whose working set would not fit is skipped with
the reason recorded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from rvos_edge.kernels import allowed_pairs, cube_frame_attention, cube_frame_mask, prtc_cross_attention

RESULTS = Path(__file__).resolve().parent / "results"
CF_CASES = [  # name, B, heads, d, Tc, H, W, Mw
    ("vit-b16", 1, 8, 32, 6, 22, 22, 11),
    ("vit-b16 Tc=36", 1, 8, 32, 36, 22, 22, 11),
    ("vit-b16 B=8", 8, 8, 32, 6, 22, 22, 11),
]
PRTC_CASES = [  # name, B, heads, d, Nq = Tc*m_tmp, Nk = Tc*(1+Np)
    ("vit-b16", 1, 12, 64, 6 * 4, 6 * 485),
    ("vit-b16 Tc=36", 1, 12, 64, 36 * 4, 36 * 485),
    ("vit-b16 B=8", 8, 12, 64, 6 * 4, 6 * 485),
]


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Per-repetition wall times in ms (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def runner(attend: Callable[..., torch.Tensor], inputs: list[torch.Tensor], backward: bool) -> Callable[[], None]:
    """A closure running attend(*inputs) and, for `backward`, its backward with a fixed dO."""
    if not backward:
        def forward() -> None:
            with torch.no_grad():
                attend(*inputs)
        return forward
    leaves = [x.detach().requires_grad_() for x in inputs]
    grad = torch.randn_like(inputs[0])

    def forward_backward() -> None:
        for x in leaves:
            x.grad = None
        attend(*leaves).backward(grad)
    return forward_backward


def triton_runs(device: torch.device) -> bool:
    """Triton kernels run on CUDA, and on the CPU under TRITON_INTERPRET=1 (slowly: only for smoke runs)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def cf_methods(device: torch.device, grid: tuple[int, int, int], mw: int, shift: int) -> dict[str, Callable]:
    """name -> attend(q, k, v) for the CF-MSA methods that run on `device`."""
    methods = {"decomposed": lambda q, k, v: cube_frame_attention(q, k, v, grid, mw, shift, impl="decomposed")}
    if triton_runs(device):
        methods["triton"] = lambda q, k, v: cube_frame_attention(q, k, v, grid, mw, shift, impl="triton")
    if device.type == "cuda":
        from rvos_edge.kernels.flex import block_mask, compiled_flex
        methods["flex"] = lambda q, k, v: compiled_flex()(
            q, k, v, block_mask=block_mask(q.shape[2], grid[1], grid[2], mw, shift, str(q.device)))
    mask = {}

    def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if "m" not in mask:
            mask["m"] = cube_frame_mask(grid, mw, shift, q.device, max_bytes=2**40)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask["m"])
    methods["dense SDPA"] = dense
    return methods


def working_set(method: str, b: int, heads: int, tc: int, hw: int, m2: int, backward: bool) -> int:
    """Rough peak bytes of the fp32 score-sized tensors a method materialises."""
    n = tc * hw
    per_head = {"dense SDPA": 2 * n * n, "decomposed": 3 * tc * hw * (hw + tc * m2)}.get(method, 0)
    return 4 * b * heads * per_head * (2 if backward else 1) + (n * n if method == "dense SDPA" else 0)


def bench(device: torch.device, dtype: torch.dtype, warmup: int, reps: int, shifted: bool,
          max_bytes: int, cf_cases: list[tuple] = CF_CASES, prtc_cases: list[tuple] = PRTC_CASES) -> list[dict]:
    """One row per (pass, case, method); cases as CF_CASES and PRTC_CASES."""
    rows = []
    for backward in (False, True):
        for name, b, heads, d, tc, h, w, mw in cf_cases:
            s = mw // 2 if shifted else 0
            flops = 4 * b * heads * d * allowed_pairs((tc, h, w), mw, s) * (3 if backward else 1)
            inputs = [torch.randn(b, heads, tc * h * w, d, device=device, dtype=dtype) for _ in range(3)]
            for method, attend in cf_methods(device, (tc, h, w), mw, s).items():
                rows.append(measure("CF-MSA", name, method, backward, attend, inputs, flops, device, warmup, reps,
                                    working_set(method, b, heads, tc, h * w, mw * mw, backward), max_bytes))
        for name, b, heads, d, nq, nk in prtc_cases:
            flops = 4 * b * heads * d * nq * nk * (3 if backward else 1)
            inputs = [torch.randn(b, heads, n, d, device=device, dtype=dtype) for n in (nq, nk, nk)]
            methods = {"SDPA": F.scaled_dot_product_attention}
            if triton_runs(device):
                methods["triton"] = lambda q, k, v: prtc_cross_attention(q, k, v, impl="triton")
            for method, attend in methods.items():
                rows.append(measure("PRTC", name, method, backward, attend, inputs, flops, device, warmup, reps,
                                    4 * b * heads * nq * nk * 3, max_bytes))
    for row in rows:                      # speed-up against the dense baseline of the same case
        base = next((r for r in rows if r["op"] == row["op"] and r["case"] == row["case"]
                     and r["backward"] == row["backward"] and r["method"] in ("dense SDPA", "SDPA")), None)
        if base and base.get("median_ms") and row.get("median_ms"):
            row["speedup"] = base["median_ms"] / row["median_ms"]
    return rows


def measure(op: str, case: str, method: str, backward: bool, attend: Callable, inputs: list[torch.Tensor],
            flops: int, device: torch.device, warmup: int, reps: int, need: int, max_bytes: int) -> dict:
    row = {"op": op, "case": case, "method": method, "backward": backward, "shape": [list(x.shape) for x in inputs],
           "flops": flops}
    if need > max_bytes:
        row["skipped"] = f"needs ~{need / 2**30:.1f} GiB of score tensors (limit {max_bytes / 2**30:.0f} GiB)"
        print(f"{op:6} {case:14} {method:11} {'fwd+bwd' if backward else 'fwd':7} skipped: {row['skipped']}")
        return row
    try:
        times = time_ms(runner(attend, inputs, backward), device, warmup, reps)
    except Exception as e:               # a method that fails (a compile error, say) is recorded; the rest still run
        row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        print(f"{op:6} {case:14} {method:11} {'fwd+bwd' if backward else 'fwd':7} error: {row['error']}")
        return row
    median = statistics.median(times)
    row.update(median_ms=median, p90_ms=percentile(times, 90), p99_ms=percentile(times, 99), reps=reps,
               tflops=flops / median / 1e9)
    print(f"{op:6} {case:14} {method:11} {'fwd+bwd' if backward else 'fwd':7} {median:9.3f} ms "
          f"{row['tflops']:8.4f} TFLOP/s")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def machine(device: torch.device) -> dict:
    """Where the numbers come from (the CPU is shared, hence the load average)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpu.read_text().splitlines()
                 if line.startswith("model name")] if cpu.exists() else []
        name = names[0] if names else platform.processor() or platform.machine()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "threads": torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0], "date": datetime.datetime.now().isoformat(timespec="seconds")}


def markdown(meta: dict, rows: list[dict]) -> str:
    shift = "Mw//2" if meta["shifted"] else "0"
    lines = [f"# Attention kernels on {meta['device']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, dtype {meta['dtype']}, shift {shift}, "
             f"{meta['threads']} threads, load average {meta['load_avg_1min']:.1f} at the start, {meta['date']}. "
             f"Median of {meta['reps']} reps after {meta['warmup']} warm-up; TFLOP/s counts useful FLOPs only; "
             "speed-up vs dense SDPA.", "",
             "| op | case | pass | method | median ms | p90 ms | p99 ms | TFLOP/s | speed-up |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['op']} | {r['case']} | {'fwd+bwd' if r['backward'] else 'fwd'} | {r['method']} |"
        if "skipped" in r or "error" in r:
            lines.append(f"{head} {'skipped: ' + r['skipped'] if 'skipped' in r else r['error']} | | | | |")
        else:
            speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
            lines.append(f"{head} {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                         f"{r['tflops']:.4f} | {speedup} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--shifted", action="store_true", help="shift Mw//2 (partial border cubes) instead of 0")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on CUDA, 1 on the CPU")
    parser.add_argument("--reps", type=int, default=None, help="default: 100 on CUDA, 5 on the CPU")
    parser.add_argument("--max-gib", type=float, default=None, help="skip methods needing more (default 60 / 6)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    reps = args.reps if args.reps is not None else (100 if cuda else 5)
    max_bytes = int((args.max_gib or (60 if cuda else 6)) * 2**30)
    torch.manual_seed(0)
    meta = machine(device) | {"dtype": str(dtype).replace("torch.", ""), "shifted": args.shifted, "warmup": warmup,
                              "reps": reps}
    rows = bench(device, dtype, warmup, reps, args.shifted, max_bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"kernels-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": meta, "results": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(meta, rows))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
