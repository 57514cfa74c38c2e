"""A short learning-rate sweep of VLP-RVOS prompt tuning, with and without gradient accumulation (issue 20).

    PYTHONPATH=. .venv/bin/python benchmarks/rvos_lr_sweep.py                  # 4 runs of 12 min, 2 at a time
    PYTHONPATH=. .venv/bin/python benchmarks/rvos_lr_sweep.py --minutes 2 --runs acc1-lr1e-3
    PYTHONPATH=. .venv/bin/python benchmarks/rvos_lr_sweep.py --minutes 80 --runs acc4-lr3e-3 \
        --videos 200 --name rvos_lr_long                                       # one long run

Every run is `rvos-edge train --stage rvos` on the demo preset from the shipped demo checkpoint's
CLIP, or the one `--clip` names (written once in OpenAI's layout to WORK/clip.safetensors), the prompts and heads from scratch,
one thread, stopped by `--time-budget` (the cosine follows the time), `--parallel` runs at a time
(default 2: one core each on a 2-core machine). RUNS: batch 2 at lr 1e-3 (the first leg of the shipped recipe, the one
that plateaued), and batch 2 x `--accumulate 4` at three learning rates; warm-up over the first 200
samples in each. Each run is then packed with that CLIP and scored by the torch engine on 20 held-out
synthetic videos (`--videos`, default 20; `rvos-edge eval`).

Reported per run: optimizer steps, samples seen, the Dice loss (the mean of the steps logged every
10 steps, in windows of WINDOW samples; the training loss is Dice 5 + focal 2), and J&F, overall and
on the motion and reappearance kinds. Writes
benchmarks/results/<machine>/NAME.{json,md} (`--name`, default rvos_lr_sweep; machine:
rvos_edge.bench.machine_name).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rvos_edge.bench import environment, machine_name, save_results  # noqa: E402
from rvos_edge.data import HELDOUT_SEED  # noqa: E402
from rvos_edge.train.state import read_log  # noqa: E402

BATCH = 2
WARMUP_SAMPLES = 200
WINDOW = 400            # samples per point of the loss curve
RUNS = {"acc1-lr1e-3": (1, 1e-3), "acc4-lr3e-4": (4, 3e-4), "acc4-lr1e-3": (4, 1e-3), "acc4-lr3e-3": (4, 3e-3)}


def cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "rvos_edge.cli", *map(str, argv)]


def write_clip(path: Path) -> Path:
    """The shipped demo checkpoint's CLIP in OpenAI's key layout (what --clip-weights reads)."""
    if not path.is_file():
        from safetensors.torch import save_file

        from rvos_edge.demo import DEMO_CHECKPOINT
        from rvos_edge.model import load_checkpoint

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in load_checkpoint(DEMO_CHECKPOINT).clip.state_dict().items()}, path)
    return path


def train(name: str, clip: Path, work: Path, seconds: int) -> subprocess.Popen:
    accumulate, lr = RUNS[name]
    return subprocess.Popen(cli("train", "--stage", "rvos", "--clip-weights", clip, "--out", work / name,
                                "--steps", 10**6, "--batch-size", BATCH, "--accumulate", accumulate, "--lr", lr,
                                "--warmup", WARMUP_SAMPLES // (BATCH * accumulate), "--threads", 1,
                                "--time-budget", seconds, "--save-every", 10**6),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def score(name: str, clip: Path, work: Path, videos: int) -> dict[str, Any]:
    """Steps, samples, the loss curve and J&F of run `name`."""
    accumulate, lr = RUNS[name]
    run = work / name
    packed = run / "full.safetensors"
    subprocess.run(cli("pack", run / "model.safetensors", "--clip-weights", clip, "--out", packed), check=True,
                   capture_output=True)
    report = run / "jf.json"
    subprocess.run(cli("eval", packed, "--data", f"synthetic:{HELDOUT_SEED}:{videos}", "--backend", "torch",
                       "--threads", 2, "--json", report), check=True, capture_output=True)
    log = [e for e in read_log(run) if "loss" in e]
    per_step = BATCH * accumulate
    windows: dict[int, list[dict[str, Any]]] = {}
    for e in log:
        windows.setdefault((e["step"] * per_step - 1) // WINDOW, []).append(e)
    curve = [{"samples": (w + 1) * WINDOW, "loss": statistics.mean(e["loss"] for e in es),
              "dice": statistics.mean(e["dice"] for e in es)} for w, es in sorted(windows.items())]
    jf = json.loads(report.read_text())
    state = json.loads((run / "train_state.json").read_text())          # the step saved when the time ran out
    return {"run": name, "accumulate": accumulate, "lr": lr, "batch": BATCH, "steps": state["step"],
            "samples": state["step"] * per_step, "seconds": sum(leg["seconds"] for leg in state["legs"]),
            "curve": curve, "jf": jf["overall"]["J&F"], "j": jf["overall"]["J"], "f": jf["overall"]["F"],
            "by_kind": {k: v["J&F"] for k, v in jf["by_kind"].items()}}


def markdown(result: dict[str, Any]) -> str:
    env, runs = result["environment"], result["runs"]
    points = sorted({p["samples"] for r in runs for p in r["curve"]})
    lines = [f"# VLP-RVOS prompt tuning: a learning-rate sweep on {result['machine']}", "",
             (f"{env['cpu_model']}, {env['usable_cores']} cores (load average {env['load_average_1m']:.1f} at the "
              f"start); demo preset on {result['clip']}, prompts from scratch, batch {BATCH}, one thread per run, "
              f"{result['parallel']} run(s) at a time, {result['minutes']:g} minutes each "
              f"(benchmarks/rvos_lr_sweep.py). J&F: torch engine on {result['videos']} held-out synthetic videos "
              f"(seed {HELDOUT_SEED})."), "",
             "| run | accumulate | lr | steps | samples | J&F | J | F | motion | reappearance |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['accumulate']} | {r['lr']:g} | {r['steps']} | {r['samples']} | {r['jf']:.3f} | "
              f"{r['j']:.3f} | {r['f']:.3f} | {r['by_kind'].get('motion', float('nan')):.3f} | "
              f"{r['by_kind'].get('reappearance', float('nan')):.3f} |" for r in runs]
    lines += ["", f"Dice loss (mean of the logged steps) per window of {WINDOW} samples:", "",
              "| samples | " + " | ".join(r["run"] for r in runs) + " |", "|---:|" + "---:|" * len(runs)]
    for s in points:
        cells = [next((f"{p['dice']:.3f}" for p in r["curve"] if p["samples"] == s), "-") for r in runs]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0, help="training time per run")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--videos", type=int, default=20, help="held-out videos J&F is measured on")
    parser.add_argument("--name", default="rvos_lr_sweep", help="results file stem")
    parser.add_argument("--clip", type=Path, help="OpenAI-layout CLIP weights under the model (default: the shipped "
                        "demo checkpoint's, written to WORK/clip.safetensors)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "rvos_lr_sweep")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.minutes <= 0 or args.parallel < 1 or args.videos < 1:
        parser.error("--minutes must be > 0, --parallel and --videos >= 1")
    env = environment()
    clip = args.clip or write_clip(args.work / "clip.safetensors")
    if not clip.is_file():
        parser.error(f"--clip {clip}: no such file")
    for start in range(0, len(args.runs), args.parallel):
        group = args.runs[start:start + args.parallel]
        procs = {name: train(name, clip, args.work, round(60 * args.minutes)) for name in group}
        for name, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"rvos_lr_sweep: run {name} failed: {err.strip()[-2000:]}")
            print(f"rvos_lr_sweep: {name} trained", flush=True)
    runs = [score(name, clip, args.work, args.videos) for name in args.runs]
    for r in runs:
        print(f"rvos_lr_sweep: {r['run']}: {r['steps']} steps, {r['samples']} samples, J&F {r['jf']:.3f}", flush=True)
    result = {"machine": machine_name(env), "environment": env, "minutes": args.minutes,
              "clip": f"the CLIP {args.clip}" if args.clip else "the shipped demo checkpoint's CLIP",
              "parallel": min(args.parallel, len(args.runs)), "videos": args.videos, "runs": runs}
    folder = args.results / result["machine"]
    save_results(folder, args.name, result, markdown(result))
    print(f"rvos_lr_sweep: {len(runs)} runs -> {folder / args.name}.md")


if __name__ == "__main__":
    main()
