"""`rvos-edge` command line (DESIGN.md section 6).

Each subcommand is two small functions here, `_add_<name>(parser)` and
`_run_<name>(args) -> int`, listed in COMMANDS at the bottom. Handlers import
their modules lazily, so commands that only need the runtime (`run` on ONNX
Runtime) never import torch. A `UserError` becomes one line on stderr and exit 2
(output paths that cannot be written are UserErrors of `rvos_edge.fileio`, the
one place outputs are created); Ctrl-C and SIGTERM exit 130. Before that line,
progress bars still open are closed and, if stderr was left mid-line (a bar's last
state in a log, or its erasure), a newline ends it, so the error is a line of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO, Callable, Iterator, Sequence

from rvos_edge.artifacts.precision import CALIBRATION_METHODS, QUANTIZERS, check_backend, get_precision, precision_names
from rvos_edge.engines import DEVICES, backend_names, default_device
from rvos_edge.errors import UserError
from rvos_edge.extras import require


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rvos-edge", description="VLP-RVOS edge deployment toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, handler, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add_arguments(sp)
        sp.set_defaults(handler=handler)
    args = parser.parse_args(argv)
    with _sigterm_interrupts(), _line_tracked_stderr() as stderr:
        try:
            return int(args.handler(args) or 0)
        except UserError as e:
            _end_progress(stderr)
            print(f"rvos-edge {args.command}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            _end_progress(stderr)
            print(f"rvos-edge {args.command}: interrupted", file=sys.stderr)
            return 130


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Meanwhile SIGTERM (systemd, `docker stop`) raises KeyboardInterrupt, as Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _LineTrackedStream:
    """A text stream passing everything to `stream` and remembering the last character written."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.last = "\n"

    def write(self, text: str) -> int:
        if text:
            self.last = text[-1]
        return self._stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _line_tracked_stderr() -> Iterator[_LineTrackedStream]:
    """Meanwhile sys.stderr is a _LineTrackedStream over the real one."""
    original = sys.stderr
    sys.stderr = tracked = _LineTrackedStream(original)
    try:
        yield tracked
    finally:
        sys.stderr = original


def _end_progress(stderr: _LineTrackedStream) -> None:
    """Close the tqdm bars an error left open, then end the line they left stderr on: in a log a bar
    never ends its line, and on a terminal only an erased one ("\\r") leaves the cursor at a clean start."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(tqdm.tqdm._instances):
            bar.close()
    if stderr.last != "\n" and not (stderr.last == "\r" and stderr.isatty()):
        stderr.write("\n")


def _device(args: argparse.Namespace) -> str:
    """--device, defaulting to where the backend runs (rvos_edge.engines.default_device)."""
    backend = getattr(args, "backend", None)
    return args.device or default_device(backend if isinstance(backend, str) else None)


def _model_config(source: str):
    """A preset name or a checkpoint path -> ModelConfig."""
    from rvos_edge.config import PRESETS, get_config
    if source in PRESETS:
        return get_config(source)
    require("torch", f"{source!r} is not a preset ({', '.join(PRESETS)}); reading it as a checkpoint")
    from rvos_edge.model.weights import is_safetensors_path
    if is_safetensors_path(source) or os.path.exists(source):
        from rvos_edge.model.checkpoint import read_checkpoint_config
        return read_checkpoint_config(source)
    raise UserError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file")


def _add_engine_arguments(p: argparse.ArgumentParser, clip_len_help: str = "frames per clip (default: the model's)") -> None:
    """The engine options of every command that opens a folder or checkpoint: --backend, --precision, --clip-len,
    --device, --threads (each read from its registry)."""
    p.add_argument("--backend", choices=backend_names(), help="default: ort for a folder, torch for a checkpoint")
    p.add_argument("--precision", default="fp32", choices=precision_names())
    p.add_argument("--clip-len", metavar="N", type=int, help=clip_len_help)
    p.add_argument("--device", choices=DEVICES, help="default: cuda for --backend trt, else cpu")
    p.add_argument("--threads", metavar="N", type=int, help="CPU threads of the engine (default: all cores)")


def _add_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="tiny, demo, vit-b16 or vit-l14")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors, or .safetensors.gz compressed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the learnable parts' initialisation")
    p.add_argument("--clip-weights", help="OpenAI-format CLIP weights (random CLIP when omitted)")
    p.add_argument("--trainable-only", action="store_true",
                   help="store only the non-CLIP weights and the CLIP file's sha256")


def _run_init(args: argparse.Namespace) -> int:
    require("torch", "this command")
    from rvos_edge.config import get_config
    from rvos_edge.model import build_model, save_checkpoint
    cfg = get_config(args.preset)
    out = Path(args.out)
    if args.clip_weights and not os.path.isfile(args.clip_weights):
        raise UserError(f"CLIP weights {args.clip_weights} do not exist")
    model = build_model(cfg, args.clip_weights, seed=args.seed)
    save_checkpoint(model, out, trainable_only=args.trainable_only)
    counts = model.parameter_counts()
    learnable = sum(c["learnable"] for c in counts.values())
    frozen = sum(c["frozen"] for c in counts.values())
    clip = args.clip_weights or "random CLIP"
    print(f"wrote {out}: preset {cfg.name}, {learnable:,} learnable + {frozen:,} frozen parameters, "
          f"seed {args.seed}, {clip}")
    return 0


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="CKPT|PRESET")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of tables")


def _run_info(args: argparse.Namespace) -> int:
    require("torch", "this command")
    import torch

    from rvos_edge.model import VLPRVOS
    cfg = _model_config(args.source)
    with torch.device("meta"):                 # counts need shapes only: no memory, no init
        counts = VLPRVOS(cfg).parameter_counts()
    learnable = sum(c["learnable"] for c in counts.values())
    frozen = sum(c["frozen"] for c in counts.values())
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "learnable": learnable, "frozen": frozen, "modules": counts}, indent=2))
        return 0
    for key, value in cfg.to_dict().items():
        print(f"{key:18} {value}")
    print()
    print(f"{'module':18} {'learnable':>14} {'frozen':>14}")
    for name, c in counts.items():
        print(f"{name:18} {c['learnable']:>14,} {c['frozen']:>14,}")
    print(f"{'total':18} {learnable:>14,} {frozen:>14,}")
    return 0


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="DIR|CKPT", nargs="?",
                   help="artifact folder (ort) or .safetensors checkpoint (torch); not with --server")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", metavar="PATH", help="video file")
    src.add_argument("--frames", metavar="DIR", help="folder of images, taken in natural name order")
    src.add_argument("--camera", metavar="N", type=int, help="camera index (stop with --max-frames or Ctrl-C)")
    p.add_argument("--expr", metavar="TEXT", action="append", required=True,
                   help="referring expression; repeat for several (one decode, a mask folder each)")
    p.add_argument("--out", metavar="OUT", help="output folder (default runs/<source name>)")
    _add_engine_arguments(p, "frames per clip (default: the model's, within the engine's range)")
    p.add_argument("--max-frames", metavar="N", type=int, help="stop after N frames")
    p.add_argument("--server", metavar="URL", help="segment on `rvos-edge serve` at grpc://HOST:PORT "
                   "(RemoteSegmenter, one stream per expression) instead of DIR|CKPT here")


def _run_run(args: argparse.Namespace) -> int:
    from rvos_edge.runtime.run import run_command
    remote = None
    if args.server is not None:
        given = (("DIR|CKPT", args.path), ("--backend", args.backend), ("--clip-len", args.clip_len),
                 ("--device", args.device), ("--threads", args.threads))
        engine_flags = [flag for flag, value in given if value is not None]
        if engine_flags or args.precision != "fp32":
            raise UserError(f"--server runs the server's model: drop {', '.join(engine_flags) or '--precision'}")
        from functools import partial

        from rvos_edge.serving.client import RemoteSegmenter, parse_url
        remote = partial(RemoteSegmenter, parse_url(args.server))
    elif args.path is None:
        raise UserError("give an artifact folder or checkpoint (DIR|CKPT), or --server URL")
    return run_command(args.path, expressions=args.expr, video=args.video, frames=args.frames, camera=args.camera,
                       out=args.out, backend=args.backend, precision=args.precision, clip_len=args.clip_len,
                       max_frames=args.max_frames, device=None if remote else _device(args), threads=args.threads,
                       remote=remote)


def _clip_len_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    return lo, hi


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact folder to write")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--clip-len", type=int, metavar="N", help="static clip length (default: the config's)")
    length.add_argument("--clip-len-range", type=_clip_len_range, metavar="MIN:MAX", help="dynamic clip length range")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--attention", default="decomposed", choices=["decomposed", "plugin"],
                   help="decomposed: CF-MSA as standard ops (runs everywhere); plugin: also a clip graph with one "
                        "CubeFrameAttention TensorRT plugin node per CF-MSA (TensorRT only)")
    p.add_argument("--clip-weights", help="CLIP weights completing a trainable-only checkpoint")


def _run_export(args: argparse.Namespace) -> int:
    require("torch", "this command")
    from rvos_edge.export.onnx_export import export_artifacts
    manifest, errors = export_artifacts(args.checkpoint, args.out, clip_len=args.clip_len if args.clip_len is not None else args.clip_len_range,
                                        opset=args.opset, attention=args.attention, clip_weights=args.clip_weights)
    lo, hi = manifest.clip_len
    worst = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    print(f"exported {manifest.config.name} to {args.out}: clip length {lo if lo == hi else f'{lo}..{hi}'}, "
          f"opset {manifest.opset}, verified against PyTorch (max abs error {worst})")
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="DIR|CKPT", help="artifact folder (ort) or .safetensors checkpoint (torch)")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="synthetic:SEED:COUNT (generated videos; the held-out set is synthetic:20240917:200), "
                        "a Ref-YouTube-VOS / Ref-DAVIS17 folder, or a folder with expressions.json")
    p.add_argument("--split", help="split of a Ref-YouTube-VOS / Ref-DAVIS17 folder (default: its only split)")
    p.add_argument("--limit", "--videos", dest="limit", type=int, metavar="N", help="evaluate the first N expressions")
    _add_engine_arguments(p)
    p.add_argument("--json", metavar="FILE", help="write scores (overall, per kind, per expression) to FILE")


def _run_eval(args: argparse.Namespace) -> int:
    from rvos_edge.eval.evaluate import run_eval
    run_eval(args.path, args.data, split=args.split, backend=args.backend, precision=args.precision,
             clip_len=args.clip_len, limit=args.limit, json_path=args.json, device=_device(args), threads=args.threads)
    return 0


def _add_flops(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="PRESET|CKPT")
    p.add_argument("--clip-len", type=int, metavar="N", help="frames per clip (default: the config's)")
    p.add_argument("--video-frames", type=int, default=100, metavar="N",
                   help="frames the one text encoding is spread over (default 100)")
    p.add_argument("--verify", action="store_true",
                   help="also count with torch's FlopCounterMode on the meta device and compare")
    p.add_argument("--json", metavar="FILE", help="write the per-module counts to FILE")


def _run_flops(args: argparse.Namespace) -> int:
    if args.verify:
        require("torch", "--verify (torch's FlopCounterMode)")
    from rvos_edge.fileio import atomic_write_bytes
    from rvos_edge.flops import count_flops, cross_check, report_json
    report = count_flops(_model_config(args.source), args.clip_len, args.video_frames)
    check = cross_check(report) if args.verify else None
    print(report.markdown())
    if check is not None:
        worst = max(c["rel_diff"] for c in check.values())
        print(f"FlopCounterMode (meta device): clip {check['clip']['flop_counter'] / 1e9:.3f} GFLOPs, "
              f"text {check['text']['flop_counter'] / 1e9:.3f} GFLOPs; largest relative difference {100 * worst:.3f}%")
    if args.json:
        atomic_write_bytes(args.json, report_json(report, check).encode())
    print(f"{report.config.name} at clip length {report.clip_len}: {report.gmacs_per_frame:.2f} GMACs = "
          f"{report.gflops_per_frame:.2f} GFLOPs per frame (1 multiply-add = 2 FLOPs)")
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="DIR|CKPT", help="artifact folder (ort) or .safetensors checkpoint (torch)")
    p.add_argument("--backend", choices=(*backend_names(), "all"),
                   help="default: ort for a folder, torch for a checkpoint; all: every CPU backend and precision of "
                        "a folder, one table, and the fastest within check's tolerance")
    p.add_argument("--precision", choices=precision_names(), help="default fp32 (--backend all: every precision)")
    p.add_argument("--clip-len", type=int, metavar="N", help="frames per clip (default: the model's)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="clips run together (end to end: batch 1 only)")
    p.add_argument("--frames", type=int, default=48, metavar="N", help="frames timed, rounded up to whole clips")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="warm-up clips after the first (cold) one")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of the engine (default: the usable cores)")
    p.add_argument("--device", choices=DEVICES, help="default: cuda for --backend trt, else cpu")
    p.add_argument("--video", metavar="PATH", help="video for the end-to-end run (default: a synthetic 854x480 one)")
    p.add_argument("--json", metavar="FILE", help="write the full result to FILE")
    p.add_argument("--markdown", metavar="FILE", help="write the one-row markdown table to FILE")


def _run_bench(args: argparse.Namespace) -> int:
    from rvos_edge import bench
    from rvos_edge.fileio import atomic_write_bytes
    if args.backend == "all":
        given = [flag for flag, value in (("--precision", args.precision), ("--video", args.video)) if value]
        if args.device not in (None, "cpu"):
            given.append(f"--device {args.device}")
        if given:
            raise UserError(f"--backend all runs every CPU backend and precision, engine only: leave out {given[0]}")
        result = bench.run_bench_all(args.path, clip_len=args.clip_len, batch=args.batch, frames=args.frames,
                                     warmup=args.warmup, threads=args.threads)
        table, summary = bench.all_markdown_table(result), bench.all_summary_line(result)
    else:
        result = bench.run_bench(args.path, backend=args.backend, precision=args.precision or "fp32",
                                 clip_len=args.clip_len, batch=args.batch, frames=args.frames, warmup=args.warmup,
                                 threads=args.threads, device=_device(args), video=args.video)
        table, summary = bench.markdown_table([result]), bench.summary_line(result)
    print(table)
    if args.json:
        bench.write_json(args.json, result)
    if args.markdown:
        atomic_write_bytes(args.markdown, (table + "\n").encode())
    print(summary)
    return 0


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", required=True, choices=("clip", "rvos"),
                   help="clip: pretrain a small CLIP on synthetic image-caption pairs; "
                        "rvos: VLP-RVOS prompt tuning with CLIP frozen")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (weights, optimizer state, log)")
    p.add_argument("--preset", default="demo", help="architecture (default demo)")
    p.add_argument("--data", default="synthetic", metavar="DATA",
                   help="rvos: 'synthetic' (generated on the fly from --seed), or a Ref-YouTube-VOS / "
                        "Ref-DAVIS17 folder or a folder with expressions.json")
    p.add_argument("--split", help="split of a Ref-YouTube-VOS / Ref-DAVIS17 folder")
    p.add_argument("--clip-weights", metavar="FILE", help="rvos: OpenAI-format CLIP weights (random CLIP when omitted)")
    p.add_argument("--seed", type=int, default=0, help="synthetic world, data order and initialisation")
    p.add_argument("--ablate", action="append", default=[], choices=("temporal", "history"),
                   help="rvos: train without temporal prompts and PRTC, or without historical prompts (repeatable)")
    p.add_argument("--steps", type=int, help="total optimizer steps (default: clip 2000, rvos 3000)")
    p.add_argument("--batch-size", type=int, help="default: clip 64 pairs, rvos 4 samples")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default: clip 5e-4, rvos 5e-5)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: clip 0.1, rvos 5e-4)")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default 100)")
    p.add_argument("--hard-negatives", type=int, metavar="K",
                   help="clip: wrong captions per image that change one attribute of one object (default 2)")
    p.add_argument("--positions", choices=("sincos", "openai"),
                   help="clip: start of the image tower's positional embedding (default sincos: 2D sine-cosine "
                        "at the patch embeddings' scale; openai: OpenAI's small random one)")
    p.add_argument("--region-weight", type=float, metavar="W",
                   help="clip: weight of the dense region-phrase loss, each patch against the phrases of the "
                        "batch's objects and the background (default 1; 0: the earlier recipes)")
    p.add_argument("--pooled-weight", type=float, metavar="W",
                   help="clip: weight of the object-level loss, each object's pooled patches against the "
                        "batch's phrases (default 0)")
    p.add_argument("--probe-every", type=int, metavar="N",
                   help="clip: steps between zero-shot probes written to the log (default 0: at the end only)")
    p.add_argument("--accumulate", type=int, metavar="N",
                   help="rvos: micro-batches of --batch-size per optimizer step (gradient accumulation, default 1)")
    p.add_argument("--time-budget", type=float, metavar="S",
                   help="stop after S seconds of training, saving the step reached; the cosine follows the time")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes making the training batches ahead (default 0: the training process)")
    p.add_argument("--save-every", type=int, help="steps between saves of the resumable state (default 250)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")


def _run_train(args: argparse.Namespace) -> int:
    require("torch", "this command")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                               "weight_decay": args.weight_decay, "warmup": args.warmup,
                               "save_every": args.save_every, "time_budget": args.time_budget,
                               "workers": args.workers}.items() if v is not None}
    common = dict(out=args.out, preset=args.preset, seed=args.seed, device=args.device, resume=args.resume, **given)
    if args.stage == "clip":
        from rvos_edge.train.clip_pretrain import PROBES, CLIPTrainOptions, train_clip
        clip_only = {k: v for k, v in {"hard_negatives": args.hard_negatives, "positions": args.positions,
                                       "region_weight": args.region_weight, "pooled_weight": args.pooled_weight,
                                       "probe_every": args.probe_every}.items() if v is not None}
        if args.accumulate is not None:
            raise UserError("--accumulate belongs to --stage rvos")
        s = train_clip(CLIPTrainOptions(**common, **clip_only))
        probes = s["attribute_accuracy"]
        print(f"trained CLIP ({args.preset}) to {s['weights']}: steps {s['resumed_from']}..{s['steps']} in "
              f"{s['seconds']:.0f} s, loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}, "
              f"held-out image-to-caption accuracy {s['heldout_accuracy']:.3f}, "
              "zero-shot " + ", ".join(f"{p} {probes[p]:.3f} (chance {probes[p + '_chance']:.3f})"
                                       for p in PROBES)
              + f", cosine to patch-shuffled images {s['patch_shuffle_cosine']:.4f}")
        return 0
    clip_flags = {"--hard-negatives": args.hard_negatives, "--positions": args.positions,
                  "--region-weight": args.region_weight, "--pooled-weight": args.pooled_weight,
                  "--probe-every": args.probe_every}
    given_clip = [flag for flag, value in clip_flags.items() if value is not None]
    if given_clip:
        raise UserError(f"{', '.join(given_clip)}: only for --stage clip")
    from rvos_edge.train.rvos import RVOSTrainOptions, train_rvos
    rvos_only = {} if args.accumulate is None else {"accumulate": args.accumulate}
    s = train_rvos(RVOSTrainOptions(data=args.data, split=args.split, clip_weights=args.clip_weights,
                                    ablate=tuple(args.ablate), **common, **rvos_only))
    print(f"trained {args.preset} to {s['checkpoint']}: steps {s['resumed_from']}..{s['steps']} in "
          f"{s['seconds']:.0f} s, loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}")
    return 0


def _add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="DIR", help="artifact folder from `rvos-edge export` (FP32 graphs)")
    p.add_argument("--backend", required=True, choices=backend_names("folder"), help="engine the graphs are built for")
    p.add_argument("--precision", required=True, choices=precision_names())
    p.add_argument("--calib", metavar="DATA", help="int8: calibration data (as `rvos-edge calib --data`)")
    p.add_argument("--samples", type=int, default=64, metavar="N", help="int8: calibration clips (default 64)")
    p.add_argument("--method", default="entropy", choices=CALIBRATION_METHODS,
                   help="int8: how activation ranges are chosen (default entropy)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of ONNX Runtime (default: all cores)")
    p.add_argument("--workspace", type=float, metavar="GB",
                   help="trt: TensorRT workspace limit (default: the GPU's memory)")
    p.add_argument("--max-batch", type=int, default=1, metavar="N",
                   help="trt: largest batch of the engines (default 1)")
    p.add_argument("--timing-cache", metavar="FILE", help="trt: timing cache to reuse and update "
                   "(default DIR/tensorrt.timing.cache)")


def _build_variant(args: argparse.Namespace) -> None:
    """Make the graphs of --precision in the folder, by the precision's transform (rvos_edge.artifacts.precision)."""
    transform = get_precision(args.precision).transform
    if transform == "hint":
        from rvos_edge.calib.artifacts import open_folder
        open_folder(args.path)
        print(f"nothing to build: {args.backend} runs {args.precision} as the FP32 graphs of {args.path} with a "
              f"{args.precision} execution hint")
    elif transform == "int8":
        if not args.calib:
            raise UserError("--precision int8 needs calibration data: --calib DATA (or use `rvos-edge calib`)")
        from rvos_edge.calib.int8 import calibrate
        print(calibrate(args.path, args.calib, method=args.method, samples=args.samples, threads=args.threads).summary())
    elif transform == "fp16":
        from rvos_edge.calib.fp16 import build_fp16
        b = build_fp16(args.path, threads=args.threads)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in b.max_abs_diff.items())
        slow = sorted(set(b.cpu_fp32_ops["text_encoder"]) | set(b.cpu_fp32_ops["clip_model"]))
        print(f"built fp16 graphs in {args.path} ({', '.join(b.files.values())}); vs FP32 on ONNX Runtime CPU: max "
              f"abs difference {diffs}, {100 * b.mask_agreement:.2f}% of mask pixels agree; ORT's CPU provider has "
              f"no FP16 kernel for {', '.join(slow) or 'none'} (run on CUDA or TensorRT for FP16 speed)")
    else:
        from rvos_edge.calib.artifacts import open_folder
        open_folder(args.path)
        print(f"nothing to build: the graphs of {args.path} are {args.precision.upper()} already ({args.backend} runs "
              "them as they are)")


def _run_build(args: argparse.Namespace) -> int:
    """ort, openvino: the precision's graphs; trt: engines from them (INT8: from the Q/DQ graphs or the calibration
    caches that --calib makes first, or that the folder already holds). A precision the backend does not
    run (bf16 but on openvino) is refused first."""
    check_backend(get_precision(args.precision), args.backend)
    if args.backend != "trt":
        _build_variant(args)
        return 0
    from rvos_edge.engines.trt.build import build_engines
    if args.calib and args.precision == "int8":
        _build_variant(args)
    result = build_engines(args.path, args.precision, workspace_gb=args.workspace, max_batch=args.max_batch,
                           timing_cache=args.timing_cache)
    for notice in result.entry.notices:
        print(f"notice: {notice}")
    print(result.summary(args.path))
    return 0


def _add_calib(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="DIR", help="artifact folder from `rvos-edge export` (FP32 graphs)")
    p.add_argument("--data", metavar="DATA", help="calibration data: synthetic:SEED:COUNT, a Ref-YouTube-VOS / "
                   "Ref-DAVIS17 folder, or a folder with expressions.json")
    p.add_argument("--split", help="split of a Ref-YouTube-VOS / Ref-DAVIS17 folder")
    p.add_argument("--method", default="entropy", choices=CALIBRATION_METHODS,
                   help="activation ranges: KL-divergence (default), max |x|, or the 99.99th percentile of |x|")
    p.add_argument("--samples", type=int, default=64, metavar="N", help="calibration clips (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of videos")
    p.add_argument("--exclude", nargs="*", action="extend", metavar="PATTERN",
                   help="fnmatch patterns of node paths kept in float, replacing the default '*/model.head.out/*' "
                        "(e.g. 'text_encoder/*' 'clip_model/prtc/*'; see --list-nodes); none: quantize all")
    p.add_argument("--quantizer", default="auto", choices=QUANTIZERS,
                   help="Q/DQ writer: NVIDIA ModelOpt when installed (auto), onnxruntime.quantization (ort), "
                        "or OpenVINO's NNCF (nncf, the nncf extra; it sets its own ranges, --method then only "
                        "shapes the TensorRT caches)")
    p.add_argument("--trt-version", default="10.3.0", metavar="X.Y.Z",
                   help="TensorRT version that will read the calibration cache (default 10.3.0)")
    p.add_argument("--report", metavar="FILE.json",
                   help="also write an accuracy report (JSON, and markdown beside it) with a sensitivity sweep")
    p.add_argument("--eval-data", metavar="DATA", help="report data (default: --data)")
    p.add_argument("--eval-limit", type=int, metavar="N", help="report: first N expressions only")
    p.add_argument("--no-sweep", action="store_true", help="report: skip the per-group sensitivity sweep")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of ONNX Runtime (default: all cores)")
    p.add_argument("--list-nodes", action="store_true", help="print the quantizable nodes' paths and exit")


def _run_calib(args: argparse.Namespace) -> int:
    from rvos_edge.calib.int8 import calibrate, list_node_paths
    if args.list_nodes:
        paths = list_node_paths(args.path)
        print("\n".join(paths))
        print(f"{len(paths)} quantizable nodes in {args.path}")
        return 0
    if not args.data:
        raise UserError("--data DATA is required (calibration data), unless --list-nodes")
    result = calibrate(args.path, args.data, method=args.method, samples=args.samples, seed=args.seed,
                       exclude=args.exclude, split=args.split, quantizer=args.quantizer, trt_version=args.trt_version,
                       threads=args.threads)
    summary = result.summary()
    if args.report:
        from rvos_edge.calib.report import accuracy_report, write_report
        report = accuracy_report(args.path, args.eval_data or args.data, limit=args.eval_limit,
                                 split=None if args.eval_data else args.split,
                                 calibration=None if args.no_sweep else result, threads=args.threads)
        json_path, md_path = write_report(report, args.report)
        int8 = report["precisions"]["int8"]
        summary += (f"; int8 mask IoU vs FP32 {int8['mask_iou_vs_fp32']:.4f}"
                    + (f", J&F {int8['delta_J&F_points']:+.2f} points" if "delta_J&F_points" in int8 else "")
                    + f"; report {json_path} and {md_path}")
    print(summary)
    return 0


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="DIR", help="artifact folder (its ONNX variants and TensorRT engines)")
    p.add_argument("--backend", action="append", choices=backend_names("folder"), help="only this backend (repeatable)")
    p.add_argument("--precision", action="append", choices=precision_names(),
                   help="only this precision (repeatable)")
    p.add_argument("--clips", type=int, default=2, metavar="N", help="consecutive clips compared (default 2)")
    p.add_argument("--seed", type=int, default=0, help="synthetic video the inputs come from (default 0)")
    p.add_argument("--device", default="cuda", help="GPU of the TensorRT engines (cuda or cuda:N)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of ONNX Runtime and OpenVINO (default: all cores)")
    p.add_argument("--json", metavar="FILE", help="write the rows and tolerances to FILE")


def _run_check(args: argparse.Namespace) -> int:
    from rvos_edge.check import check_folder, failed, format_table, summary_line, write_json
    rows = check_folder(args.path, backends=args.backend, precisions=args.precision, clips=args.clips,
                        seed=args.seed, device=_device(args), threads=args.threads)
    print(format_table(rows))
    if args.json:
        write_json(args.json, args.path, rows)
    print(summary_line(args.path, rows))
    return 1 if failed(rows) else 0


def _add_pack(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint to repack (trainable-only or full)")
    p.add_argument("--clip-weights", metavar="FILE", help="CLIP weights completing a trainable-only checkpoint")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="full checkpoint to write (.safetensors, or .safetensors.gz compressed)")


def _run_pack(args: argparse.Namespace) -> int:
    require("torch", "this command")
    from rvos_edge.model import load_checkpoint, save_checkpoint
    model = load_checkpoint(args.checkpoint, args.clip_weights)
    save_checkpoint(model, args.out)
    size = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out}: full {model.config.name} checkpoint (CLIP included), {size:.1f} MiB")
    return 0


def _add_triton(p: argparse.ArgumentParser) -> None:
    from rvos_edge.serving.triton_repo import BACKENDS, DEFAULT_MAX_BATCH, DEVICES, RepoOptions
    d = RepoOptions()
    p.add_argument("path", metavar="DIR", help="artifact folder from `rvos-edge export` (its ONNX or TensorRT engines)")
    p.add_argument("--out", required=True, metavar="REPO", help="model repository to write (replaced as one unit)")
    p.add_argument("--backend", default=d.backend, choices=BACKENDS, help=f"Triton backend (default {d.backend})")
    p.add_argument("--precision", choices=precision_names(),
                   help="graphs or engines of this precision (default: the folder's base precision)")
    p.add_argument("--max-batch", type=int, metavar="N", help="max_batch_size of both models (default "
                   f"{DEFAULT_MAX_BATCH}; tensorrt: the largest batch the engines were built for)")
    p.add_argument("--instances", type=int, default=d.instances, metavar="N",
                   help=f"model instances per device (default {d.instances})")
    p.add_argument("--device", default=d.device, choices=DEVICES,
                   help=f"onnxruntime: where the instances run (default {d.device}: a GPU when the server has one)")
    p.add_argument("--max-streams", type=int, default=d.max_streams, metavar="N",
                   help=f"streams the clip model batches from at once; later ones wait (default {d.max_streams})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                   help=f"seconds after which a silent stream is released (default {d.idle_timeout_s:g})")
    p.add_argument("--queue-delay", type=float, default=d.queue_delay_ms, metavar="MS",
                   help=f"milliseconds a request waits for others to batch with (default {d.queue_delay_ms:g})")


def _run_triton(args: argparse.Namespace) -> int:
    from rvos_edge.serving.triton_repo import RepoOptions, write_repository
    options = RepoOptions(backend=args.backend, precision=args.precision, max_batch=args.max_batch,
                          instances=args.instances, device=args.device, max_streams=args.max_streams,
                          idle_timeout_s=args.idle_timeout, queue_delay_ms=args.queue_delay)
    print(write_repository(args.path, args.out, options).summary())
    return 0


def _add_serve(p: argparse.ArgumentParser) -> None:
    from rvos_edge.serving.protocol import Limits
    from rvos_edge.serving.server import DEFAULT_PORT, LOOPBACK
    d = Limits()
    p.add_argument("path", metavar="DIR", help="artifact folder (or, with --backend torch, a checkpoint)")
    p.add_argument("--host", default=LOOPBACK, help=f"address to listen on (default {LOOPBACK}: this machine only; "
                   "name another, e.g. 0.0.0.0, to serve the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"gRPC port (default {DEFAULT_PORT}); no HTTP, no metrics")
    p.add_argument("--max-streams", type=int, default=d.max_streams, metavar="N",
                   help=f"streams held at once; a new one beyond is refused (default {d.max_streams})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                   help=f"seconds without a call after which a stream is evicted (default {d.idle_timeout_s:g})")
    p.add_argument("--max-request-mb", type=float, default=d.max_request_mb, metavar="MB",
                   help=f"frames per call, N x H x W x 3 bytes, in MiB (default {d.max_request_mb:g})")
    p.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                   help=f"calls batched, and clips of different streams run in one engine call (default {d.max_batch})")
    p.add_argument("--queue-delay", type=float, default=d.queue_delay_ms, metavar="MS",
                   help=f"milliseconds a call waits for others to batch with (default {d.queue_delay_ms:g})")
    _add_engine_arguments(p)
    p.add_argument("--log", metavar="FILE", help="Triton's own log (default: not kept)")


def _run_serve(args: argparse.Namespace) -> int:
    from rvos_edge.serving.protocol import Limits
    from rvos_edge.serving.server import ServeOptions, serve_command
    limits = Limits(max_streams=args.max_streams, idle_timeout_s=args.idle_timeout, max_request_mb=args.max_request_mb,
                    max_batch=args.max_batch, queue_delay_ms=args.queue_delay)
    return serve_command(args.path, ServeOptions(host=args.host, port=args.port, backend=args.backend,
                                                 precision=args.precision, clip_len=args.clip_len,
                                                 device=_device(args), threads=args.threads, log=args.log,
                                                 limits=limits))


def _add_batch(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", metavar="VIDEOS.jsonl",
                   help='one video a line: {"video": PATH, "expr": [TEXT, ...], "id": KEY (optional)}')
    p.add_argument("--artifacts", required=True, metavar="DIR", help="artifact folder from `rvos-edge export`")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="output folder: OUT/<key>/ as `rvos-edge run` writes it, OUT/index.jsonl (resumable)")
    p.add_argument("--ray", metavar="ADDRESS", default=os.environ.get("RAY_ADDRESS") or None,
                   help="Ray cluster to run on (auto, HOST:PORT, ray://HOST:PORT); default: $RAY_ADDRESS when set, "
                   "else a local Ray started for the command")
    p.add_argument("--actors", type=int, default=1, metavar="N", help="actors, each with its own engines (default 1)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of each actor's engine (default: the cluster's CPUs / the actors)")
    p.add_argument("--backend", default="ort", choices=backend_names("folder"), help="default ort")
    p.add_argument("--precision", default="fp32", choices=precision_names())
    p.add_argument("--device", choices=DEVICES,
                   help="default: cuda for --backend trt, else cpu (cuda: a GPU per actor)")
    p.add_argument("--clip-len", metavar="N", type=int, help="frames per clip (default: the model's)")
    p.add_argument("--json", metavar="FILE", help="also write the run's summary (counts, timings, rates) as JSON")


def _run_batch(args: argparse.Namespace) -> int:
    from rvos_edge.serving.batch import BatchOptions, run_batch
    options = BatchOptions(artifacts=args.artifacts, backend=args.backend, precision=args.precision,
                           device=args.device, clip_len=args.clip_len, actors=args.actors, threads=args.threads,
                           ray_address=args.ray)
    return run_batch(args.videos, args.out, options, args.json)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint to demonstrate (default: the shipped demo one)")
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    p.add_argument("--videos", type=int, default=4, metavar="N",
                   help="held-out synthetic videos to segment (default 4: one of each kind)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of ONNX Runtime (default: all cores)")


def _run_demo(args: argparse.Namespace) -> int:
    require("torch", "this command (it exports the checkpoint)")
    from rvos_edge.demo import run_demo
    r = run_demo(args.checkpoint, args.out, args.videos, args.threads)
    print(f"demo: J&F {r['J&F']:.3f} on {len(r['videos'])} held-out synthetic videos ({r['frames']} frames), "
          f"{r['fps']['end_to_end']:.0f} fps end to end ({r['fps']['engine']:.0f} fps in the engine) with "
          f"ONNX Runtime on the CPU; masks and overlays in {args.out}/")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "init": (_add_init, _run_init, "write a checkpoint for a preset (random or given CLIP weights)"),
    "info": (_add_info, _run_info, "print a config and its learnable/frozen parameter counts"),
    "pack": (_add_pack, _run_pack, "write a self-contained (full) checkpoint, gzip-compressed when it ends in .gz"),
    "export": (_add_export, _run_export, "export a checkpoint to ONNX graphs and a manifest"),
    "run": (_add_run, _run_run, "segment a video, image folder or camera for one or more expressions"),
    "eval": (_add_eval, _run_eval, "J&F of a model on synthetic or real referring-video data"),
    "train": (_add_train, _run_train, "pretrain a synthetic CLIP or prompt-tune VLP-RVOS (resumable)"),
    "flops": (_add_flops, _run_flops, "per-module GMACs and GFLOPs per frame of a preset or checkpoint"),
    "bench": (_add_bench, _run_bench, "FPS, latency percentiles, first-result latency and peak memory"),
    "build": (_add_build, _run_build,
              "FP16 or INT8 (Q/DQ) variants of an artifact folder's graphs, or TensorRT engines"),
    "calib": (_add_calib, _run_calib, "INT8 calibration: Q/DQ graphs, TensorRT caches, accuracy report"),
    "check": (_add_check, _run_check,
              "every backend and precision of a folder against ONNX Runtime FP32 (exit 1 when off)"),
    "triton": (_add_triton, _run_triton,
               "a model repository for NVIDIA Triton Inference Server (the official container)"),
    "serve": (_add_serve, _run_serve,
              "a Triton server here (PyTriton, no container): one history per stream, clips batched across streams"),
    "batch": (_add_batch, _run_batch,
              "segment a list of videos on Ray (local or a cluster): resumable, an index of done and failed videos"),
    "demo": (_add_demo, _run_demo, "export the shipped demo checkpoint and segment held-out synthetic videos on the CPU"),
}

if __name__ == "__main__":
    sys.exit(main())
