"""`Segmenter`: the public API, a stream of frames and an expression in, one mask per frame out.

    seg = Segmenter.open("artifacts/", backend="ort")      # or "torch" with a checkpoint
    seg.set_expression("the red cup on the left")
    for frame in camera:                                    # H x W x 3 uint8 BGR (OpenCV)
        for r in seg.push(frame):                           # results once a clip completes
            r.index, r.mask, r.score
    for r in seg.flush(): ...

Behaviour (DESIGN.md section 5):
- Each frame is resized to S x S RGB when pushed (only that copy is kept); a frame
  may also be pushed already prepared (`prepare`, a `PreparedFrame`), e.g. by a
  decode thread, so that the resize does not run on the engine's thread.
  Frames are grouped into clips of `clip_len`; `push` returns the clip's results
  when it completes. `flush` runs a short last clip padded by repeating its last
  frame; the padded outputs are dropped.
- The expression's text features are computed once and kept in an LRU of
  `text_cache_size` expressions, so switching back and forth is cheap.
- The clip model's history_out is the next clip's history. The first clip of an
  expression gets zeros and has_history = 0. `set_expression` and `reset` clear it.
  `flush` keeps it, so a stream may go on after a flush.
- Mask logits are upsampled bilinearly to each frame's own size (frames of a
  stream may differ in size); mask = logit > 0; score = mean sigmoid probability
  inside the mask (0.0 for an empty mask). Only the band of the frame where the
  mask can be True is upsampled (`pipeline.upsampled_mask`).
- `index` counts the frames pushed since `open` or the last `reset` (from 0);
  `set_expression` does not restart it (same stream, new expression).
- `push` is `add` (the frame stored; True when the clip is full), then the clip graph on
  `clip_inputs()` and `take_outputs`. A caller running the clips of several Segmenters in one
  engine call (rvos_edge.serving.streams) calls those three itself.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvos_edge.artifacts.manifest import in_runs
from rvos_edge.engines import Engines, open_engines
from rvos_edge.engines.base import TEXT_OUTPUTS, clip_feeds, empty_history
from rvos_edge.errors import UserError
from rvos_edge.runtime.pipeline import LRUCache, PreparedFrame, StageTimes, prepare, upsampled_mask

QUOTE_LIMIT = 60           # characters of an expression a warning quotes
UNKNOWN_LIMIT = 5          # words an unknown-words warning names


class ExpressionTruncatedWarning(UserWarning):
    """An expression longer than the text context; it was cut to its first words."""


class UnknownWordsWarning(UserWarning):
    """An expression with words whose tokens the model never learnt (their embedding is zero)."""


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` quoted as Python would, cut to its first `limit` characters ("..." after the quote when cut)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


@dataclass(frozen=True)
class SegmentResult:
    """The mask of one frame: index in the stream, mask bool [H, W] at the frame's size, score in [0, 1]."""

    index: int
    mask: np.ndarray
    score: float


@dataclass(frozen=True)
class _Text:
    """Text encoder outputs for one expression (batch 1) and whether it was truncated."""

    feeds: dict[str, np.ndarray]
    truncated: bool


class Segmenter:
    """Streaming referring segmentation over `engines` (see the module docstring).

    clip_len: frames per clip; None picks the model's default within what the
    engines accept. text_cache_size: expressions whose text features are kept.
    """

    def __init__(self, engines: Engines, clip_len: int | None = None, text_cache_size: int = 16) -> None:
        self.engines = engines
        self.config = engines.config
        self.clip_len = engines.resolve_clip_len(clip_len)
        self.timings = StageTimes()
        self._text_cache: LRUCache[str, _Text] = LRUCache(text_cache_size)
        self._expression: str | None = None
        self._text: _Text | None = None
        self._frames: list[np.ndarray] = []          # RGB [S, S, 3] of the clip being filled
        self._sizes: list[tuple[int, int]] = []      # (H, W) of those frames
        self._next_index = 0
        self._history = empty_history(self.config)
        self._has_history = False

    @classmethod
    def open(cls, path: str | Path, backend: str = "ort", precision: str = "fp32", clip_len: int | None = None,
             **opts: Any) -> "Segmenter":
        """Open an artifact folder (ort) or checkpoint (torch); `opts` go to the backend (see rvos_edge.engines)."""
        return cls(open_engines(path, backend, precision, **opts), clip_len)

    @property
    def expression(self) -> str | None:
        """The current expression, None before the first `set_expression`."""
        return self._expression

    def describe(self) -> dict[str, Any]:
        """What runs the clips, as `rvos-edge run`'s summary.json records it: artifacts, backend,
        precision, clip_len."""
        e = self.engines
        return {"artifacts": e.source, "backend": e.backend, "precision": e.precision, "clip_len": self.clip_len}

    @property
    def pending(self) -> int:
        """Frames pushed but not yet run (fewer than clip_len)."""
        return len(self._frames)

    def set_expression(self, text: str) -> list[SegmentResult]:
        """Segment what `text` describes from the next frame on; the history starts afresh.

        Frames already pushed under the previous expression are run with it first
        (padded, as by `flush`) and their results returned. An empty or blank text
        is a UserError; one longer than the context is truncated with an
        ExpressionTruncatedWarning; words with tokens outside the engines'
        learnt_tokens give an UnknownWordsWarning (they mean nothing to the model).
        """
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"the expression is empty: give a sentence describing the object, got {text!r}")
        encoded = self._encode(text)
        results = self.flush()
        self._text = encoded
        if encoded.truncated:
            warnings.warn(f"expression longer than the model's {self.config.max_words}-token context, "
                          f"its end is ignored: {quote(text)}", ExpressionTruncatedWarning, stacklevel=2)
        unknown = self._unknown_words(text)
        if unknown:
            more = f" and {len(unknown) - UNKNOWN_LIMIT} more" if len(unknown) > UNKNOWN_LIMIT else ""
            warnings.warn(f"the model never learnt {', '.join(map(repr, unknown[:UNKNOWN_LIMIT]))}{more} "
                          f"(in {quote(text)}): those words are ignored", UnknownWordsWarning, stacklevel=2)
        self._expression = text
        self._clear_history()
        return results

    def prepare(self, frame: np.ndarray) -> PreparedFrame:
        """A BGR frame [H, W, 3] uint8 made ready for `push` (resized to S x S RGB, its size kept).

        Uses only the model's image size, so any thread may call it, e.g. the one decoding
        the video, while this Segmenter runs the engine.
        """
        return prepare(frame, self.config.image_size)

    def push(self, frame: np.ndarray | PreparedFrame) -> list[SegmentResult]:
        """Add one H x W x 3 uint8 BGR frame, or one made ready by `prepare`; returns the clip's
        results when this frame completes it."""
        return self._run_clip() if self.add(frame) else []

    def add(self, frame: np.ndarray | PreparedFrame) -> bool:
        """Add one H x W x 3 uint8 BGR frame (or one made ready by `prepare`) without running
        anything; True when the clip is now full.

        For a caller that batches the clips of several Segmenters (rvos_edge.serving): once it
        is full, run `clip_inputs()` (with other streams' along the batch axis) and hand this
        stream's outputs to `take_outputs` before the next `add`. `push` is `add` and that run.
        """
        if self._text is None:
            raise UserError("no expression set: call set_expression(text) before push(frame)")
        if len(self._frames) == self.clip_len:
            raise UserError(f"the clip of {self.clip_len} frames is full: run it (take_outputs) before adding more")
        if isinstance(frame, PreparedFrame):
            s = self.config.image_size
            if frame.rgb.shape != (s, s, 3) or frame.rgb.dtype != np.uint8:
                raise UserError(f"a prepared frame must be {s} x {s} x 3 uint8 for this model (prepare it with "
                                f"Segmenter.prepare), got shape {frame.rgb.shape} dtype {frame.rgb.dtype}")
        else:
            t0 = time.perf_counter()
            frame = self.prepare(frame)
            self.timings.resize_s += time.perf_counter() - t0
        self._frames.append(frame.rgb)
        self._sizes.append(frame.size)
        self.timings.frames += 1
        return len(self._frames) == self.clip_len

    def flush(self) -> list[SegmentResult]:
        """Run the pending frames as a clip padded with copies of its last frame; their results (may be empty)."""
        return self._run_clip() if self._frames else []

    def reset(self) -> None:
        """Start a new stream: pending frames are dropped (flush first to keep them), the history is
        cleared and the frame index restarts at 0. The expression stays."""
        self._frames.clear()
        self._sizes.clear()
        self._next_index = 0
        self._clear_history()

    def _clear_history(self) -> None:
        self._history = empty_history(self.config)
        self._has_history = False

    def _unknown_words(self, text: str) -> list[str]:
        """Distinct words of `text`, in order, with a token outside the engines' learnt tokens."""
        runs = self.engines.learnt_tokens
        if runs is None:
            return []
        from rvos_edge.tokenizer import words_and_ids

        unknown = [word for word, ids in words_and_ids(text) if not all(in_runs(i, runs) for i in ids)]
        return list(dict.fromkeys(unknown))

    def _encode(self, text: str) -> _Text:
        """Text features of `text`, from the cache or the text encoder."""
        cached = self._text_cache.get(text)
        if cached is not None:
            return cached
        from rvos_edge.tokenizer import tokenize_for_prompts

        t0 = time.perf_counter()
        tok = tokenize_for_prompts([text], self.config.language_prompts, self.config.context_length)
        out = self.engines.text.run({"tokens": tok.tokens})
        self.timings.text_s += time.perf_counter() - t0
        self.timings.text_runs += 1
        encoded = _Text({k: out[k] for k in TEXT_OUTPUTS}, tok.truncated[0])
        self._text_cache.put(text, encoded)
        return encoded

    def _run_clip(self) -> list[SegmentResult]:
        """Run the pending frames (padded to clip_len) and return one result per real frame."""
        feeds = self.clip_inputs()
        t0 = time.perf_counter()
        out = self.engines.clip.run(feeds)
        self.timings.engine_s += time.perf_counter() - t0
        return self.take_outputs(out["mask_logits"], out["history_out"])

    def clip_inputs(self) -> dict[str, np.ndarray]:
        """The clip graph's feeds (batch 1, see engines.base.clip_feeds) for the pending frames, the
        clip padded to clip_len with copies of its last frame; a UserError when nothing is pending."""
        if self._text is None or not self._frames:
            raise UserError("no frames pending: push frames before running a clip")
        n, tc = len(self._frames), self.clip_len
        frames = np.stack(self._frames + [self._frames[-1]] * (tc - n))[None]           # [1, Tc, S, S, 3]
        return clip_feeds(frames, self._text.feeds, self._history, self._has_history)

    def take_outputs(self, logits: np.ndarray, history: np.ndarray) -> list[SegmentResult]:
        """The results of the pending clip from the clip graph's outputs for `clip_inputs()`:
        mask_logits [1, Tc, 4h, 4w] and history_out [1, m_h, Ce] (the next clip's history).
        One result per real frame; the pending frames are cleared."""
        tc, m = self.clip_len, self.config.mask_size
        self.timings.clips += 1
        if logits.shape != (1, tc, m, m) or history.shape != self._history.shape:
            raise UserError(f"{self.engines.source} returned mask_logits {logits.shape} and history_out "
                            f"{history.shape}, expected {(1, tc, m, m)} and {self._history.shape}: re-export it")
        self._history = np.asarray(history, np.float32)
        self._has_history = True

        t0 = time.perf_counter()
        results = []
        for i, (h, w) in enumerate(self._sizes):
            mask, score = upsampled_mask(np.asarray(logits[0, i], np.float32), h, w)
            results.append(SegmentResult(self._next_index + i, mask, score))
        self.timings.upsample_s += time.perf_counter() - t0
        self._next_index += len(self._sizes)
        self._frames.clear()
        self._sizes.clear()
        return results
