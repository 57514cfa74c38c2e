"""Where a mask goes wrong on a synthetic sample: the error analysis behind a J&F number.

    counts = pixel_places(sample, pred)    # sample from rvos_edge.data.synthetic, pred bool [T, H, W]

Every predicted pixel falls in one of PLACES: the target; a look-alike (another object
of the target's colour and shape: its twin in position, motion and some reappearance
samples); another object of the target's colour; or elsewhere. A pixel counts in the
first place that holds it. Look-alikes are drawn whole (shape_mask at their centre),
so a look-alike pixel hidden behind a third object still counts as the look-alike's.

    best = best_masks_at_grid(sample.masks, 32)     # what a perfect model with 32 x 32 logits predicts

J&F of `best_masks_at_grid` against the ground truth is the ceiling the mask head's
resolution alone puts on a model (benchmarks/demo_ceiling.py).
"""
from __future__ import annotations

import cv2
import numpy as np

from rvos_edge.data.sample import Sample
from rvos_edge.data.synthetic import COLOURS, shape_mask
from rvos_edge.runtime.pipeline import upsample_logits

PLACES = ("target", "look-alike", "same colour", "elsewhere")


def pixel_places(sample: Sample, pred: np.ndarray) -> dict[str, int]:
    """Predicted pixels in each of PLACES, and "area" (the target's visible pixels), "hidden"
    (frames where the target is out of sight) and "hidden_predicted" (those with a non-empty mask)."""
    if "target" not in sample.meta:
        raise ValueError(f"{sample.name} is not a synthetic sample: it has no scene description")
    target = sample.meta["target"]
    colour = np.all(sample.frames == np.array(COLOURS[target.colour], np.uint8), axis=-1)     # [T, H, W]
    twins = np.zeros_like(pred)
    for o in sample.meta["objects"]:
        if o.id != target.id and (o.colour, o.shape) == (target.colour, target.shape):
            for t in range(sample.num_frames):
                twins[t] |= shape_mask(o.shape, tuple(o.centres[t]), o.radius, size=pred.shape[2])
    on_target = pred & sample.masks
    on_twin = pred & twins & ~sample.masks
    on_colour = pred & colour & ~twins & ~sample.masks
    hidden = ~sample.masks.any(axis=(1, 2))
    counts = {"target": on_target.sum(), "look-alike": on_twin.sum(), "same colour": on_colour.sum()}
    counts["elsewhere"] = pred.sum() - sum(counts.values())
    counts.update(area=sample.masks.sum(), hidden=hidden.sum(), hidden_predicted=(pred.any(axis=(1, 2)) & hidden).sum())
    return {k: int(v) for k, v in counts.items()}


def best_masks_at_grid(masks: np.ndarray, grid: int) -> np.ndarray:
    """bool [T, H, W] -> bool [T, H, W]: the masks of a perfect model whose logits live on a
    grid x grid map. Its logits are each mask area-averaged down to the grid minus 0.5;
    the runtime's own path (upsample_logits, bilinear; logit > 0) brings them back."""
    out = np.empty_like(masks)
    for i, m in enumerate(masks):
        logits = cv2.resize(m.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA) - 0.5
        out[i] = upsample_logits(logits, *m.shape) > 0
    return out
