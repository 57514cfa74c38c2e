"""The demo checkpoint's record: how it was trained and how it (and its ablations) score.

    python benchmarks/demo_report.py --clip runs/clip \\
        --run full=runs/demo --run no-temporal=runs/demo-no-temporal --run no-history=runs/demo-no-history \\
        --eval full=jf_full.json --eval no-temporal=jf_nt.json --eval no-history=jf_nh.json

reads the run folders of `rvos-edge train` (train_state.json, train_log.jsonl) and the
JSON files of `rvos-edge eval --json`, and writes results/demo/training.{json,md} (the
command, wall time and loss at the start and the end of each leg of each run: a resumed run
has a leg per command; the CLIP's held-out image-to-caption accuracy and zero-shot probes)
and results/demo/jf.md (J&F overall and per sample kind, one row per model).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from rvos_edge.bench import environment, machine_name
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.train.clip_pretrain import PROBES
from rvos_edge.train.state import STATE_FILE, read_log, recorded_legs

RESULTS = Path(__file__).resolve().parent / "results" / "demo"
KINDS = ("appearance", "position", "motion", "reappearance")
WINDOW = 20   # log lines (of 10 steps each) averaged for the start and end losses


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            raise SystemExit(f"{flag} takes NAME=PATH, got {v!r}")
        out[name] = Path(path)
    return out


def run_summary(folder: Path) -> dict[str, Any]:
    """Options, steps done, wall seconds and the legs of a run (one per command that trained it, a
    resumed run has several), each with its mean loss over its first and last WINDOW log lines."""
    state = json.loads((folder / STATE_FILE).read_text())
    log, legs = read_log(folder), recorded_legs(folder, state)
    for leg in legs:
        losses = [r["loss"] for r in log if leg["from"] < r["step"] <= leg["to"]]
        leg["loss_start"], leg["loss_end"] = float(np.mean(losses[:WINDOW])), float(np.mean(losses[-WINDOW:]))
    return {"stage": state["stage"], "steps": state["step"], "options": state["options"], "legs": legs,
            "seconds": sum(leg["seconds"] for leg in legs),
            "loss_curve": [{"step": r["step"], "loss": r["loss"]} for r in log[::10]]}


def clip_probes(folder: Path) -> dict[str, Any]:
    """The CLIP's held-out image-to-caption accuracy and its zero-shot probes (attribute_accuracy)."""
    from rvos_edge.config import get_config
    from rvos_edge.model.clip import load_openai_clip
    from rvos_edge.train.clip_pretrain import CLIP_FILE, attribute_accuracy, patch_shuffle_cosine, retrieval_accuracy

    preset = json.loads((folder / "train_state.json").read_text())["options"]["preset"]
    clip, cfg = load_openai_clip(folder / CLIP_FILE), get_config(preset)
    return {"heldout_accuracy": retrieval_accuracy(clip, cfg), "zero_shot": attribute_accuracy(clip, cfg),
            "patch_shuffle_cosine": patch_shuffle_cosine(clip, cfg)}


def _command(stage: str, leg: dict[str, Any]) -> str:
    o = leg["options"]
    words = ["rvos-edge train", f"--stage {stage}", f"--out {o['out']}", f"--preset {o['preset']}",
             f"--steps {o['steps']}", f"--batch-size {o['batch_size']}", f"--lr {o['lr']:g}", f"--warmup {o['warmup']}"]
    if stage == "clip":     # runs from before these options had none: no hard negatives, OpenAI's start, no dense loss
        words += [f"--hard-negatives {o.get('hard_negatives', 0)}", f"--positions {o.get('positions', 'openai')}",
                  f"--region-weight {o.get('region_weight', 0):g}"]
        words += [f"--pooled-weight {o['pooled_weight']:g}"] if o.get("pooled_weight") else []
    if o.get("accumulate", 1) > 1:
        words.append(f"--accumulate {o['accumulate']}")
    if o.get("time_budget"):
        words.append(f"--time-budget {o['time_budget']:g}")
    if o.get("clip_weights"):
        words.append(f"--clip-weights {o['clip_weights']}")
    words += [f"--ablate {a}" for a in o.get("ablate") or ()]
    return " ".join(words + (["--resume"] if leg["from"] else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, required=True, help="run folder of `train --stage clip`")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="run folder of `train --stage rvos`")
    ap.add_argument("--eval", action="append", default=[], metavar="NAME=JSON", help="`rvos-edge eval --json` output")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs, evals = _pairs(args.run, "--run"), _pairs(args.eval, "--eval")

    clip = {**run_summary(args.clip), **clip_probes(args.clip)}
    summaries = {name: run_summary(folder) for name, folder in runs.items()}
    scores = {name: json.loads(path.read_text()) for name, path in evals.items()}
    record = {"machine": machine_name(environment()), "clip": clip, "runs": summaries,
              "jf": {n: {"overall": s["overall"], "by_kind": s["by_kind"], "data": s["data"]} for n, s in scores.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "training.json", json.dumps(record, indent=1).encode())

    lines = [f"# Demo checkpoint: training ({record['machine']})", "",
             "| run | command | steps | wall | loss start -> end |", "|---|---|---:|---:|---|"]
    for name, s in {"clip": clip, **summaries}.items():
        for leg in s["legs"]:
            lines.append(f"| {name} | `{_command(s['stage'], leg)}` | {leg['from']}-{leg['to']} | "
                         f"{leg['seconds'] / 60:.0f} min | {leg['loss_start']:.3f} -> {leg['loss_end']:.3f} |")
    z = clip["zero_shot"]
    lines += ["", f"CLIP held-out image-to-caption top-1 accuracy (256 pairs): {clip['heldout_accuracy']:.3f}. "
              "Zero-shot, the true caption among captions that change only one word (`attribute_accuracy`): "
              + ", ".join(f"{p} {z[p]:.3f} (chance {z[p + '_chance']:.3f})" for p in PROBES)
              + f". Cosine between an image's embedding and its patch-shuffled copy's (`patch_shuffle_cosine`, "
              f"1.0 for a bag of patches): {clip['patch_shuffle_cosine']:.4f}.", ""]
    atomic_write_bytes(args.out / "training.md", "\n".join(lines).encode())

    rows = ["| model | J&F | J | F | " + " | ".join(KINDS) + " |", "|---|---:|---:|---:|" + "---:|" * len(KINDS)]
    for name, s in scores.items():
        o, k = s["overall"], s["by_kind"]
        rows.append(f"| {name} | {o['J&F']:.3f} | {o['J']:.3f} | {o['F']:.3f} | "
                    + " | ".join(f"{k[x]['J&F']:.3f}" if x in k else "-" for x in KINDS) + " |")
    data = sorted({s["data"] for s in scores.values()})
    table = [f"# J&F on {', '.join(data)} ({record['machine']})", "", *rows, ""]
    atomic_write_bytes(args.out / "jf.md", "\n".join(table).encode())
    print("\n".join(lines + table))


if __name__ == "__main__":
    main()
