"""`make gpu-check`: every CUDA test and GPU measurement in one prepared command.

    PYTHONPATH=. python3 benchmarks/gpu_check.py              # on a CUDA machine (budget 480 s)
    PYTHONPATH=. python3 benchmarks/gpu_check.py --dry-run    # anywhere: tiny shapes on the CPU, < 2 min
    PYTHONPATH=. python3 benchmarks/gpu_check.py --train    # and the training stage (budget 570 s)

It is written for a GPU machine lent for a few minutes, with nothing installable there
(the project not installed either: it runs from a checkout with PYTHONPATH=.). The stages
run in this order, each in a process of its own with its own time budget (STAGES):

  environment  GPU, driver, CUDA, torch, triton, onnxruntime, numpy, CPU model, cores and flags
  cuda_tests   pytest -m gpu on the kernel and model tests (TEST_FILES)
  kernels      benchmarks/kernels.py: Triton CF-MSA and PRTC against compiled FlexAttention,
               dense-mask SDPA and decomposed, forward and forward+backward, Tc=6, Tc=36, B=8
  throughput   vit-b16 and vit-l14 (random weights), Tc=6, batch 1 and 8, fp16 and bf16
               (autocast), eager and CUDA-graph replay: FPS, p50/p99 ms per clip, peak GPU
               memory, text-encoder latency; a torch.profiler table of the top kernels of
               vit-b16 fp16 at batch 8
  ort_cpu      ONNX Runtime on all CPU cores (`rvos-edge bench` on the demo checkpoint's export)
  compile      torch.compile(mode="max-autotune") of vit-b16 fp16 at batch 1 and 8
  train        (only with --train) the demo recipe, time-boxed to what is left of the budget
               (up to about 5 minutes of training): CLIP pretraining, then VLP-RVOS prompt
               tuning on it, the packed checkpoint and its training summary written to $OUT
               (gpu_stages.stage_train)

Budgets. Before a stage starts, its budget must fit in what is left of --budget; if not,
it is skipped and the report says why. A stage may also use what earlier stages left
unused, as long as the budgets of the stages after it still fit (with MARGIN_S to spare).
A stage that fails, or runs past its time and is killed, is recorded with its error and
what it had measured, and the next stage runs. A stage's process finds the wall-clock time
(time.time()) at which it will be killed in the environment variable gpu_stages.DEADLINE_ENV.

Output: gpu_check.json (SCHEMA), gpu_check.md (made from the JSON by `render_markdown`),
gpu_check.png (FPS against batch) and gpu_check.log (the stages' output, each cut to its
last LOG_TAIL bytes) in benchmarks/results/<gpu>/ (--out), a folder that belongs to this
command: it is replaced as a whole when the run ends. After every stage the report so far
is also copied to $OUT when that is set (the device machine's return folder), so a run cut
short still brings back what it measured.

--dry-run runs every stage on the CPU with tiny shapes (the Triton kernels in the
interpreter, the tiny preset, torch.compile with the "eager" backend), to keep this file
from rotting: CI runs it (tests/test_gpu_check.py). Its numbers are not measurements.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_report import fps_chart, goals, render_markdown
from gpu_stages import DEADLINE_ENV, DRY, GPU, STAGE_RUNS, StageFailed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCHEMA = "rvos-edge-gpu-check/1"
REPORT, MARKDOWN, PLOT, LOG = "gpu_check.json", "gpu_check.md", "gpu_check.png", "gpu_check.log"
LOG_TAIL = 200_000
MARGIN_S = 5.0          # of the slack a stage may take, kept back for starting the next one and writing reports
BUDGET_S, TRAIN_BUDGET_S = 480.0, 570.0     # default --budget without and with --train


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    budget_s: float
    optional: bool = False      # runs only when asked for (--train)


STAGES = (
    Stage("environment", "Environment", 10),
    Stage("cuda_tests", "CUDA correctness (pytest -m gpu)", 150),
    Stage("kernels", "Attention kernels", 80),
    Stage("throughput", "Model throughput", 100),
    Stage("ort_cpu", "ONNX Runtime on the CPU cores", 40),
    Stage("compile", "torch.compile max-autotune", 90),
    Stage("train", "Demo recipe, time-boxed", 90, optional=True),
)


def run_stage(name: str, dry_run: bool, result: Path) -> int:
    """The child process: run one stage, keeping `result` (JSON) up to date with what it has so far."""
    latest: dict = {}

    def write(body: dict) -> None:
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, default=str))
        os.replace(tmp, result)

    def save(data: dict) -> None:
        latest["data"] = data
        write({"data": data, "done": False})

    try:
        write({"data": STAGE_RUNS[name](DRY if dry_run else GPU, save), "done": True})
        return 0
    except StageFailed as e:
        write({"data": e.data, "done": True, "error": str(e)})
        return 1
    except Exception as e:                          # recorded, and the next stage still runs
        traceback.print_exc()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        write({"data": latest.get("data"), "done": False, "error": f"{type(e).__name__}: {first}"})
        return 1


def _spawn(stage: Stage, timeout: float, dry_run: bool, log: Path) -> dict:
    """Run `stage` in a child process for at most `timeout` s; its entry of the report."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result, output = Path(tmp) / "result.json", Path(tmp) / "output.txt"
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        if dry_run:
            env["TRITON_INTERPRET"] = "1"
        env[DEADLINE_ENV] = repr(time.time() + timeout)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage.name, "--result", str(result)]
        t0 = time.monotonic()
        with output.open("wb") as sink:
            child = subprocess.Popen(cmd + (["--dry-run"] if dry_run else []), stdout=sink, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env, start_new_session=True)
            timed_out = False
            try:
                code = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if child.poll() is None or timed_out:       # also on Ctrl-C: never leave a stage running
                    try:
                        os.killpg(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    code = child.wait()
        seconds = time.monotonic() - t0
        text = output.read_bytes()
        with log.open("ab") as f:
            f.write(f"\n===== {stage.name} ({seconds:.1f} s, exit code {code})\n".encode())
            f.write(text[-LOG_TAIL:])
        body = json.loads(result.read_text()) if result.exists() else {}
    entry = {"seconds": round(seconds, 1), "timeout_s": round(timeout, 1), "data": body.get("data")}
    if timed_out:
        return entry | {"status": "timed out", "error": f"killed after {timeout:.0f} s; the data is what it had "
                                                          "measured by then"}
    if code == 0 and body.get("done") and "error" not in body:
        return entry | {"status": "ok"}
    return entry | {"status": "failed", "error": body.get("error") or f"exit code {code} (see {LOG})"}


def gpu_folder(report: dict) -> str:
    """benchmarks/results/ folder name: the GPU's name as a slug ("nvidia-h200"), or dry-run."""
    if report["dry_run"]:
        return "dry-run"
    env = next((s.get("data") for s in report["stages"] if s["name"] == "environment"), None) or {}
    name = (env.get("gpu") or {}).get("name") or "no-gpu"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_all(budget: float, dry_run: bool, train: bool, out: Path | None) -> dict:
    """Every stage in order under `budget` seconds; writes the report (module docstring)."""
    from rvos_edge.fileio import output_folder

    started = time.monotonic()
    report: dict[str, Any] = {
        "schema": SCHEMA, "started": datetime.datetime.now().isoformat(timespec="seconds"), "dry_run": dry_run,
        "budget_s": budget, "train": train,
        "command": f"gpu_check.py --budget {budget:g}" + " --dry-run" * dry_run + " --train" * train,
        "stages": [], "goals": []}
    selected = [s for s in STAGES if train or not s.optional]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        log = Path(tmp) / LOG
        log.write_bytes(b"")
        for i, stage in enumerate(STAGES):
            entry: dict[str, Any] = {"name": stage.name, "title": stage.title, "budget_s": stage.budget_s}
            left = budget - (time.monotonic() - started)
            later = sum(s.budget_s for s in selected if STAGES.index(s) > i)
            if stage not in selected:
                entry |= {"status": "skipped", "reason": "off unless --train is given"}
            elif stage.budget_s > left:
                entry |= {"status": "skipped", "reason": f"needs {stage.budget_s:.0f} s, {max(left, 0):.0f} s "
                                                         "of the budget left"}
            else:
                timeout = max(stage.budget_s, left - later - MARGIN_S)
                print(f"[gpu-check] {stage.name}: up to {timeout:.0f} s ...", flush=True)
                entry |= _spawn(stage, timeout, dry_run, log)
            print(f"[gpu-check] {stage.name}: {entry['status']}"
                  + (f" ({entry['seconds']:.0f} s)" if "seconds" in entry else "")
                  + (f": {entry.get('error') or entry.get('reason')}" if entry["status"] != "ok" else ""), flush=True)
            report["stages"].append(entry)
            report["goals"] = goals(report)
            _mirror(report, log, os.environ.get("OUT"))
        folder = out or RESULTS / gpu_folder(report)
        with output_folder(folder, REPORT) as staging:
            _write(report, log, staging)
    print(f"[gpu-check] wrote {folder}/{{{REPORT},{MARKDOWN},{PLOT},{LOG}}}", flush=True)
    return report


def _write(report: dict, log: Path, folder: Path) -> None:
    from rvos_edge.fileio import atomic_write_bytes

    import plot

    atomic_write_bytes(folder / REPORT, (json.dumps(report, indent=1) + "\n").encode())
    atomic_write_bytes(folder / MARKDOWN, render_markdown(report).encode())
    title, batches, series = fps_chart(report)
    plot.line_chart(folder / PLOT, title, batches, series, "FPS", x_label="batch")
    shutil.copyfile(log, folder / LOG)


def _mirror(report: dict, log: Path, out: str | None) -> None:
    """The report so far into $OUT (the device machine's return folder), when set."""
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        _write(report, log, Path(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, metavar="S",
                        help=f"seconds for all stages (default {BUDGET_S:g}, {TRAIN_BUDGET_S:g} with --train)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny shapes")
    parser.add_argument("--train", action="store_true", help="add the GPU training burst stage")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<gpu>/)")
    parser.add_argument("--stage", choices=list(STAGE_RUNS), help=argparse.SUPPRESS)     # the child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.stage:
        return run_stage(args.stage, args.dry_run, args.result)
    from rvos_edge.errors import UserError
    if args.budget is None:
        args.budget = TRAIN_BUDGET_S if args.train else BUDGET_S
    if args.budget <= 0:
        print(f"gpu-check: --budget must be > 0 seconds, got {args.budget:g}", file=sys.stderr)
        return 2
    try:
        report = run_all(args.budget, args.dry_run, args.train, args.out)
    except UserError as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    failed = [s["name"] for s in report["stages"] if s["status"] in ("failed", "timed out")]
    print(f"[gpu-check] {len(report['stages']) - len(failed)} of {len(report['stages'])} stages without failure"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
