"""A seeded synthetic world of short referring videos, with a ground-truth mask for every frame.

    sample = generate(seed=0, index=17)        # Sample: frames uint8 [T,128,128,3] RGB, masks bool [T,128,128]
    data = SyntheticDataset(seed=0, count=200) # sample i is generate(0, i)

Each video is 128 x 128 with 12-36 frames and 2-5 flat-coloured objects (six
colours; small, r in [11, 14], or big, r in [18, 22]; shapes of radius r: a circle
of radius r, a square of half side 0.85 r, an equilateral triangle of circumradius
1.3 r, a diamond of half diagonal 1.1 r, a cross of arms 2 r long, 0.76 r wide) on a textured
background (value noise, stripes or a checkerboard). Objects move left, right,
up or down (wrapping around: they leave the view on one side and come back on
the other after a gap), bounce off the borders diagonally, or stay still. They
are drawn in id order, so higher ids occlude lower ones; a mask holds the
pixels of its object that are visible.

The kind of sample `index` is KINDS[index % 4] (or cycles through `kinds`):
- appearance: the target is the only object with its description ("the red
  circle", "the big blue square", "the yellow shape"); other objects often share
  its colour or shape.
- position: 2-3 identical objects (the target and its twins) lined up left to
  right or top to bottom, moving only across that line; the expression names the
  place ("the circle on the left", "the top red square", "the triangle in the middle").
- motion: 2-3 identical objects that differ only in their motion ("the green
  diamond moving up", "the still cross", "the bouncing circle"); a single frame
  cannot tell them apart.
- reappearance: the target moves out of view and stays out for at least one
  whole clip [6k, 6k + 6), k >= 1 (so also for any clip length dividing 6),
  then comes back. Half of these have an identical twin that moves differently,
  and the expression names the target's motion.

A pixel belongs to a shape when its centre lies inside it. Everything is drawn with numpy
(and OpenCV for the background) from `np.random.default_rng([seed, index])`,
so a (seed, index) pair always gives the same bytes; generating a sample takes a few ms.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rvos_edge.data.sample import KINDS, Sample
from rvos_edge.errors import UserError

SIZE = 128
HIDDEN_CLIP = 6
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230),
    "yellow": (235, 205, 40), "purple": (150, 60, 200), "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
MOTIONS = ("left", "right", "up", "down", "still", "bounce")
EXTENT = {"circle": 1.0, "square": 0.85 * 2 ** 0.5, "triangle": 1.3, "diamond": 1.1, "cross": (1 + 0.38 ** 2) ** 0.5}
"""Bounding radius of each shape, in units of its radius r."""
RADIUS = {"small": (11.0, 14.0), "big": (18.0, 22.0)}
MIN_VISIBLE_PIXELS = 20

_MOTION_PHRASES = {
    "left": ("moving left", "going left", "that moves to the left"),
    "right": ("moving right", "going right", "that moves to the right"),
    "up": ("moving up", "going up", "that moves upwards"),
    "down": ("moving down", "going down", "that moves downwards"),
    "still": ("that is not moving", "standing still", "that stays in place"),
    "bounce": ("bouncing around", "that bounces off the walls", "bouncing diagonally"),
}
_MOTION_ADJECTIVES = {"still": ("still", "motionless"), "bounce": ("bouncing",)}
_PLACE_PHRASES = {
    "left": ("the {} on the left", "the left {}", "the leftmost {}"),
    "right": ("the {} on the right", "the right {}", "the rightmost {}"),
    "top": ("the {} at the top", "the top {}", "the topmost {}"),
    "bottom": ("the {} at the bottom", "the bottom {}", "the lowest {}"),
    "middle": ("the {} in the middle", "the middle {}"),
}


@dataclass(frozen=True)
class SceneObject:
    """One object of a synthetic video: id = its label (drawing order, higher ids in front),
    appearance, motion and its centre (x, y) in every frame, float [T, 2]."""

    id: int
    shape: str
    colour: str
    size: str
    radius: float
    motion: str
    centres: np.ndarray

    @property
    def appearance(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.size

    @property
    def extent(self) -> float:
        return EXTENT[self.shape] * self.radius


@dataclass
class _Plan:
    """A scene before ids are given: objects (appearance, motion, centres), which one is the
    target, and the expression."""

    objects: list[dict]
    target: int
    expression: str


def expression_words() -> list[str]:
    """Every word a referring expression of this world can use (the grammar's lexicon), sorted."""
    phrases = [*COLOURS, *SHAPES, *RADIUS, "shape", "object", "the",
               *(p for group in _MOTION_PHRASES.values() for p in group),
               *(a for group in _MOTION_ADJECTIVES.values() for a in group),
               *(p.format("") for group in _PLACE_PHRASES.values() for p in group)]
    return sorted({w for p in phrases for w in p.split()})


def generate(seed: int, index: int, kinds: tuple[str, ...] = KINDS) -> Sample:
    """Sample `index` of the world `seed`; its kind is kinds[index % len(kinds)]."""
    unknown = set(kinds) - set(KINDS)
    if not kinds or unknown:
        raise UserError(f"unknown sample kind(s) {sorted(unknown)}; kinds are {', '.join(KINDS)}")
    if seed < 0 or index < 0:
        raise UserError(f"seed and index must be >= 0, got seed {seed}, index {index}")
    kind = kinds[index % len(kinds)]
    rng = np.random.default_rng([seed, index])
    background = _background(rng)
    while True:  # rejection sampling: the rng stream makes the accepted scene deterministic
        plan = _PLANNERS[kind](rng)
        objects, frames, labels = _render(plan, background)
        target = objects[plan.target]
        masks = labels == target.id
        if _acceptable(kind, masks, [labels == o.id for o in objects if o.appearance == target.appearance]):
            break
    meta = {"seed": seed, "index": index, "objects": objects, "target": target}
    return Sample(f"synthetic-{seed}-{index:06d}", frames, masks, plan.expression, kind, target.id, meta)


def generate_frame(seed: int, index: int) -> tuple[np.ndarray, list[SceneObject], np.ndarray]:
    """One frame of a scene of world `seed` (any kind, a random time; no visibility rules, so cheap):
    the frame uint8 [S, S, 3] RGB, its objects (centres [1, 2]: at that frame) and their label map
    uint8 [S, S] (object id per pixel, 0 background). For image-caption pretraining."""
    rng = np.random.default_rng([seed, index, 2])
    background = _background(rng)
    plan = _PLANNERS[KINDS[index % len(KINDS)]](rng)
    t = int(rng.integers(len(plan.objects[0]["centres"])))
    plan.objects = [{**o, "centres": o["centres"][t:t + 1]} for o in plan.objects]
    objects, frames, labels = _render(plan, background)
    return frames[0], objects, labels[0]


def patch_coverage(labels: np.ndarray, ids: list[int], grid: int) -> np.ndarray:
    """float32 [len(ids) + 1, grid * grid]: for each object id of `ids`, the fraction of each cell
    of a grid x grid split of the label map uint8 [S, S] that shows it (cells row-major, as a
    ViT flattens its patches); the last row is the background's (label 0). S % grid == 0."""
    size = labels.shape[0]
    if size % grid or labels.shape != (size, size):
        raise ValueError(f"a {list(labels.shape)} label map does not split into {grid} x {grid} cells")
    cell = size // grid
    cells = labels.reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid * grid, cell * cell)
    return np.stack([(cells == i).mean(1) for i in [*ids, 0]]).astype(np.float32)


class SyntheticDataset:
    """The first `count` samples of world `seed`: data[i] == generate(seed, i, kinds)."""

    def __init__(self, seed: int, count: int, kinds: tuple[str, ...] = KINDS) -> None:
        if count < 1:
            raise UserError(f"a synthetic dataset needs count >= 1, got {count}")
        if not kinds or set(kinds) - set(KINDS):
            raise UserError(f"unknown sample kind(s) in {list(kinds)}; kinds are {', '.join(KINDS)}")
        self.seed, self.count, self.kinds = seed, count, tuple(kinds)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return generate(self.seed, i, self.kinds)

    def __repr__(self) -> str:
        return f"SyntheticDataset(seed={self.seed}, count={self.count})"


# --- acceptance ----------------------------------------------------------------------

def _acceptable(kind: str, masks: np.ndarray, lookalikes: list[np.ndarray]) -> bool:
    """Visibility rules: the target is seen often enough (and, for motion, so are its twins);
    a reappearing target is hidden for a whole aligned clip and seen before and after it."""
    seen = masks.sum((1, 2)) >= MIN_VISIBLE_PIXELS
    if kind != "reappearance":
        twins_seen = all((m.sum((1, 2)) >= MIN_VISIBLE_PIXELS).mean() >= 0.5 for m in lookalikes)
        return seen.mean() >= 0.6 and (kind != "motion" or twins_seen)
    t = len(masks)
    for start in range(HIDDEN_CLIP, t - HIDDEN_CLIP + 1, HIDDEN_CLIP):
        if not masks[start:start + HIDDEN_CLIP].any():
            return seen[:start].sum() >= 3 and seen[start + HIDDEN_CLIP:].sum() >= 3
    return False


# --- planning --------------------------------------------------------------------------

def _appearance(rng: np.random.Generator, like: tuple[str, str, str] | None = None,
                avoid: set[tuple[str, str, str]] = frozenset()) -> tuple[str, str, str]:
    """A (colour, shape, size) not in `avoid`; with `like`, one sharing its colour or its shape."""
    while True:
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        size = str(rng.choice(("small", "big")))
        if like is not None:
            if rng.random() < 0.5:
                colour = like[0]
            else:
                shape = like[1]
        if (colour, shape, size) not in avoid:
            return colour, shape, size


def _object(rng: np.random.Generator, appearance: tuple[str, str, str], motion: str, frames: int,
            radius: float | None = None) -> dict:
    """An object with a random start and speed for `motion`; its centres over `frames` frames."""
    colour, shape, size = appearance
    r = float(rng.uniform(*RADIUS[size])) if radius is None else radius
    ext = EXTENT[shape] * r
    start = rng.uniform(ext, SIZE - ext, 2)
    return {"colour": colour, "shape": shape, "size": size, "radius": r, "motion": motion,
            "centres": _trajectory(rng, motion, start, ext, frames)}


def _trajectory(rng: np.random.Generator, motion: str, start: np.ndarray, ext: float, frames: int) -> np.ndarray:
    """Centres [T, 2]. Straight movers wrap around with a gap off screen; bouncers reflect at the borders."""
    t = np.arange(frames, dtype=np.float64)[:, None]
    if motion == "still":
        return np.repeat(start[None], frames, 0)
    if motion == "bounce":
        v = rng.uniform(1.5, 3.0, 2) * rng.choice((-1.0, 1.0), 2)
        lo, span = ext, SIZE - 2 * ext
        u = np.mod(start - lo + v * t, 2 * span)
        return lo + np.where(u <= span, u, 2 * span - u)
    axis = 0 if motion in ("left", "right") else 1
    sign = -1.0 if motion in ("left", "up") else 1.0
    period = SIZE + 2 * ext + rng.uniform(0, 40)
    centres = np.repeat(start[None], frames, 0)
    centres[:, axis] = np.mod(start[axis] + ext + sign * rng.uniform(2.0, 4.0) * t[:, 0], period) - ext
    return centres


def _describe(group: set[int], objects: list[dict], rng: np.random.Generator) -> str:
    """A noun phrase ("red circle", "big square", "yellow shape") matching exactly the objects in
    `group` (indices into objects, all alike), chosen at random among those that do. Callers keep
    every other object's (colour, shape, size) apart from the group's, so "size colour shape" always does."""
    first = objects[next(iter(group))]
    options = []
    for attrs in (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")):
        matched = {i for i, o in enumerate(objects) if all(o[a] == first[a] for a in attrs)}
        if matched == group:
            words = [first[a] for a in attrs]
            if "shape" not in attrs:
                words.append(str(rng.choice(("shape", "object"))))
            options.append(" ".join(words))
    return str(rng.choice(options))


def _motion_phrase(noun: str, motion: str, rng: np.random.Generator) -> str:
    if motion in _MOTION_ADJECTIVES and rng.random() < 0.4:
        return f"the {rng.choice(_MOTION_ADJECTIVES[motion])} {noun}"
    return f"the {noun} {rng.choice(_MOTION_PHRASES[motion])}"


def _add_distractors(rng: np.random.Generator, objects: list[dict], avoid: set[tuple[str, str, str]],
                     like: tuple[str, str, str], frames: int) -> None:
    """Fill the scene up to 2-5 objects; half of the newcomers share the target's colour or shape."""
    total = max(len(objects), int(rng.integers(2, 6)))
    while len(objects) < total:
        near = like if rng.random() < 0.5 else None
        objects.append(_object(rng, _appearance(rng, near, avoid), str(rng.choice(MOTIONS)), frames))


def _shuffled(rng: np.random.Generator, objects: list[dict], target: int) -> tuple[list[dict], int]:
    """Objects in a random depth order, and the target's new position."""
    order = [int(i) for i in rng.permutation(len(objects))]
    return [objects[i] for i in order], order.index(target)


def _plan_appearance(rng: np.random.Generator) -> _Plan:
    frames = int(rng.integers(12, 37))
    target = _appearance(rng)
    objects = [_object(rng, target, str(rng.choice(MOTIONS)), frames)]
    _add_distractors(rng, objects, {target}, target, frames)
    objects, t = _shuffled(rng, objects, 0)
    return _Plan(objects, t, f"the {_describe({t}, objects, rng)}")


def _plan_position(rng: np.random.Generator) -> _Plan:
    frames = int(rng.integers(12, 37))
    count = 3 if rng.random() < 0.35 else 2
    look = _appearance(rng)
    if count == 3:
        look = (look[0], look[1], "small")
    radius = float(rng.uniform(*RADIUS[look[2]]))
    ext = EXTENT[look[1]] * radius
    axis = int(rng.integers(2))
    step = 2 * ext + 6
    free = SIZE - 2 * ext - 4 - (count - 1) * step
    places = ext + 2 + np.sort(rng.uniform(0, free, count)) + step * np.arange(count)
    across = ("up", "down", "still") if axis == 0 else ("left", "right", "still")
    twins = []
    for place in places:
        twin = _object(rng, look, str(rng.choice(across)), frames, radius)
        twin["centres"][:, axis] = place
        twins.append(twin)
    rank = int(rng.integers(count))
    names = (("left", "right") if axis == 0 else ("top", "bottom"))
    place_name = "middle" if count == 3 and rank == 1 else names[min(rank, 1)]
    objects = list(twins)
    _add_distractors(rng, objects, {look}, look, frames)
    objects, t = _shuffled(rng, objects, rank)
    group = {i for i, o in enumerate(objects) if any(o is tw for tw in twins)}
    noun = _describe(group, objects, rng)
    return _Plan(objects, t, str(rng.choice(_PLACE_PHRASES[place_name])).format(noun))


def _plan_motion(rng: np.random.Generator) -> _Plan:
    frames = int(rng.integers(12, 37))
    count = 3 if rng.random() < 0.35 else 2
    look = _appearance(rng)
    radius = float(rng.uniform(*RADIUS[look[2]]))
    motions = [str(m) for m in rng.choice(MOTIONS, count, replace=False)]
    twins = [_object(rng, look, m, frames, radius) for m in motions]
    objects = list(twins)
    _add_distractors(rng, objects, {look}, look, frames)
    objects, t = _shuffled(rng, objects, 0)
    group = {i for i, o in enumerate(objects) if any(o is tw for tw in twins)}
    return _Plan(objects, t, _motion_phrase(_describe(group, objects, rng), motions[0], rng))


def _plan_reappearance(rng: np.random.Generator) -> _Plan:
    frames = int(rng.integers(18, 37))
    look = _appearance(rng)
    motion = str(rng.choice(("left", "right", "up", "down")))
    target = _object(rng, look, "still", frames)
    target["motion"] = motion
    target["centres"] = _reappearing(rng, target["centres"][0], EXTENT[look[1]] * target["radius"], motion, frames)
    objects = [target]
    with_twin = rng.random() < 0.5
    if with_twin:
        other = str(rng.choice([m for m in MOTIONS if m != motion]))
        objects.append(_object(rng, look, other, frames, target["radius"]))
    _add_distractors(rng, objects, {look}, look, frames)
    objects, t = _shuffled(rng, objects, 0)
    group = {i for i, o in enumerate(objects) if (o["colour"], o["shape"], o["size"]) == look}
    noun = _describe(group, objects, rng)
    if len(group) > 1 or rng.random() < 0.3:
        return _Plan(objects, t, _motion_phrase(noun, motion, rng))
    return _Plan(objects, t, f"the {noun}")


def _reappearing(rng: np.random.Generator, start: np.ndarray, ext: float, motion: str, frames: int) -> np.ndarray:
    """Centres [T, 2] of a straight mover that leaves the view, stays out for a whole clip
    [6k, 6k + 6) and comes back on the other side at least 4 frames before the end.

    Along its axis, u(t) = u0 + v t and position = (u mod P) - ext with P = SIZE + 2 ext + gap:
    out of view while u mod P >= SIZE + 2 ext. It leaves at frame `leave` (fully out from
    then on), late enough to have been fully in view at the start when T allows, and
    re-enters at frame `back` in [6k + 6, 6k + 9].
    """
    out = SIZE + 2 * ext
    last_clip = (frames - 10) // HIDDEN_CLIP                       # largest k with room to come back
    v = float(rng.uniform(2.5, 4.5))
    crossing = int(np.ceil((2 * ext + 8) / v))                   # frames from fully in to fully out
    if crossing > HIDDEN_CLIP * last_clip:
        leave = HIDDEN_CLIP * last_clip
        v = min(6.0, (2 * ext + 8) / leave)
    else:
        leave = int(rng.integers(crossing, HIDDEN_CLIP * last_clip + 1))
    v = min(v, SIZE / leave)                                     # u(0) >= 2 ext: in view at the start
    k = -(-leave // HIDDEN_CLIP)
    back = int(rng.integers(HIDDEN_CLIP * (k + 1), min(HIDDEN_CLIP * (k + 1) + 3, frames - 4) + 1))
    u0 = out + v * float(rng.uniform(0.0, 0.95)) - v * leave
    period = u0 + v * (back - 1) + v * float(rng.uniform(0.05, 0.95))
    along = np.mod(u0 + v * np.arange(frames), period) - ext
    if motion in ("left", "up"):
        along = SIZE - along
    centres = np.repeat(start[None].astype(np.float64), frames, 0)
    centres[:, 0 if motion in ("left", "right") else 1] = along
    return centres


_PLANNERS = {"appearance": _plan_appearance, "position": _plan_position,
             "motion": _plan_motion, "reappearance": _plan_reappearance}


# --- rendering -----------------------------------------------------------------------

def _background(rng: np.random.Generator) -> np.ndarray:
    """A textured background uint8 [SIZE, SIZE, 3]: value noise, stripes or a checkerboard, muted colours."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    style = int(rng.integers(3))
    if style == 0:
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        pattern = np.clip(cv2.resize(grid, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC), -1, 1)
    elif style == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(10, 40)
        pattern = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    else:
        cell = int(rng.integers(8, 33))
        pattern = (((x // cell + y // cell) % 2) * 2 - 1).astype(np.float32)
    base = rng.uniform(60, 160) + rng.normal(0, 12, 3)
    channels = 1 + 0.2 * rng.normal(size=3)
    grain = rng.normal(0, 4, (SIZE, SIZE, 1))
    image = base + rng.uniform(12, 35) * pattern[..., None] * channels + grain
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def shape_mask(shape: str, centre: tuple[float, float], r: float, size: int = SIZE) -> np.ndarray:
    """bool [size, size]: the pixels whose centre (x, y integer) lies inside `shape` of radius r at `centre`."""
    out = np.zeros((size, size), bool)
    cx, cy = centre
    e = EXTENT[shape] * r
    x0, x1 = max(0, int(np.floor(cx - e))), min(size, int(np.ceil(cx + e)) + 1)
    y0, y1 = max(0, int(np.floor(cy - e))), min(size, int(np.ceil(cy + e)) + 1)
    if x0 >= x1 or y0 >= y1:
        return out
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = dx - cx, dy - cy
    if shape == "circle":
        inside = dx ** 2 + dy ** 2 <= r ** 2
    elif shape == "square":
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    elif shape == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= 1.1 * r
    elif shape == "cross":
        ax, ay, w = np.abs(dx), np.abs(dy), 0.38 * r
        inside = ((ax <= r) & (ay <= w)) | ((ax <= w) & (ay <= r))
    else:  # triangle, apex up: inside the three edges, each at distance R/2 from the centre
        normals = np.deg2rad([90.0, 210.0, 330.0])
        inside = np.ones_like(dx, bool)
        for a in normals:
            inside &= dx * np.cos(a) + dy * np.sin(a) <= EXTENT["triangle"] * r / 2
    out[y0:y1, x0:x1] = inside
    return out


def _render(plan: _Plan, background: np.ndarray) -> tuple[list[SceneObject], np.ndarray, np.ndarray]:
    """Objects with ids 1.., frames uint8 [T, S, S, 3] RGB and the label map uint8 [T, S, S] (0: background)."""
    objects = [SceneObject(i + 1, o["shape"], o["colour"], o["size"], o["radius"], o["motion"],
                           o["centres"].astype(np.float32)) for i, o in enumerate(plan.objects)]
    frames_count = len(objects[0].centres)
    frames = np.repeat(background[None], frames_count, 0)
    labels = np.zeros(frames.shape[:3], np.uint8)
    for t in range(frames_count):
        for o in objects:
            labels[t][shape_mask(o.shape, tuple(o.centres[t]), o.radius)] = o.id
        for o in objects:
            frames[t][labels[t] == o.id] = COLOURS[o.colour]
    return objects, frames, labels
