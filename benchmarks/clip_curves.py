"""Probe curves of CLIP pretraining runs: the zero-shot probes against steps and minutes.

    rvos-edge train --stage clip --out runs/c/region --probe-every 50 ...     # one run per recipe
    python benchmarks/clip_curves.py --run dense=runs/c/region --run old=runs/c/old

reads each run folder's train_log.jsonl (the probe entries `--probe-every` writes) and
train_state.json (the options, the legs' wall time), and writes
results/<machine>/NAME.{json,md} (`--name`, default clip_probe_curves; machine:
rvos_edge.bench.machine_name, e.g. intel-xeon-2c). Minutes are training time without the probes' own time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rvos_edge.bench import environment, machine_name  # noqa: E402
from rvos_edge.fileio import atomic_write_bytes  # noqa: E402
from rvos_edge.train.clip_pretrain import PROBES  # noqa: E402
from rvos_edge.train.state import read_log  # noqa: E402


def curve(folder: Path) -> dict[str, Any]:
    """One run: its options, wall time and its probe curve [{step, minutes, <probe>..., shuffle}]."""
    state = json.loads((folder / "train_state.json").read_text())
    rows = []
    for entry in read_log(folder):
        if "probes" in entry:
            p = entry["probes"]
            rows.append({"step": p["step"], "minutes": round(p["seconds"] / 60, 2),
                         **{k: round(v, 3) for k, v in p["attribute_accuracy"].items()},
                         "patch_shuffle_cosine": round(p["patch_shuffle_cosine"], 4)})
    options = state["options"]
    wall = sum(g["seconds"] for g in state["legs"])
    return {"folder": str(folder), "steps": state["step"], "wall_minutes": round(wall / 60, 1),
            "recipe": {k: options.get(k) for k in ("batch_size", "lr", "warmup", "hard_negatives", "positions",
                                                    "region_weight", "pooled_weight")}, "curve": rows}


def markdown(runs: dict[str, dict[str, Any]], machine: str) -> str:
    """A table per probe: rows the runs, columns the probed steps (minutes in the run's own row)."""
    lines = [f"# CLIP probe curves ({machine})", "",
             "Zero-shot probes on held-out frames (`attribute_accuracy`; chance in brackets) against training "
             "steps; each cell is accuracy (training minutes so far).", ""]
    for name, run in runs.items():
        lines.append(f"- **{name}**: {run['steps']} steps, {run['wall_minutes']} min wall, recipe "
                     + ", ".join(f"{k} {v}" for k, v in run["recipe"].items()))
    steps = sorted({r["step"] for run in runs.values() for r in run["curve"]})
    for probe in (*PROBES, "patch_shuffle_cosine"):
        chance = next((r[f"{probe}_chance"] for run in runs.values() for r in run["curve"] if f"{probe}_chance" in r), None)
        lines += ["", f"**{probe}**" + (f" (chance {chance:.3f})" if chance is not None else ""), "",
                  "| run | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---:|" * len(steps)]
        for name, run in runs.items():
            at = {r["step"]: r for r in run["curve"]}
            digits = 4 if probe == "patch_shuffle_cosine" else 3
            lines.append(f"| {name} | " + " | ".join(f"{at[s][probe]:.{digits}f} ({at[s]['minutes']:.1f})" if s in at
                                                     else "" for s in steps) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR", help="a `train --stage clip` folder")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<machine>)")
    ap.add_argument("--name", default="clip_probe_curves", help="results file stem")
    ap.add_argument("--note", default="", help="a line written under the title (how the runs were made)")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "train_state.json").is_file():
            print(f"clip_curves: --run wants NAME=DIR with a CLIP run folder, got {spec!r}", file=sys.stderr)
            return 2
        runs[name] = curve(Path(folder))
    machine = machine_name(environment())
    out = args.out or ROOT / "benchmarks" / "results" / machine
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{args.name}.json", (json.dumps({"machine": machine, "note": args.note, "runs": runs},
                                                         indent=1) + "\n").encode())
    text = markdown(runs, machine)
    if args.note:
        text = text.replace("\n\n", f"\n\n{args.note}\n\n", 1)
    atomic_write_bytes(out / f"{args.name}.md", text.encode())
    print(f"wrote {out}/{args.name}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
