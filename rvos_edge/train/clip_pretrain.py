"""Contrastive pretraining of a small CLIP on synthetic image-caption pairs: our stand-in for OpenAI's weights.

    summary = train_clip(CLIPTrainOptions(out="runs/clip", preset="demo"))
    clip = load_openai_clip("runs/clip/clip.safetensors")     # OpenAI key names, heads in the metadata

Pair i of step s is frame `generate_frame(seed, s * batch + i)` of the synthetic
world with a caption naming the objects visible in it, in random order, each as
"[size] colour shape [place]" ("a big red circle on the left, a blue square and a
small green cross"). The CLIP architecture is the preset's; the loss is CLIP's
symmetric cross-entropy over the batch with a learnt temperature (clamped at 100),
plus, by default, dense region-phrase alignment (`region_phrase_loss`): every patch
token, taken through ln_post and the visual projection into the shared space, is
classified among the phrases of the batch's objects ("the big red circle on the
left": size, colour, shape and place) and a background phrase, with each object's
coverage of the patch as its weight (object and background pixels weigh half each).
Optionally (`pooled_weight`) each object's patch tokens, pooled by coverage, are
also contrasted with the batch's phrases.

Three departures from OpenAI's recipe, all because colour alone tells almost every
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
The dense losses are the third: a caption is one vector for the whole image, so
nothing in it says which patches show the circle; the generator knows every
object's mask, so each patch is told what it shows (`region_weight 0` turns them
off: the shipped demo CLIP and the 3000-step "next recipe" CLIP were trained so).
AdamW with warm-up and cosine decay; with a `time_budget` the run stops when the
budget is spent (saving the step reached) and the cosine follows the time. The run folder holds clip.safetensors (OpenAI
key names; metadata vision_heads / text_heads, read by `load_openai_clip`) and the
resumable state of rvos_edge.train.state.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_edge.config import ModelConfig, get_config
from rvos_edge.data import HELDOUT_SEED
from rvos_edge.data.synthetic import (COLOURS, RADIUS, SHAPES, SIZE, SceneObject, expression_words, generate_frame,
                                      patch_coverage)
from rvos_edge.errors import UserError
from rvos_edge.fileio import make_folder
from rvos_edge.model.clip import CLIP, CLIP_MEAN, CLIP_STD, load_openai_clip, trim_padding
from rvos_edge.tokenizer import tokenize
from rvos_edge.model.vlprvos import clip_arch
from rvos_edge.runtime.pipeline import prepare_frame
from rvos_edge.train.loader import check_loop_options, step_batches
from rvos_edge.train.progress import TrainingBar
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
    region_weight: float = 1.0     # dense region-phrase loss; 0 turns it off (the earlier recipes)
    pooled_weight: float = 0.0     # object-level pooled phrase loss
    time_budget: float | None = None   # seconds: stop when spent, saving the step reached
    workers: int = 0               # processes making the batches (0: this one)
    probe_every: int = 0           # steps between probes written to the log (0: only at the end)
    probe_frames: int = 200        # held-out frames of the zero-shot probes (attribute_accuracy)
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


BACKGROUND = EMPTY
"""The phrase of patches that show no object (region_phrase_loss)."""


def object_phrase(o: SceneObject) -> str:
    """"the big red circle on the left": the object's size, colour, shape and place in its frame."""
    return f"the {o.size} {o.colour} {o.shape} {_place(*o.centres[0])}"


def visible(objects: list[SceneObject], labels: np.ndarray, pixels: int = MIN_PIXELS) -> list[SceneObject]:
    """The objects with at least `pixels` visible pixels in the label map uint8 [S, S]."""
    return [o for o in objects if np.count_nonzero(labels == o.id) >= pixels]


def _pair(seed: int, i: int, image_size: int,
          hard_negatives: int) -> tuple[np.ndarray, str, list[str], list[SceneObject], np.ndarray]:
    """Frame i of world `seed` as uint8 [S, S, 3] RGB (resized as the runtime resizes), its
    caption, `hard_negatives` wrong captions, its objects and its label map uint8 [128, 128]."""
    frame, objects, labels = generate_frame(seed, i)
    image = prepare_frame(np.ascontiguousarray(frame[..., ::-1]), image_size)
    prefix, mentions = describe(objects, labels, np.random.default_rng([seed, i, 3]))
    rng = np.random.default_rng([seed, i, 4])
    return (image, caption_text(prefix, mentions), [hard_negative(prefix, mentions, rng) for _ in range(hard_negatives)],
            objects, labels)


def pairs(seed: int, step: int, batch_size: int, image_size: int,
          hard_negatives: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Images uint8 [B, S, S, 3] RGB (resized as the runtime resizes), their captions, and
    `hard_negatives` wrong captions per image (image i's are entries i*K .. i*K+K-1)."""
    made = [_pair(seed, i, image_size, hard_negatives) for i in range(step * batch_size, (step + 1) * batch_size)]
    return np.stack([m[0] for m in made]), [m[1] for m in made], [n for m in made for n in m[2]]


@dataclass
class CLIPBatch:
    """One step's pairs: images uint8 [B, S, S, 3], caption tokens int64 [B, 77], hard negative
    tokens [B * K, 77] (None when K = 0); with regions, the tokens of the batch's distinct object
    phrases and of BACKGROUND last, int64 [P + 1, 77], and the region targets of region_targets
    (owners int64 [B, N], coverage float [B, Np, N + 1]; `weights` makes them dense)."""

    images: Tensor
    tokens: Tensor
    negatives: Tensor | None
    phrases: Tensor | None = None
    owners: Tensor | None = None
    coverage: Tensor | None = None

    def to(self, device: str | torch.device) -> "CLIPBatch":
        return CLIPBatch(*(None if t is None else t.to(device) for t in
                           (self.images, self.tokens, self.negatives, self.phrases, self.owners, self.coverage)))


def dense_weights(owners: Tensor, coverage: Tensor, phrases: int) -> Tensor:
    """owners int64 [B, N] and coverage [B, Np, N + 1] (region_targets) -> weights [B, Np, P + 1]
    with P = `phrases`: each patch's coverage by the objects of each phrase, then by the background."""
    b, n, k = coverage.shape[0], coverage.shape[1], owners.shape[1]
    weights = coverage.new_zeros(b, n, phrases + 1)
    weights[..., :phrases].scatter_add_(2, owners[:, None, :].expand(b, n, k), coverage[..., :k])
    weights[..., phrases] = coverage[..., k]
    return weights


def region_targets(scenes: list[tuple[list[SceneObject], np.ndarray]],
                   grid: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The distinct phrases (object_phrase) of the visible objects of `scenes` (objects, label map
    [128, 128]) in order of appearance; owners int64 [B, N], the phrase of each image's n-th
    visible object (N: the most any image has; padding 0); and coverage float32 [B, grid * grid,
    N + 1]: each patch's coverage by that object (padding 0), the background last. Pixels of
    objects too little visible to be named count for nothing. Small enough for worker processes
    to hand over; dense_weights expands them."""
    phrases: dict[str, int] = {}
    named = [[(phrases.setdefault(object_phrase(o), len(phrases)), o.id) for o in visible(objects, labels)]
             for objects, labels in scenes]
    most = max((len(seen) for seen in named), default=0)
    owners = np.zeros((len(scenes), most), np.int64)
    coverage = np.zeros((len(scenes), grid * grid, most + 1), np.float32)
    for b, ((_, labels), seen) in enumerate(zip(scenes, named)):
        owners[b, :len(seen)] = [k for k, _ in seen]
        cover = patch_coverage(labels, [i for _, i in seen], grid)             # [n + 1, Np]
        coverage[b, :, :len(seen)] = cover[:-1].T
        coverage[b, :, -1] = cover[-1]
    return list(phrases), owners, coverage


def clip_batch(seed: int, step: int, batch_size: int, image_size: int, hard_negatives: int = 0,
               grid: int | None = None) -> CLIPBatch:
    """The CLIPBatch of `step`: frames step * B .. step * B + B - 1 of world `seed` (those of
    `pairs`), with the region targets of a grid x grid patch split unless grid is None."""
    made = [_pair(seed, i, image_size, hard_negatives) for i in range(step * batch_size, (step + 1) * batch_size)]
    negatives = [n for m in made for n in m[2]]
    batch = CLIPBatch(torch.from_numpy(np.stack([m[0] for m in made])), torch.from_numpy(tokenize([m[1] for m in made])),
                      torch.from_numpy(tokenize(negatives)) if negatives else None)
    if grid is not None:
        phrases, owners, coverage = region_targets([(m[3], m[4]) for m in made], grid)
        batch.phrases = torch.from_numpy(tokenize([*phrases, BACKGROUND]))
        batch.owners, batch.coverage = torch.from_numpy(owners), torch.from_numpy(coverage)
    return batch


def normalise(images: Tensor) -> Tensor:
    """uint8 [B, S, S, 3] RGB -> float [B, 3, S, S] with CLIP's mean and std."""
    mean = torch.tensor(CLIP_MEAN, device=images.device) * 255
    std = torch.tensor(CLIP_STD, device=images.device) * 255
    return ((images.float() - mean) / std).permute(0, 3, 1, 2)


def contrastive_loss(clip: CLIP, images: Tensor, tokens: Tensor, negatives: Tensor | None = None) -> tuple[Tensor, float]:
    """CLIP's symmetric cross-entropy over the batch, images [B, S, S, 3] uint8 against caption
    tokens [B, 77]; hard negative tokens [N, 77] add N wrong captions to every image's choice
    (the text-to-image side is unchanged). Also the image-to-caption top-1 accuracy."""
    return embedding_contrastive_loss(clip, clip.encode_image(normalise(images)), tokens, negatives)


def embedding_contrastive_loss(clip: CLIP, image: Tensor, tokens: Tensor,
                               negatives: Tensor | None = None) -> tuple[Tensor, float]:
    """contrastive_loss from the image embeddings [B, Ce] (unnormalised)."""
    b = len(image)
    img = F.normalize(image, dim=-1)
    texts = tokens if negatives is None else torch.cat([tokens, negatives])
    txt = F.normalize(clip.encode_text(trim_padding(texts)), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * img @ txt.T
    target = torch.arange(b, device=img.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2
    return loss, (logits.argmax(1) == target).float().mean().item()


def image_tokens(clip: CLIP, x: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised images [B, 3, S, S] -> (image embeddings [B, Ce], patch embeddings [B, Np, Ce]):
    every output token of the image tower through ln_post and the visual projection."""
    tokens = clip.visual.ln_post(clip.visual.transformer(clip.visual.embed(x))) @ clip.visual.proj
    return tokens[:, 0], tokens[:, 1:]


def region_phrase_loss(patches: Tensor, texts: Tensor, weights: Tensor, scale: Tensor | float) -> Tensor:
    """Dense region-phrase alignment. patches [B, Np, Ce] and texts [P + 1, Ce] (the batch's
    phrases, the background last), both L2-normalised; weights [B, Np, P + 1] >= 0 (coverage).
    Each patch's logits are scale * cosine to every text, and each (patch, text) pair's
    cross-entropy -log softmax is weighted by its weight: a patch is pulled toward the phrase of
    the object covering it, in proportion to the coverage, and pushed from the other phrases of
    the batch and from the background. The loss is the mean of the weighted means over the
    object columns and over the background column, so that the background, most of every
    image, does not teach the tower to call every patch background."""
    nll = -torch.log_softmax(scale * patches @ texts.T, dim=-1)            # [B, Np, P + 1]
    objects, background = weights[..., :-1], weights[..., -1]
    return ((objects * nll[..., :-1]).sum() / objects.sum().clamp(min=1e-6)
            + (background * nll[..., -1]).sum() / background.sum().clamp(min=1e-6)) / 2


def pooled_phrase_loss(patches: Tensor, texts: Tensor, weights: Tensor, scale: Tensor | float) -> Tensor:
    """Object-level alignment. patches [B, Np, Ce] and phrase texts [P, Ce] L2-normalised, weights
    [B, Np, P] (coverage, no background column): each (image, phrase) with some coverage pools
    its patches by coverage into one vector, normalised, whose cross-entropy over the P phrases
    (scale * cosine) has its own phrase as the target; the mean over those objects."""
    mass = weights.sum(1)                                                    # [B, P]
    b, k = torch.nonzero(mass > 0, as_tuple=True)
    if len(k) == 0:
        return patches.sum() * 0
    pooled = torch.einsum("mn,mnc->mc", weights[b, :, k], patches[b]) / mass[b, k, None]
    return F.cross_entropy(scale * F.normalize(pooled, dim=-1) @ texts.T, k)


def clip_loss(clip: CLIP, batch: CLIPBatch, region_weight: float, pooled_weight: float) -> tuple[Tensor, dict[str, float]]:
    """The pretraining loss of one batch: contrastive, plus region_weight * region_phrase_loss and
    pooled_weight * pooled_phrase_loss when the batch has region targets; and its parts for the log."""
    x = normalise(batch.images)
    if batch.phrases is None or batch.owners is None or batch.coverage is None:
        loss, acc = embedding_contrastive_loss(clip, clip.encode_image(x), batch.tokens, batch.negatives)
        return loss, {"loss": loss.item(), "batch_accuracy": acc}
    image, patches = image_tokens(clip, x)
    contrastive, acc = embedding_contrastive_loss(clip, image, batch.tokens, batch.negatives)
    patches = F.normalize(patches, dim=-1)
    texts = F.normalize(clip.encode_text(trim_padding(batch.phrases)), dim=-1)
    scale = clip.logit_scale.exp().clamp(max=100)
    weights = dense_weights(batch.owners, batch.coverage, len(texts) - 1)
    region = region_phrase_loss(patches, texts, weights, scale)
    pooled = pooled_phrase_loss(patches, texts[:-1], weights[..., :-1], scale)
    loss = contrastive + region_weight * region + pooled_weight * pooled
    return loss, {"loss": loss.item(), "batch_accuracy": acc, "contrastive": contrastive.item(),
                  "region": region.item(), "pooled": pooled.item()}


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


PROBES = ("shape", "colour", "place", "per_patch")
"""The zero-shot probes of attribute_accuracy."""


def patch_phrase_hits(patches: Tensor, texts: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The per-patch probe on one image: patches [Np, Ce], texts [P + 1, Ce] (its objects'
    phrases, the background last), weights [Np, P + 1] (coverage). Over the patches that one
    object covers at least half of: whether the text nearest the patch (cosine) is that object's
    phrase, bool [M], and the number of texts to choose from, float [M] (chance is 1 / that)."""
    owner = weights[:, :-1].argmax(1)
    counted = weights[:, :-1].max(1).values >= 0.5
    nearest = (F.normalize(patches, dim=-1) @ F.normalize(texts, dim=-1).T).argmax(1)
    return (nearest == owner)[counted], torch.full((int(counted.sum()),), float(len(texts)))


def attribute_accuracy(clip: CLIP, cfg: ModelConfig, count: int = 200, device: str = "cpu") -> dict[str, float]:
    """Zero-shot probes on `count` held-out frames (seed HELDOUT_SEED). For the first object with
    at least 150 visible pixels, how often the true caption scores above every caption that
    changes only one word: "shape" ("a red circle" against "a red square", ...), "colour" ("a
    red circle" against "a blue circle", ...), each into a (colour, shape) that no visible object
    has, and "place" ("a red circle on the left" against the other PLACES). "per_patch": over
    the patches of the frames' visible objects (one object covering at least half the patch),
    how often the patch embedding (image_tokens) is nearest to the object's own phrase among
    the frame's object phrases and BACKGROUND (patch_phrase_hits). "<probe>_chance" is the
    accuracy of a random pick among the same captions."""
    hits: dict[str, list[bool]] = {probe: [] for probe in PROBES}
    chance: dict[str, list[float]] = {probe: [] for probe in hits}
    clip.eval()
    grid = cfg.image_size // cfg.patch_size
    for i in range(count):
        frame, objects, labels = generate_frame(HELDOUT_SEED, i)
        image = torch.from_numpy(prepare_frame(np.ascontiguousarray(frame[..., ::-1]), cfg.image_size)[None])
        phrases, owners, coverage = region_targets([(objects, labels)], grid)
        if phrases:
            with torch.no_grad():
                _, patches = image_tokens(clip, normalise(image.to(device)))
                texts = clip.encode_text(torch.from_numpy(tokenize([*phrases, BACKGROUND])).to(device))
            weights = dense_weights(torch.from_numpy(owners), torch.from_numpy(coverage), len(phrases))
            right, choices = patch_phrase_hits(patches[0], texts, weights[0].to(device))
            hits["per_patch"] += right.tolist()
            chance["per_patch"] += (1 / choices).tolist()
        seen = visible(objects, labels, 150)
        if not seen:
            continue
        o, present = seen[0], {(x.colour, x.shape) for x in seen}
        captions = {"shape": [f"a {o.colour} {s}" for s in SHAPES if s == o.shape or (o.colour, s) not in present],
                    "colour": [f"a {c} {o.shape}" for c in COLOURS if c == o.colour or (c, o.shape) not in present],
                    "place": [f"a {o.colour} {o.shape} {p}" for p in PLACES]}
        truth = {"shape": f"a {o.colour} {o.shape}", "colour": f"a {o.colour} {o.shape}",
                 "place": f"a {o.colour} {o.shape} {_place(*o.centres[0])}"}
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
    if opts.region_weight < 0 or opts.pooled_weight < 0:
        raise UserError(f"--region-weight and --pooled-weight must be >= 0, got {opts.region_weight:g} "
                        f"and {opts.pooled_weight:g}")
    check_loop_options(opts.time_budget, opts.workers, opts.probe_every)
    if opts.probe_frames < 1:
        raise UserError(f"probe_frames must be >= 1, got {opts.probe_frames}")
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

    grid = clip.arch.grid if opts.region_weight > 0 or opts.pooled_weight > 0 else None
    make = functools.partial(clip_batch, opts.seed, batch_size=opts.batch_size, image_size=cfg.image_size,
                             hard_negatives=opts.hard_negatives, grid=grid)
    t0, losses, done, probing = time.perf_counter(), [], start, 0.0
    curve: list[dict[str, Any]] = []
    bar = TrainingBar(f"clip {cfg.name}", start, opts.steps, opts.time_budget, disable=not progress)
    for step, batch in zip(range(start, opts.steps), step_batches(make, start, opts.steps, opts.workers)):
        elapsed = time.perf_counter() - t0
        if opts.time_budget is not None and elapsed >= opts.time_budget:
            break
        clip.train()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, opts.steps, opts.warmup, opts.lr, floor=0.05,
                                        time_fraction=elapsed / opts.time_budget if opts.time_budget else 0.0)
        loss, parts = clip_loss(clip, batch.to(opts.device), opts.region_weight, opts.pooled_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(parts["loss"])
        done = step + 1
        bar.advance(done, time.perf_counter() - t0, loss=f"{losses[-1]:.3f}", acc=f"{parts['batch_accuracy']:.2f}")
        if done % opts.log_every == 0 or done == opts.steps:
            append_log(out, {"step": done, "lr": optimizer.param_groups[0]["lr"], **parts,
                             "seconds": round(time.perf_counter() - t0 - probing, 2)})
        if opts.probe_every and done % opts.probe_every == 0:
            t1 = time.perf_counter()
            curve.append({"step": done, "seconds": round(t1 - t0 - probing, 2),
                          **probes(clip, cfg, opts.probe_frames, opts.device)})
            append_log(out, {"step": done, "probes": curve[-1]})
            probing += time.perf_counter() - t1
        if done % opts.save_every == 0 or done == opts.steps:
            save(done)
    bar.close()
    if done > start and done % opts.save_every and done != opts.steps:
        save(done)
    return {"steps": done, "resumed_from": start, "seconds": time.perf_counter() - t0, "probe_seconds": probing,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "heldout_accuracy": retrieval_accuracy(clip, cfg, device=opts.device), "probe_curve": curve,
            **probes(clip, cfg, opts.probe_frames, opts.device), "weights": str(out / CLIP_FILE)}


def probes(clip: CLIP, cfg: ModelConfig, frames: int = 200, device: str = "cpu") -> dict[str, Any]:
    """{"attribute_accuracy": the zero-shot probes on `frames` frames, "patch_shuffle_cosine": ...} of `clip`."""
    return {"attribute_accuracy": attribute_accuracy(clip, cfg, frames, device=device),
            "patch_shuffle_cosine": patch_shuffle_cosine(clip, cfg, device=device)}

