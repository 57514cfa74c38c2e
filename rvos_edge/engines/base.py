"""The one interface every backend implements: a `Runner` per graph, an `Engines` pair.

A backend's loader opens an artifact folder (or a checkpoint) into `Engines`:
two runners, ``text`` (text_encoder) and ``clip`` (clip_model), with the tensors
of DESIGN.md section 4, plus what the pipeline needs to feed them (config,
precision, accepted clip lengths). Runners take and give numpy arrays, so the
pipeline above them is the same for every backend; `clip_feeds` is the one place
the clip graph's feeds are put together, and `Runner.timer` how a runner is timed.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, TensorSpec, TokenRuns, expected_graphs
from rvos_edge.config import ModelConfig
from rvos_edge.errors import UserError

TEXT_OUTPUTS = ("text_feats", "text_mask", "text_global")


def empty_history(config: ModelConfig, batch: int = 1) -> np.ndarray:
    """The history of a stream's first clip: zeros float32 [batch, m_h, Ce]."""
    return np.zeros((batch, config.history_prompts, config.embed_dim), np.float32)


def clip_feeds(frames: np.ndarray, text: Mapping[str, np.ndarray], history: np.ndarray,
               has_history: bool) -> dict[str, np.ndarray]:
    """The clip graph's feeds for one clip of B streams.

    frames uint8 [B, Tc, S, S, 3]; text: the text encoder's outputs (text_feats [b, 77, Ce],
    text_mask [b, 77], text_global [b, Ce], b = B or 1: one expression for every stream);
    history float32 [B, m_h, Ce]; has_history: whether history holds earlier clips
    (has_history float32 [B, 1] is 1.0 then, else 0.0).
    """
    b = frames.shape[0]
    tiled = {k: text[k] if text[k].shape[0] == b else np.repeat(text[k], b, axis=0) for k in TEXT_OUTPUTS}
    return {"frames": frames, **tiled, "history": history,
            "has_history": np.full((b, 1), 1.0 if has_history else 0.0, np.float32)}


class Runner(ABC):
    """Runs one graph. `inputs`/`outputs` describe its tensors (symbolic dims are strings)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    timing = "perf_counter around run (numpy in and out)"     # how `timer` measures, for reports

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds` (one array per input name); returns one array per output name."""

    def cast_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` converted to the dtypes of `inputs` (e.g. float32 history for a float16 graph)."""
        dtypes = {t.name: t.dtype for t in self.inputs}
        return {k: np.asarray(v, dtype=dtypes.get(k, v.dtype)) for k, v in feeds.items()}

    def timer(self, feeds: dict[str, np.ndarray]) -> Callable[[], float]:
        """A function that runs the graph once on `feeds` and returns the seconds it took, as
        `timing` says (a runner on a GPU overrides it to time on the device)."""
        def timed() -> float:
            t0 = time.perf_counter()
            self.run(feeds)
            return time.perf_counter() - t0
        return timed


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
