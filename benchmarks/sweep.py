"""Sweep `rvos-edge bench` over models x backends x precisions x clip lengths x batch sizes.

    python benchmarks/sweep.py                                   # tiny demo vit-b16, ort+torch, fp32, Tc 1 6 36, B 1 8
    python benchmarks/sweep.py --models tiny --clip-lens 3 6 --batches 1 --threads 1 --frames 24
    python benchmarks/sweep.py --models my.safetensors --backends ort --precisions fp32 int8 --device cuda

A model is a preset (a checkpoint with random weights is made for it: speed does not
depend on the weights) or a .safetensors checkpoint. The ort backend gets one
artifact folder per clip length (`rvos-edge export --clip-len N`, static graphs),
cached under --work, with fp16 / int8 graphs and TensorRT engines built into it when
first asked for (`rvos-edge build`; int8 calibrated on --calib). Every configuration runs
`rvos-edge bench` in a fresh process (comparable peak memory, no thread settings
leaking between runs) and writes
benchmarks/results/<machine>/<model>_<backend>_<precision>_<device>_tc<N>_b<B>.json; an
existing file is kept unless --force. A configuration that cannot run (a failed
build, the trt backend absent, ...) is listed with its one-line reason. At the
end every JSON in the folder is summarised into summary.md with plots:
fps_<model>.png (engine FPS vs clip length, a line per backend, precision, device and
batch) and latency_<model>.png (per-clip latency distribution of each configuration).
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from plot import box_chart, line_chart  # benchmarks/plot.py, beside this script
from tqdm import tqdm

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.artifacts.precision import precision_names
from rvos_edge.artifacts.tensorrt import engine_entries
from rvos_edge.bench import environment, machine_name, markdown_table, usable_cores
from rvos_edge.config import PRESETS
from rvos_edge.engines import DEVICES, backend_names
from rvos_edge.fileio import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rvos_edge.cli", *args], capture_output=True, text=True)


def _checkpoint(model: str, work: Path) -> Path:
    """The checkpoint for a preset name (made once, random weights) or the given path."""
    if model not in PRESETS:
        return Path(model)
    path = work / f"{model}.safetensors"
    if not path.exists():
        done = _cli("init", model, "--out", str(path))
        if done.returncode:
            sys.exit(f"rvos-edge init {model} failed: {done.stderr.strip()}")
    return path


def _last_line(done: subprocess.CompletedProcess) -> str:
    """Why a command failed: its one-line error (the CLI's "...: error: ..."), else its last stderr line."""
    if done.returncode < 0:
        return f"stopped by signal {-done.returncode}"
    lines = done.stderr.replace("\r", "\n").strip().splitlines()
    return ([line for line in lines if ": error: " in line] or lines or ["failed"])[-1].strip()


def _built(folder: Path, backend: str, precision: str) -> bool:
    """Whether the artifact folder has `backend` graphs (ort) or engines (trt) of `precision`."""
    manifest = load_manifest(folder, verify_files=False)        # `bench` verifies the files
    if backend == "trt":
        return precision in engine_entries(manifest)
    return precision == manifest.precision or precision in manifest.variants


def _artifacts(ckpt: Path, clip_len: int, backend: str, precision: str,
               args: argparse.Namespace) -> tuple[Path | None, str]:
    """(the artifact folder for ckpt at a static clip length, ready for backend/precision, "") or (None, why not).

    Exported once; fp16 / int8 graphs and TensorRT engines are built into it on first use
    (`rvos-edge build`, int8 calibrated on args.calib).
    """
    folder = args.work / f"{ckpt.stem}-tc{clip_len}"
    if not (folder / "manifest.json").exists():
        done = _cli("export", str(ckpt), "--out", str(folder), "--clip-len", str(clip_len))
        if done.returncode:
            return None, _last_line(done)
    if not _built(folder, backend, precision):
        calib = ["--calib", args.calib, "--samples", str(args.calib_samples)] if precision == "int8" else []
        done = _cli("build", str(folder), "--backend", backend, "--precision", precision,
                    "--threads", str(args.threads), *calib)
        if done.returncode:
            return None, _last_line(done)
    return folder, ""


def result_name(model: str, backend: str, precision: str, device: str, clip_len: int, batch: int) -> str:
    return f"{model}_{backend}_{precision}_{device}_tc{clip_len}_b{batch}.json"


def summarise(folder: Path, skipped: list[str]) -> None:
    """summary.md and the plots from every bench result in `folder` (files named by `result_name`)."""
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("*_tc*_b*.json"))]
    results.sort(key=lambda r: (r["model"]["name"], r["backend"], r["precision"], r["device"], r["batch"], r["clip_len"]))
    lines = [f"# Benchmarks on {folder.name}", ""]
    if results:
        env = results[0]["environment"]
        libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
        lines += [f"CPU: {env['cpu_model']} ({env['usable_cores']} usable cores), GPU: {env['gpu'] or 'none'}, "
                  f"{env['memory_gb']} GB RAM, {env['platform']}, Python {env['python']}; {libs}.", "",
                  "Engine FPS = frames / seconds of the timed clips; latency per clip (p50 / p90 / p99, linear "
                  "interpolation); end to end = decode + resize + engine + upsample at batch 1; first result = "
                  "engine load + text encoding + first clip, cold. Each row ran in its own process.", "",
                  markdown_table(results), ""]
        clips = "; ".join(f"{r['model']['name']} {r['backend']} {r['precision']} Tc={r['clip_len']} B={r['batch']}: "
                          f"{r['engine']['clips']} clip{'s' * (r['engine']['clips'] != 1)}, "
                          f"load {r['environment'].get('load_average_1m', float('nan')):.1f}" for r in results)
        lines += [f"Timed clips per row and the 1-minute load average when it started: {clips}.", ""]
    if skipped:
        lines += ["Not run:", "", *(f"- {s}" for s in skipped), ""]
    for model in sorted({r["model"]["name"] for r in results}):
        mine = [r for r in results if r["model"]["name"] == model]
        lengths = sorted({r["clip_len"] for r in mine})
        series: dict[str, list[float | None]] = {}
        for r in mine:
            key = f"{r['backend']} {r['precision']} {r['device']} B={r['batch']}"
            series.setdefault(key, [None] * len(lengths))[lengths.index(r["clip_len"])] = r["engine"]["fps"]
        line_chart(folder / f"fps_{model}.png", f"{model}: engine FPS vs clip length ({folder.name})",
                   [str(n) for n in lengths], series, "frames per second")
        box_chart(folder / f"latency_{model}.png", f"{model}: engine latency per clip, ms ({folder.name})",
                  {f"{r['backend']} {r['precision']} {r['device']} Tc={r['clip_len']} B={r['batch']} thr={r['threads']}":
                   r["engine"]["latencies_ms"] for r in mine})
        lines += [f"![{model} FPS](fps_{model}.png)", f"![{model} latency](latency_{model}.png)", ""]
    atomic_write_bytes(folder / "summary.md", "\n".join(lines).encode())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "demo", "vit-b16"], help="presets or checkpoints")
    p.add_argument("--backends", nargs="+", default=["ort", "torch"], choices=backend_names())
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=precision_names())
    p.add_argument("--clip-lens", nargs="+", type=int, default=[1, 6, 36])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--frames", type=int, default=48, help="frames timed per configuration (whole clips)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=usable_cores())
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rvos-edge-bench",
                   help="checkpoints and exported artifacts (kept between runs)")
    p.add_argument("--calib", default="synthetic:1:16", help="int8 calibration data (as `rvos-edge build --calib`)")
    p.add_argument("--calib-samples", type=int, default=16, help="int8 calibration clips")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<machine>)")
    p.add_argument("--force", action="store_true", help="re-run configurations that already have a result")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / machine_name(environment())
    out.mkdir(parents=True, exist_ok=True)
    skipped = []
    configs = list(itertools.product(args.models, args.backends, args.precisions, args.clip_lens, args.batches))
    for model, backend, precision, clip_len, batch in tqdm(configs, desc="sweep", unit="config"):
        ckpt = _checkpoint(model, args.work)
        name = PRESETS[model].name if model in PRESETS else ckpt.stem
        device = "cuda" if backend == "trt" else args.device
        target = out / result_name(name, backend, precision, device, clip_len, batch)
        if target.exists() and not args.force:
            continue
        what = f"{name} {backend} {precision} {device} Tc={clip_len} B={batch}"
        source, why = (ckpt, "") if backend == "torch" else _artifacts(ckpt, clip_len, backend, precision, args)
        if source is None:
            skipped.append(f"{what}: {why}")
            continue
        done = _cli("bench", str(source), "--backend", backend, "--precision", precision, "--clip-len", str(clip_len),
                    "--batch", str(batch), "--frames", str(args.frames), "--warmup", str(args.warmup),
                    "--threads", str(args.threads), "--device", device, "--json", str(target))
        if done.returncode:
            skipped.append(f"{what}: {_last_line(done)}")
        else:
            tqdm.write(done.stdout.strip().splitlines()[-1])
    summarise(out, skipped)
    print(f"{len(configs) - len(skipped)} of {len(configs)} configurations have results in {out} "
          f"(summary.md, fps_*.png, latency_*.png)")


if __name__ == "__main__":
    main()
