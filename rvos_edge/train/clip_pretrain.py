"""Contrastive pretraining of a small CLIP on synthetic image-caption pairs: our stand-in for OpenAI's weights.

    summary = train_clip(CLIPTrainOptions(out="runs/clip", preset="demo"))
    clip = load_openai_clip("runs/clip/clip.safetensors")     # OpenAI key names, heads in the metadata

Pair i of step s is frame `generate_frame(seed, s * batch + i)` of the synthetic
world with a caption naming the objects visible in it, in random order, each as
"[size] colour shape [place]" ("a big red circle on the left, a blue square and a
small green cross"). The CLIP architecture is the preset's; the loss is CLIP's
symmetric cross-entropy over the batch with a learnt temperature (clamped at 100).

Two departures from OpenAI's recipe, both because colour alone tells almost every
caption of a batch from the others, so a CLIP trained on in-batch negatives only
ends a bag of patches (an image and its patch-shuffled copy embed alike) that
knows colour and neither shape nor place:
- Hard negatives (NegCLIP): each image also gets `hard_negatives` captions equal to
  its own but for one attribute (shape, colour, size or place) of one object,
  changed to one that no visible object of that description has; they join the
  image-to-text side of the loss as extra wrong captions.
- A 2D sine-cosine start for the image tower's positional embedding, at the scale
  of the patch embeddings (`sincos_positions`). From OpenAI's small random start
  the positional embedding hardly moves in a CPU budget and the tower never learns
  where anything is (`positions="openai"` keeps OpenAI's start: the shipped demo
  CLIP was trained so). Only a CLIP trained from scratch gets it; a resumed run
  continues from its saved weights.
AdamW with warm-up and cosine decay. The run folder holds clip.safetensors (OpenAI
key names; metadata vision_heads / text_heads, read by `load_openai_clip`) and the
resumable state of rvos_edge.train.state.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from rvos_edge.config import ModelConfig, get_config
from rvos_edge.data import HELDOUT_SEED
from rvos_edge.data.synthetic import COLOURS, RADIUS, SHAPES, SIZE, SceneObject, expression_words, generate_frame
from rvos_edge.errors import UserError
from rvos_edge.fileio import make_folder
from rvos_edge.model.clip import CLIP, CLIP_MEAN, CLIP_STD, load_openai_clip, trim_padding
from rvos_edge.tokenizer import tokenize
from rvos_edge.model.vlprvos import clip_arch
from rvos_edge.runtime.pipeline import prepare_frame
from rvos_edge.train.rvos import warmup_cosine
from rvos_edge.train.state import (OPTIMIZER_FILE, append_log, leg, read_state, resume, save_optimizer,
                                   save_tensors_atomic, write_state)

CLIP_FILE = "clip.safetensors"
POSITIONS = ("sincos", "openai")
"""Starts of the image tower's positional embedding: sincos_positions, or OpenAI's random one."""
MIN_PIXELS = 30


@dataclass
class CLIPTrainOptions:
    out: str
    preset: str = "demo"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 100
    hard_negatives: int = 2
    positions: str = "sincos"
    save_every: int = 250
    log_every: int = 10
    device: str = "cpu"
    resume: bool = False


PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")
PREFIXES = ("", "a picture of ", "a scene with ")
EMPTY = "an empty background"


def _place(x: float, y: float) -> str:
    third = SIZE / 3
    if x < third:
        return PLACES[0]
    if x > 2 * third:
        return PLACES[1]
    if y < third:
        return PLACES[2]
    return PLACES[3] if y > 2 * third else PLACES[4]


@dataclass(frozen=True)
class Mention:
    """One object as a caption names it: "a [size] colour shape [place]"."""

    size: str | None
    colour: str
    shape: str
    place: str | None

    def text(self) -> str:
        return "a " + " ".join(w for w in (self.size, self.colour, self.shape, self.place) if w)


def describe(objects: list[SceneObject], labels: np.ndarray, rng: np.random.Generator) -> tuple[str, list[Mention]]:
    """A caption's prefix and its mentions of the objects with at least MIN_PIXELS visible pixels
    in `labels`, in random order; each names its size half the time and its place 40% of the time."""
    seen = [o for o in objects if np.count_nonzero(labels == o.id) >= MIN_PIXELS]
    mentions = []
    for i in rng.permutation(len(seen)):
        o = seen[int(i)]
        size = o.size if rng.random() < 0.5 else None
        place = _place(*o.centres[0]) if rng.random() < 0.4 else None
        mentions.append(Mention(size, o.colour, o.shape, place))
    return str(rng.choice(PREFIXES)), mentions


def caption_text(prefix: str, mentions: list[Mention]) -> str:
    """"<prefix>a red circle, a blue square and a big green cross"; EMPTY when nothing is mentioned."""
    if not mentions:
        return EMPTY
    parts = [m.text() for m in mentions]
    return prefix + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def caption(objects: list[SceneObject], labels: np.ndarray, rng: np.random.Generator) -> str:
    """A caption naming the objects with at least MIN_PIXELS visible pixels in `labels`, in random order."""
    return caption_text(*describe(objects, labels, rng))


def hard_negative(prefix: str, mentions: list[Mention], rng: np.random.Generator) -> str:
    """The caption of `mentions` with one attribute of one mention changed so that the caption is
    false of the image: a shape or colour into a (colour, shape) no mention has, a size when no
    other mention shares the (colour, shape), a place into another. An empty image's negative
    names one random object. The draw always ends: a scene has at most 5 objects and there are
    6 colours, so some colour change is always possible."""
    if not mentions:
        return caption_text(prefix, [Mention(None, str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), None)])
    present = {(m.colour, m.shape) for m in mentions}
    while True:
        k = int(rng.integers(len(mentions)))
        m = mentions[k]
        attribute = str(rng.choice(["shape", "colour", "size", "place"]))
        options: list[Mention] = []
        if attribute == "shape":
            options = [dataclasses.replace(m, shape=s) for s in SHAPES if (m.colour, s) not in present]
        elif attribute == "colour":
            options = [dataclasses.replace(m, colour=c) for c in COLOURS if (c, m.shape) not in present]
        elif attribute == "size" and m.size is not None:
            if sum((x.colour, x.shape) == (m.colour, m.shape) for x in mentions) == 1:
                options = [dataclasses.replace(m, size=next(s for s in RADIUS if s != m.size))]
        elif attribute == "place" and m.place is not None:
            options = [dataclasses.replace(m, place=p) for p in PLACES if p != m.place]
        if options:
            changed = options[int(rng.integers(len(options)))]
            return caption_text(prefix, mentions[:k] + [changed] + mentions[k + 1:])


def world_token_ids() -> np.ndarray:
    """Sorted ids of every token a caption or a synthetic referring expression can contain, with
    SOS, EOS and the padding id 0: the only rows of the token embedding the synthetic world uses."""
    texts = [*expression_words(), *PLACES, *PREFIXES, EMPTY, "a , and"]
    return np.unique(tokenize(texts))


def zero_unused_tokens(clip: CLIP) -> None:
    """Zero the token embedding rows outside world_token_ids(). No gradient ever reaches those rows
    and weight decay keeps zero at zero, so they stay zero through training; the saved weights
    then compress to about a third (the shipped demo checkpoint relies on this)."""
    unused = torch.ones(clip.token_embedding.num_embeddings, dtype=torch.bool)
    unused[torch.from_numpy(world_token_ids())] = False
    with torch.no_grad():
        clip.token_embedding.weight[unused.to(clip.token_embedding.weight.device)] = 0


def pairs(seed: int, step: int, batch_size: int, image_size: int,
          hard_negatives: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Images uint8 [B, S, S, 3] RGB (resized as the runtime resizes), their captions, and
    `hard_negatives` wrong captions per image (image i's are entries i*K .. i*K+K-1)."""
    images, captions, negatives = [], [], []
    for i in range(step * batch_size, (step + 1) * batch_size):
        frame, objects, labels = generate_frame(seed, i)
        images.append(prepare_frame(np.ascontiguousarray(frame[..., ::-1]), image_size))
        prefix, mentions = describe(objects, labels, np.random.default_rng([seed, i, 3]))
        captions.append(caption_text(prefix, mentions))
        rng = np.random.default_rng([seed, i, 4])
        negatives += [hard_negative(prefix, mentions, rng) for _ in range(hard_negatives)]
    return np.stack(images), captions, negatives


def normalise(images: Tensor) -> Tensor:
    """uint8 [B, S, S, 3] RGB -> float [B, 3, S, S] with CLIP's mean and std."""
    mean = torch.tensor(CLIP_MEAN, device=images.device) * 255
    std = torch.tensor(CLIP_STD, device=images.device) * 255
    return ((images.float() - mean) / std).permute(0, 3, 1, 2)


def contrastive_loss(clip: CLIP, images: Tensor, tokens: Tensor, negatives: Tensor | None = None) -> tuple[Tensor, float]:
    """CLIP's symmetric cross-entropy over the batch, images [B, S, S, 3] uint8 against caption
    tokens [B, 77]; hard negative tokens [N, 77] add N wrong captions to every image's choice
    (the text-to-image side is unchanged). Also the image-to-caption top-1 accuracy."""
    b = len(images)
    img = F.normalize(clip.encode_image(normalise(images)), dim=-1)
    texts = tokens if negatives is None else torch.cat([tokens, negatives])
    txt = F.normalize(clip.encode_text(trim_padding(texts)), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * img @ txt.T
    target = torch.arange(b, device=img.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2
    return loss, (logits.argmax(1) == target).float().mean().item()


def sincos_positions(grid: int, width: int) -> Tensor:
    """[grid * grid + 1, width]: the image tower's positional start. Patch (y, x) gets
    [sin(y w_k), cos(y w_k) | sin(x w_k), cos(x w_k)] with w_k = 10000^(-2k / (width / 2)),
    k < width / 4 (row-major patches as the tower flattens them); the class token gets zeros.
    Entries are in [-1, 1], the scale of the patch embeddings, so position is not drowned."""
    half = width // 2
    freq = 10000.0 ** (-torch.arange(0, half, 2, dtype=torch.float32) / half)
    angle = torch.arange(grid, dtype=torch.float32)[:, None] * freq
    axis = torch.cat([angle.sin(), angle.cos()], dim=1)                  # [grid, half]
    rows = axis[:, None, :].expand(grid, grid, half)
    cols = axis[None, :, :].expand(grid, grid, half)
    patches = torch.cat([rows, cols], dim=-1).reshape(grid * grid, width)
    return torch.cat([torch.zeros(1, width), patches])


def save_clip(clip: CLIP, path: Path, extra: dict[str, str] | None = None) -> None:
    """OpenAI-format safetensors (state dict key names as OpenAI's), heads in the metadata."""
    meta = {"vision_heads": str(clip.arch.vision_heads), "text_heads": str(clip.arch.text_heads),
            "producer": "rvos-edge synthetic CLIP pretraining", **(extra or {})}
    save_tensors_atomic(path, clip.state_dict(), meta)


def retrieval_accuracy(clip: CLIP, cfg: ModelConfig, count: int = 256, device: str = "cpu") -> float:
    """Image-to-caption top-1 accuracy among `count` held-out pairs (seed HELDOUT_SEED)."""
    images, captions, _ = pairs(HELDOUT_SEED, 0, count, cfg.image_size)
    clip.eval()
    with torch.no_grad():
        _, acc = contrastive_loss(clip, torch.from_numpy(images).to(device),
                                  torch.from_numpy(tokenize(captions)).to(device))
    return acc


def patch_shuffle_cosine(clip: CLIP, cfg: ModelConfig, count: int = 64, device: str = "cpu") -> float:
    """Mean cosine between the image embeddings of `count` held-out frames (seed HELDOUT_SEED)
    and of the same frames with their patches in a fixed random order. 1.0: the tower is a bag
    of patches, blind to where anything is; the lower, the more the layout counts."""
    images, _, _ = pairs(HELDOUT_SEED, 0, count, cfg.image_size)
    x = normalise(torch.from_numpy(images).to(device))                    # [B, 3, S, S]
    b, p, g = len(x), cfg.patch_size, cfg.image_size // cfg.patch_size
    patches = x.reshape(b, 3, g, p, g, p).permute(0, 1, 2, 4, 3, 5).reshape(b, 3, g * g, p, p)
    order = torch.randperm(g * g, generator=torch.Generator().manual_seed(0)).to(device)
    shuffled = patches[:, :, order].reshape(b, 3, g, g, p, p).permute(0, 1, 2, 4, 3, 5).reshape(x.shape)
    clip.eval()
    with torch.no_grad():
        a, s = (F.normalize(clip.encode_image(t), dim=-1) for t in (x, shuffled))
    return float((a * s).sum(-1).mean())


PROBES = ("shape", "colour", "place")
"""The zero-shot probes of attribute_accuracy."""


def attribute_accuracy(clip: CLIP, cfg: ModelConfig, count: int = 200, device: str = "cpu") -> dict[str, float]:
    """Zero-shot probes on `count` held-out frames (seed HELDOUT_SEED). For the first object with
    at least 150 visible pixels, how often the true caption scores above every caption that
    changes only one word: "shape" ("a red circle" against "a red square", ...), "colour" ("a
    red circle" against "a blue circle", ...), each into a (colour, shape) that no visible object
    has, and "place" ("a red circle on the left" against the other PLACES). "<probe>_chance" is
    the accuracy of a random pick among the same captions."""
    hits: dict[str, list[bool]] = {probe: [] for probe in PROBES}
    chance: dict[str, list[float]] = {probe: [] for probe in hits}
    clip.eval()
    for i in range(count):
        frame, objects, labels = generate_frame(HELDOUT_SEED, i)
        seen = [o for o in objects if np.count_nonzero(labels == o.id) >= 150]
        if not seen:
            continue
        o, present = seen[0], {(x.colour, x.shape) for x in seen}
        captions = {"shape": [f"a {o.colour} {s}" for s in SHAPES if s == o.shape or (o.colour, s) not in present],
                    "colour": [f"a {c} {o.shape}" for c in COLOURS if c == o.colour or (c, o.shape) not in present],
                    "place": [f"a {o.colour} {o.shape} {p}" for p in PLACES]}
        truth = {"shape": f"a {o.colour} {o.shape}", "colour": f"a {o.colour} {o.shape}",
                 "place": f"a {o.colour} {o.shape} {_place(*o.centres[0])}"}
        image = torch.from_numpy(prepare_frame(np.ascontiguousarray(frame[..., ::-1]), cfg.image_size)[None])
        with torch.no_grad():
            img = F.normalize(clip.encode_image(normalise(image.to(device))), dim=-1)
            for probe, texts in captions.items():
                txt = F.normalize(clip.encode_text(torch.from_numpy(tokenize(texts)).to(device)), dim=-1)
                hits[probe].append(texts[int((img @ txt.T).argmax())] == truth[probe])
                chance[probe].append(1 / len(texts))
    return {**{p: float(np.mean(h)) for p, h in hits.items()}, **{f"{p}_chance": float(np.mean(c)) for p, c in chance.items()}}


def train_clip(opts: CLIPTrainOptions, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a CLIP of the preset's architecture into opts.out; returns a summary."""
    out = Path(opts.out)
    if opts.seed == HELDOUT_SEED:
        raise UserError(f"seed {HELDOUT_SEED} is the held-out evaluation world; train with another --seed")
    if opts.positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {opts.positions!r}")
    if opts.steps < 1 or opts.batch_size < 2 or opts.hard_negatives < 0:
        raise UserError(f"--steps must be >= 1, --batch-size >= 2 and --hard-negatives >= 0, "
                        f"got {opts.steps}, {opts.batch_size} and {opts.hard_negatives}")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch")
    cfg = get_config(opts.preset)
    state = None
    if (out / "train_state.json").exists():
        if not opts.resume:
            raise UserError(f"{out} already holds a training run: pass --resume to continue it or choose another --out")
        state = read_state(out, "clip")
        clip = load_openai_clip(out / CLIP_FILE)
    else:
        make_folder(out)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts.seed)
            clip = CLIP(clip_arch(cfg))
        if opts.positions == "sincos":
            with torch.no_grad():
                clip.visual.positional_embedding.copy_(sincos_positions(clip.arch.grid, clip.arch.vision_width))
        zero_unused_tokens(clip)
    clip.to(opts.device)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    start, legs = resume(optimizer, out, state)
    options = dataclasses.asdict(opts)

    def save(step: int) -> None:
        save_clip(clip, out / CLIP_FILE, {"steps": str(step), "options": json.dumps(options)})
        save_optimizer(optimizer, out / OPTIMIZER_FILE)
        write_state(out, "clip", step, CLIP_FILE, options,
                    legs + [leg(start, step, time.perf_counter() - t0, options)])

    t0, losses = time.perf_counter(), []
    bar = tqdm(range(start, opts.steps), initial=start, total=opts.steps, desc=f"clip {cfg.name}", unit="step",
               disable=not progress)
    for step in bar:
        clip.train()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, opts.steps, opts.warmup, opts.lr, floor=0.05)
        images, captions, negatives = pairs(opts.seed, step, opts.batch_size, cfg.image_size, opts.hard_negatives)
        loss, acc = contrastive_loss(clip, torch.from_numpy(images).to(opts.device),
                                     torch.from_numpy(tokenize(captions)).to(opts.device),
                                     torch.from_numpy(tokenize(negatives)).to(opts.device) if negatives else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{acc:.2f}")
        if (step + 1) % opts.log_every == 0 or step + 1 == opts.steps:
            append_log(out, {"step": step + 1, "lr": optimizer.param_groups[0]["lr"], "loss": losses[-1],
                             "batch_accuracy": acc, "seconds": round(time.perf_counter() - t0, 2)})
        if (step + 1) % opts.save_every == 0 or step + 1 == opts.steps:
            save(step + 1)
    return {"steps": opts.steps, "resumed_from": start, "seconds": time.perf_counter() - t0,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "heldout_accuracy": retrieval_accuracy(clip, cfg, device=opts.device),
            "attribute_accuracy": attribute_accuracy(clip, cfg, device=opts.device),
            "patch_shuffle_cosine": patch_shuffle_cosine(clip, cfg, device=opts.device), "weights": str(out / CLIP_FILE)}
