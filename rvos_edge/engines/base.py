"""The one interface every backend implements: a `Runner` per graph, an `Engines` pair.

A backend's loader opens an artifact folder (or a checkpoint) into `Engines`:
two runners, ``text`` (text_encoder) and ``clip`` (clip_model), with the tensors
of DESIGN.md section 4, plus what the pipeline needs to feed them (config,
precision, accepted clip lengths). Runners take and give numpy arrays, so the
pipeline above them is the same for every backend.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from rvos_edge.config import ModelConfig
from rvos_edge.errors import UserError
from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, TensorSpec, TokenRuns, expected_graphs


class Runner(ABC):
    """Runs one graph. `inputs`/`outputs` describe its tensors (symbolic dims are strings)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds` (one array per input name); returns one array per output name."""

    def cast_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` converted to the dtypes of `inputs` (e.g. float32 history for a float16 graph)."""
        dtypes = {t.name: t.dtype for t in self.inputs}
        return {k: np.asarray(v, dtype=dtypes.get(k, v.dtype)) for k, v in feeds.items()}


@dataclass(frozen=True)
class Engines:
    """A loaded model: the text and clip runners and what is needed to feed them.

    clip_len: (min, max) clip length the clip runner accepts; max None when any
    length >= min runs (the PyTorch model).
    learnt_tokens: [start, stop) runs of the token ids the text encoder learnt (None: unknown).
    """

    text: Runner
    clip: Runner
    config: ModelConfig
    precision: str
    clip_len: tuple[int, int | None]
    backend: str
    source: str
    learnt_tokens: TokenRuns | None = None

    def __post_init__(self) -> None:
        expected = expected_graphs(self.config, self.clip_len)
        for runner, graph in ((self.text, TEXT_ENCODER), (self.clip, CLIP_MODEL)):
            for kind in ("inputs", "outputs"):
                want = sorted(t.name for t in getattr(expected[graph], kind))
                have = sorted(t.name for t in getattr(runner, kind))
                if want != have:
                    raise UserError(f"{graph} of {self.source} has {kind} {have}, expected {want}: "
                                    "re-export with this version of rvos-edge")

    def resolve_clip_len(self, clip_len: int | None) -> int:
        """The clip length to run: `clip_len` if the clip runner accepts it, else a UserError.

        None picks config.clip_len, brought into the accepted range.
        """
        lo, hi = self.clip_len
        if clip_len is None:
            return max(lo, self.config.clip_len if hi is None else min(self.config.clip_len, hi))
        if clip_len < lo or (hi is not None and clip_len > hi):
            accepted = f"exactly {lo}" if lo == hi else f"{lo}..{hi if hi is not None else ''}"
            raise UserError(f"clip length {clip_len} is not accepted by {self.source} (it takes {accepted}); "
                            "re-export with --clip-len to change it")
        return clip_len
