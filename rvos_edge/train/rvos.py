"""VLP-RVOS prompt tuning (DESIGN.md section 2): CLIP frozen, everything else learnt.

    summary = train_rvos(RVOSTrainOptions(out="runs/demo", preset="demo", clip_weights="clip.safetensors"))

Each sample gives a window of 2 Tc consecutive frames, run as two clips: the first
with no history, the second with the first's history_out (gradients flow through
it, so the history is learnt). Mask logits are upsampled bilinearly to S x S (as the
runtime upsamples them) and scored against the masks with 5 Dice + 2 focal over
both clips. AdamW (lr 5e-5, weight decay 5e-4 by default) with a linear warm-up and
a cosine decay to a tenth of the rate; gradients clipped to norm 1. With `accumulate`
N, each optimizer step sums the gradients of N micro-batches of `batch_size` (each
loss divided by N), which is the gradient of one batch of N * batch_size: the
samples of step s are those that batch would hold. With a `time_budget` the run
stops when it is spent, saving the step reached, and the cosine follows the time.

Data: "synthetic" draws sample step * batch + i of the synthetic world `seed`
(never the held-out seed); any other spec is a dataset (`open_dataset`), visited
in a seeded random order, epoch after epoch. Everything is a function of (seed,
step), so a resumed run continues exactly where it stopped.

The run folder (see rvos_edge.train.state) holds model.safetensors, a checkpoint
every command reads (trainable-only when --clip-weights is given: the CLIP file is
then needed to load it, and its sha256 is checked).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_edge.config import ModelConfig, get_config
from rvos_edge.data import HELDOUT_SEED, Sample, generate, open_dataset
from rvos_edge.errors import UserError
from rvos_edge.fileio import make_folder
from rvos_edge.model import VLPRVOS, build_model, load_checkpoint, save_checkpoint
from rvos_edge.tokenizer import tokenize_for_prompts
from rvos_edge.runtime.pipeline import prepare_frame
from rvos_edge.train.loader import check_loop_options, step_batches
from rvos_edge.train.progress import TrainingBar
from rvos_edge.train.losses import mask_loss
from rvos_edge.train.state import OPTIMIZER_FILE, append_log, leg, read_state, resume, save_optimizer, write_state

MODEL_FILE = "model.safetensors"


@dataclass
class RVOSTrainOptions:
    out: str
    preset: str = "demo"
    data: str = "synthetic"
    split: str | None = None
    seed: int = 0
    clip_weights: str | None = None
    ablate: tuple[str, ...] = ()   # "temporal" (no temporal prompts / PRTC), "history" (no historical prompts)
    steps: int = 3000
    batch_size: int = 4
    accumulate: int = 1            # micro-batches of batch_size per optimizer step
    lr: float = 5e-5
    weight_decay: float = 5e-4
    warmup: int = 100
    grad_clip: float = 1.0
    time_budget: float | None = None   # seconds: stop when spent, saving the step reached
    workers: int = 0               # processes making the batches (0: this one)
    save_every: int = 250
    log_every: int = 10
    device: str = "cpu"
    resume: bool = False


@dataclass
class Batch:
    """frames uint8 [B, 2Tc, S, S, 3] RGB, masks float [B, 2Tc, S, S] in [0, 1], tokens int64 [B, 77]."""

    frames: Tensor
    masks: Tensor
    tokens: Tensor

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(self.frames.to(device), self.masks.to(device), self.tokens.to(device))


ABLATIONS = {"temporal": "use_temporal_prompts", "history": "use_history"}


def ablated_config(cfg: ModelConfig, ablate: tuple[str, ...]) -> ModelConfig:
    """`cfg` with the named components switched off (ABLATIONS); the name records them ("demo-no-history")."""
    unknown = sorted(set(ablate) - set(ABLATIONS))
    if unknown:
        raise UserError(f"unknown ablation {', '.join(unknown)}: choose from {', '.join(ABLATIONS)}")
    if not ablate:
        return cfg
    off = sorted(set(ablate))
    return dataclasses.replace(cfg, name=f"{cfg.name}-no-{'-no-'.join(off)}", **{ABLATIONS[a]: False for a in off})


def warmup_cosine(step: int, steps: int, warmup: int, lr: float, floor: float = 0.1,
                  time_fraction: float = 0.0) -> float:
    """Learning rate of `step` (0-based): linear warm-up over `warmup` steps, then cosine from lr
    down to floor * lr at the last step. A time-boxed run passes the fraction of its time
    budget spent: after the warm-up the cosine follows steps or time, whichever is further on."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = max(min(1.0, (step - warmup) / max(1, steps - warmup)), min(1.0, time_fraction))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def window(sample: Sample, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`length` consecutive frames and masks from a random start; a short video repeats its last frame."""
    start = int(rng.integers(0, max(0, sample.num_frames - length) + 1))
    idx = np.minimum(np.arange(start, start + length), sample.num_frames - 1)
    return sample.frames[idx], sample.masks[idx]


def make_batch(samples: list[Sample], cfg: ModelConfig, rngs: list[np.random.Generator]) -> Batch:
    """Two-clip windows of `samples`, resized to S x S as the runtime resizes frames."""
    s, length = cfg.image_size, 2 * cfg.clip_len
    frames, masks = [], []
    for sample, rng in zip(samples, rngs):
        if sample.masks is None:
            raise UserError(f"sample {sample.name} has no masks: it cannot be used for training")
        f, m = window(sample, length, rng)
        frames.append(np.stack([prepare_frame(np.ascontiguousarray(x[..., ::-1]), s) for x in f]))
        shrink = m.shape[1] >= s and m.shape[2] >= s
        masks.append(np.stack([cv2.resize(x.astype(np.float32), (s, s), interpolation=cv2.INTER_AREA if shrink
                                          else cv2.INTER_LINEAR) for x in m]))
    tokens = tokenize_for_prompts([x.expression for x in samples], cfg.language_prompts, cfg.context_length).tokens
    return Batch(torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(masks)), torch.from_numpy(tokens))


class TrainData:
    """The samples of each step (module docstring)."""

    def __init__(self, spec: str, seed: int, split: str | None = None) -> None:
        if seed == HELDOUT_SEED:
            raise UserError(f"seed {HELDOUT_SEED} is the held-out evaluation world; train with another --seed")
        self.spec, self.seed = spec, seed
        self.dataset = None if spec == "synthetic" else open_dataset(spec, split)
        if self.dataset is not None and getattr(self.dataset, "seed", None) == HELDOUT_SEED:
            raise UserError(f"synthetic:{HELDOUT_SEED}:... is the held-out evaluation world; do not train on it")

    def batch(self, step: int, batch_size: int, cfg: ModelConfig) -> Batch:
        ids = [step * batch_size + i for i in range(batch_size)]
        if self.dataset is None:
            samples = [generate(self.seed, i) for i in ids]
        else:
            n = len(self.dataset)
            samples = [self.dataset[int(np.random.default_rng([self.seed, i // n]).permutation(n)[i % n])] for i in ids]
        return make_batch(samples, cfg, [np.random.default_rng([self.seed, i, 1]) for i in ids])


def two_clip_logits(model: VLPRVOS, frames: Tensor, tokens: Tensor) -> Tensor:
    """frames uint8 [B, 2Tc, S, S, 3], tokens [B, 77] -> mask logits [B, 2Tc, S, S]: clip 1 without
    history, clip 2 with clip 1's history_out; logits upsampled bilinearly to S x S."""
    cfg = model.config
    b, tc = frames.shape[0], cfg.clip_len
    text = model.encode_text(tokens)
    history = frames.new_zeros((b, cfg.history_prompts, cfg.embed_dim), dtype=torch.float32)
    first, history = model.forward_clip(frames[:, :tc], text, history, history.new_zeros((b, 1)))
    second, _ = model.forward_clip(frames[:, tc:], text, history, history.new_ones((b, 1)))
    logits = torch.cat([first, second], dim=1)
    return F.interpolate(logits, size=frames.shape[2:4], mode="bilinear", align_corners=False)


def step_batch(data: TrainData, cfg: ModelConfig, batch_size: int, accumulate: int, step: int) -> list[Batch]:
    """The `accumulate` micro-batches of `step`: micro-batch j is data.batch(step * accumulate + j),
    so together they hold the samples of one batch of accumulate * batch_size at `step`."""
    return [data.batch(step * accumulate + j, batch_size, cfg) for j in range(accumulate)]


def accumulate_gradients(model: VLPRVOS, batches: list[Batch]) -> dict[str, float]:
    """Add to the parameters' .grad the gradient of the mean of the micro-batches' two-clip losses
    (each micro-batch's loss divided by their number); returns the mean parts {"loss", "dice", "focal"}."""
    sums: dict[str, float] = {}
    for batch in batches:
        loss, parts = mask_loss(two_clip_logits(model, batch.frames, batch.tokens), batch.masks)
        (loss / len(batches)).backward()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: value / len(batches) for key, value in sums.items()}


def train_step(model: VLPRVOS, optimizer: torch.optim.Optimizer, batches: Batch | list[Batch],
               grad_clip: float = 1.0) -> dict[str, float]:
    """One AdamW step on the two-clip loss of a batch, or on the mean over micro-batches
    (accumulate_gradients); returns {"loss", "dice", "focal", "grad_norm"} before the step."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    parts = accumulate_gradients(model, [batches] if isinstance(batches, Batch) else batches)
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    return {**parts, "grad_norm": float(norm)}


def make_optimizer(model: VLPRVOS, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def train_rvos(opts: RVOSTrainOptions, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) into opts.out; returns a summary {"steps", "seconds", "loss_first", "loss_last", ...}."""
    out = Path(opts.out)
    if opts.steps < 1 or opts.batch_size < 1 or opts.accumulate < 1:
        raise UserError(f"--steps, --batch-size and --accumulate must be >= 1, got {opts.steps}, "
                        f"{opts.batch_size} and {opts.accumulate}")
    check_loop_options(opts.time_budget, opts.workers)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch")
    data = TrainData(opts.data, opts.seed, opts.split)
    state = None
    if (out / "train_state.json").exists():
        if not opts.resume:
            raise UserError(f"{out} already holds a training run: pass --resume to continue it or choose another --out")
        state = read_state(out, "rvos")
        model = load_checkpoint(out / MODEL_FILE, opts.clip_weights)
    else:
        model = build_model(ablated_config(get_config(opts.preset), opts.ablate), opts.clip_weights, seed=opts.seed)
        make_folder(out)
    model.to(opts.device)
    optimizer = make_optimizer(model, opts.lr, opts.weight_decay)
    start, legs = resume(optimizer, out, state)
    options = dataclasses.asdict(opts)

    def save(step: int) -> None:
        save_checkpoint(model, out / MODEL_FILE, trainable_only=opts.clip_weights is not None)
        save_optimizer(optimizer, out / OPTIMIZER_FILE)
        write_state(out, "rvos", step, MODEL_FILE, options,
                    legs + [leg(start, step, time.perf_counter() - t0, options)])

    make = functools.partial(step_batch, data, model.config, opts.batch_size, opts.accumulate)
    t0, history, done = time.perf_counter(), [], start
    bar = TrainingBar(f"train {model.config.name}", start, opts.steps, opts.time_budget, disable=not progress)
    for step, batches in zip(range(start, opts.steps), step_batches(make, start, opts.steps, opts.workers)):
        elapsed = time.perf_counter() - t0
        if opts.time_budget is not None and elapsed >= opts.time_budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, opts.steps, opts.warmup, opts.lr,
                                        time_fraction=elapsed / opts.time_budget if opts.time_budget else 0.0)
        parts = train_step(model, optimizer, [b.to(opts.device) for b in batches], opts.grad_clip)
        history.append(parts["loss"])
        done = step + 1
        bar.advance(done, time.perf_counter() - t0, loss=f"{parts['loss']:.3f}")
        if done % opts.log_every == 0 or done == opts.steps:
            append_log(out, {"step": done, "lr": optimizer.param_groups[0]["lr"],
                             "seconds": round(time.perf_counter() - t0, 2), **parts})
        if done % opts.save_every == 0 or done == opts.steps:
            save(done)
    bar.close()
    if done > start and done % opts.save_every and done != opts.steps:
        save(done)
    seconds = time.perf_counter() - t0
    return {"steps": done, "resumed_from": start, "seconds": seconds,
            "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None,
            "checkpoint": str(out / MODEL_FILE)}
