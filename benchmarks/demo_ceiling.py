"""The best J&F a model with the demo preset's mask resolution could score on held-out videos.

    python benchmarks/demo_ceiling.py [--count 200] [--preset demo]

The model predicts mask logits on a grid of 4 x (image size / patch) per side (32 x 32
for the demo preset) and the runtime upsamples them bilinearly (`upsample_logits`),
mask = logit > 0. This feeds that path the best logits the grid can hold: each ground
truth mask area-averaged down to the grid, minus 0.5, so a perfect model at that
resolution (`best_masks_at_grid` in rvos_edge/eval/errors.py). Its J&F is the ceiling
that resolution alone puts on the model; the gap between it and the model's own J&F is
what the model does not know. Writes results/demo/ceiling.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from rvos_edge.bench import environment, machine_name
from rvos_edge.config import get_config
from rvos_edge.data import HELDOUT_SEED, SyntheticDataset
from rvos_edge.errors import UserError
from rvos_edge.eval.errors import best_masks_at_grid
from rvos_edge.eval.evaluate import ExpressionScore, score_video, summarize
from rvos_edge.fileio import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="held-out videos (default 200)")
    ap.add_argument("--preset", default="demo", help="model preset whose logit grid is used (default demo)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    try:
        cfg = get_config(args.preset)
        data = SyntheticDataset(HELDOUT_SEED, args.count)
    except UserError as e:
        ap.error(str(e))        # one line, exit 2
    grid = 4 * cfg.image_size // cfg.patch_size
    scores = []
    for sample in tqdm(data, desc="ceiling", unit="video"):
        j, f = score_video(sample.masks, best_masks_at_grid(sample.masks, grid))
        scores.append(ExpressionScore(sample.name, sample.expression, sample.kind, sample.num_frames, j, f))
    summary = summarize(scores)
    record = {"machine": machine_name(environment()), "preset": cfg.name, "logit_grid": grid,
              "data": f"synthetic:{HELDOUT_SEED}:{args.count}", **summary}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "ceiling.json", json.dumps(record, indent=1).encode())
    rows = [("overall", summary["overall"]), *summary["by_kind"].items()]
    lines = [f"# J&F ceiling of a {grid} x {grid} logit grid ({cfg.name}) on {record['data']}", "",
             "| | J&F | J | F |", "|---|---:|---:|---:|",
             *(f"| {name} | {r['J&F']:.3f} | {r['J']:.3f} | {r['F']:.3f} |" for name, r in rows)]
    atomic_write_bytes(args.out / "ceiling.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
