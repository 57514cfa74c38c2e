"""Every CPU backend and precision on the same clips: `rvos-edge bench DIR --backend all`, plus J&F (issue 21).

    nice .venv/bin/python benchmarks/cpu_backends.py                                 # demo and vit-b16
    nice .venv/bin/python benchmarks/cpu_backends.py --models demo --clips 40

Exports (kept under --work between runs, as benchmarks/openvino_vs_ort.py makes them): demo from the
shipped checkpoint, vit-b16 from random weights (seed 0); each gets an INT8 Q/DQ variant
(`calib --data synthetic:1:8 --samples 8`); demo also an FP16 variant (`build --precision fp16`).
vit-b16 gets none: `--backend all` keeps every setting loaded at once, and FP16 graphs are no CPU
format (ONNX Runtime's CPU provider runs most of their ops in FP32).

Per model: `rvos_edge.bench.run_bench_all` (each setting in its own process: its own peak RSS;
timed interleaved; accuracy against ORT FP32 by `check`'s rule: the mask logits of 2 chained clips
of a synthetic video). For demo, every setting also segments --videos held-out synthetic videos
(seed HELDOUT_SEED, never trained on) through the Segmenter: mean mask IoU against ORT FP32's
masks, and J&F against the ground truth (`rvos_edge.calib.report.score`). vit-b16 has random
weights, so only its mask IoU against FP32 means anything.

Writes benchmarks/results/<machine>/cpu_backends.json and .md (machine as in
rvos_edge.bench.machine_name), with the CPU flags of /proc/cpuinfo; the models of an earlier
run that this one does not measure are kept (each model's result has its own environment).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from openvino_vs_ort import export

from rvos_edge.artifacts.manifest import load_manifest
from rvos_edge.bench import (
    all_markdown_table,
    all_summary_line,
    cpu_flags,
    environment,
    machine_name,
    run_bench_all,
    save_results,
)

REPO = Path(__file__).resolve().parents[1]


def prepare(work: Path, model: str) -> Path:
    """The artifact folder of `model` under `work`, with its INT8 variant and, for demo, its FP16 one."""
    from rvos_edge.calib.fp16 import build_fp16

    folder = export(work, model, int8=True)
    if model == "demo" and "fp16" not in load_manifest(folder).precisions:
        build_fp16(folder, progress=False)
    return folder


def heldout_scores(folder: Path, rows: list[dict[str, Any]], videos: int, threads: int) -> None:
    """Adds "heldout" {mask_iou_vs_fp32, J&F, J, F} to every row that ran: `videos` held-out synthetic videos
    through the Segmenter, masks against ORT FP32's and J&F against the ground truth."""
    from rvos_edge.calib.report import score
    from rvos_edge.data import HELDOUT_SEED, generate
    from rvos_edge.engines import open_engines
    from rvos_edge.eval.evaluate import segment
    from rvos_edge.runtime.segmenter import Segmenter

    samples = [generate(HELDOUT_SEED, i) for i in range(videos)]
    masks = {}
    for r in rows:
        if "fps" in r:
            segmenter = Segmenter(open_engines(folder, r["backend"], r["precision"], threads=threads))
            masks[r["backend"], r["precision"]] = [segment(segmenter, s) for s in samples]
    reference = masks["ort", "fp32"]
    for r in rows:
        if "fps" in r:
            r["heldout"] = {"videos": videos, **score(masks[r["backend"], r["precision"]], reference, samples)}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    libs = env["libraries"]
    intro = (f"{env['cpu_model']}, {env['usable_cores']} cores (shared with other work: the ratios, measured "
             "interleaved, are what counts; each model's load average at its start is given below); "
             f"CPU flags: {', '.join(result['cpu_flags'])}. ONNX Runtime {libs.get('onnxruntime')}, OpenVINO "
             f"{libs.get('openvino')}, {result['threads']} threads each, batch 1, the clip graph alone "
             "(`rvos-edge bench DIR --backend all`, benchmarks/cpu_backends.py): each setting in its own process "
             "(its peak RSS is its VmHWM), clips interleaved across settings; accuracy against ORT fp32 by `check`'s "
             "rule (mask logits of 2 chained clips of synthetic video 0, the precision's tolerance).")
    lines = [f"# Every CPU backend and precision on {result['machine']}", "", intro, ""]
    for m in result["models"].values():
        title = (f"## {m['model']['name']} (Tc={m['clip_len']}, {m['clips']} timed clips per setting, load average "
                 f"{m['environment']['load_average_1m']:.1f} at the start, {m['timestamp']})")
        lines += [title, "",
                  all_markdown_table(m), "", all_summary_line(m) + ".", ""]
        held = [r for r in m["rows"] if "heldout" in r]
        if held:
            n = held[0]["heldout"]["videos"]
            lines += [(f"Held-out synthetic videos ({n}, seed 20240917, whole videos through the Segmenter): mask "
                       "IoU against ORT fp32's masks, J&F against the ground truth."), "",
                      "| backend | precision | mask IoU vs fp32 | J&F | J&F - ORT fp32 (points) |", "|---|---|---:|---:|---:|"]
            base = held[0]["heldout"]["J&F"]
            for r in held:
                h = r["heldout"]
                lines.append(f"| {r['backend']} | {r['precision']} | {h['mask_iou_vs_fp32']:.4f} | {h['J&F']:.4f} | "
                             f"{100 * (h['J&F'] - base):+.2f} |")
            lines.append("")
        else:
            lines += ["Random weights: the mask IoU against FP32 above is the only accuracy measure.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "vit-b16"])
    parser.add_argument("--clips", nargs="+", type=int, default=[40, 8], help="timed clips per setting, per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--videos", type=int, default=8, help="held-out synthetic videos scored (demo)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "cpu_backends")
    args = parser.parse_args()
    clips = args.clips + [args.clips[-1]] * (len(args.models) - len(args.clips))
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    models = {}
    for model, n in zip(args.models, clips):
        folder = prepare(args.work, model)
        result = run_bench_all(folder, frames=n * load_manifest(folder).config.clip_len, threads=args.threads)
        if model == "demo":
            heldout_scores(folder, result["rows"], args.videos, args.threads)
        models[model] = result
        print(all_markdown_table(result), all_summary_line(result), sep="\n", flush=True)
    folder = REPO / "benchmarks" / "results" / machine_name(env)
    earlier = folder / "cpu_backends.json"
    if earlier.is_file():                                    # models measured by an earlier run are kept
        models = {**json.loads(earlier.read_text())["models"], **models}
    result = {"machine": machine_name(env), "environment": env, "cpu_flags": cpu_flags(), "threads": args.threads,
              "models": models}
    save_results(folder, "cpu_backends", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
