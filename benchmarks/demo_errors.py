"""Where a model's masks go wrong on held-out synthetic videos: an error analysis behind J&F.

    python benchmarks/demo_errors.py ARTIFACTS [--count 200] [--backend ort] [--name full]

runs the model on synthetic:20240917:COUNT and sorts every predicted pixel, per sample kind,
into one of four places (rvos_edge.eval.errors): the target; a look-alike (an object of the
target's colour and shape); another object of the target's colour; anywhere else. It also
gives the predicted area over the target's area and, over the frames where the target is
hidden, how often the mask is not empty. Writes results/demo/errors_NAME.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from rvos_edge.bench import environment, machine_name
from rvos_edge.data import HELDOUT_SEED, SyntheticDataset
from rvos_edge.errors import UserError
from rvos_edge.eval.errors import PLACES, pixel_places
from rvos_edge.eval.evaluate import segment
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.runtime import Segmenter

RESULTS = Path(__file__).resolve().parent / "results" / "demo"
HEADERS = ("on the target", "on a look-alike", "on another object of its colour", "elsewhere")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", help="artifact folder of `rvos-edge export` (or a checkpoint with --backend torch)")
    ap.add_argument("--count", type=int, default=200, help="held-out videos (default 200)")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--name", default="full", help="names the output files")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    try:
        segmenter = Segmenter.open(args.artifacts, backend=args.backend)
        data = SyntheticDataset(HELDOUT_SEED, args.count)
    except UserError as e:
        ap.error(str(e))        # one line, exit 2
    totals: dict[str, dict[str, int]] = {}
    for sample in tqdm(data, desc="errors", unit="video"):
        kind = totals.setdefault(sample.kind, {})
        for key, value in pixel_places(sample, segment(segmenter, sample)).items():
            kind[key] = kind.get(key, 0) + value
    report = {}
    for kind, t in totals.items():
        predicted = sum(t[p] for p in PLACES)
        report[kind] = {**{p: t[p] / max(1, predicted) for p in PLACES}, "predicted_over_target_area": predicted / max(1, t["area"]),
                        "hidden_frames": t["hidden"], "hidden_frames_with_a_mask": t["hidden_predicted"] / max(1, t["hidden"])}
    record = {"machine": machine_name(environment()), "artifacts": args.artifacts, "backend": args.backend,
              "data": f"synthetic:{HELDOUT_SEED}:{args.count}", "by_kind": report}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / f"errors_{args.name}.json", json.dumps(record, indent=1).encode())
    lines = [f"# Where the predicted pixels fall: {args.name} on {record['data']} ({record['machine']})", "",
             "| kind | " + " | ".join(HEADERS) + " | predicted / target area | hidden frames with a mask |",
             "|---|" + "---:|" * (len(PLACES) + 2)]
    for kind, r in report.items():
        lines.append(f"| {kind} | " + " | ".join(f"{r[p]:.2f}" for p in PLACES)
                     + f" | {r['predicted_over_target_area']:.2f} | "
                     + (f"{r['hidden_frames_with_a_mask']:.2f} of {r['hidden_frames']}" if r["hidden_frames"] else "-") + " |")
    atomic_write_bytes(args.out / f"errors_{args.name}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
