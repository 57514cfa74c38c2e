"""`Sample`: one referring expression over one video, the unit every reader yields."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("appearance", "position", "motion", "reappearance")
"""Kinds of synthetic samples; real datasets tag their samples "real"."""


@dataclass(frozen=True)
class Sample:
    """frames uint8 [T, H, W, 3] RGB; masks bool [T, H, W] of the referred object (None: no ground truth).

    name: unique id ("<video>/<expression id>"); object_id: the object's id in the
    video's annotations; kind: one of KINDS or "real"; meta: reader-specific details
    (the synthetic world puts its scene description here).
    """

    name: str
    frames: np.ndarray
    masks: np.ndarray | None
    expression: str
    kind: str
    object_id: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        f, m = self.frames, self.masks
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {f.dtype} {list(f.shape)}")
        if m is not None and (m.dtype != np.bool_ or m.shape != f.shape[:3]):
            raise ValueError(f"masks must be bool {list(f.shape[:3])}, got {m.dtype} {list(m.shape)}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]
