"""Calibration batches for both graphs from any referring-video dataset (`rvos_edge.data.open_dataset`).

    calib = calibration_data(open_engines("artifacts/", "ort", "fp32"), open_dataset("synthetic:7:64"), samples=64)
    calib.text[0]   # {"tokens": int64 [1, 77]}
    calib.clip[0]   # {"frames": uint8 [1, Tc, S, S, 3], "text_feats", "text_mask", "text_global", "history", "has_history"}

Selection: the videos (samples) of the dataset are visited in a random order drawn
from `seed`; each gives up to `clips_per_video` consecutive clips from its start
until `samples` clips are collected (fewer when the dataset runs out first). Frames go through the runtime's own
`prepare_frame`, so calibration sees exactly what the engines see; clips are cut
as the runtime cuts them (a short last clip is padded with its last frame).
Clips of one video are fed in order through the FP32 engines, so the ``history``
of every clip after a video's first is the FP32 model's ``history_out`` of the clip
before it (``has_history`` 1); a video's first clip gets zeros and 0, as in the
runtime. Text batches are the expressions of the videos used, through the same
tokenizer; the clip batches carry the FP32 text encoder's outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from rvos_edge.data import Dataset
from rvos_edge.engines.base import Engines, clip_feeds, empty_history
from rvos_edge.errors import UserError
from rvos_edge.runtime.pipeline import prepare_frame
from rvos_edge.tokenizer import tokenize_for_prompts


@dataclass(frozen=True)
class CalibrationData:
    """Batches (batch size 1) for text_encoder and clip_model; `first[i]`: clip i starts a video."""

    text: list[dict[str, np.ndarray]]
    clip: list[dict[str, np.ndarray]]
    first: list[bool]
    videos: list[str]
    clip_len: int


def video_clips(frames_rgb: np.ndarray, size: int, clip_len: int) -> list[np.ndarray]:
    """RGB frames [T, H, W, 3] -> clips uint8 [1, clip_len, size, size, 3], the last padded with its last frame."""
    prepared = [prepare_frame(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), size) for f in frames_rgb]
    clips = []
    for start in range(0, len(prepared), clip_len):
        chunk = prepared[start:start + clip_len]
        clips.append(np.stack(chunk + [chunk[-1]] * (clip_len - len(chunk)))[None])
    return clips


def calibration_data(engines: Engines, dataset: Dataset, samples: int = 64, seed: int = 0, clips_per_video: int = 4,
                     clip_len: int | None = None, progress: bool = True) -> CalibrationData:
    """`samples` clip batches (and the text batches of their videos) from `dataset`; see the module docstring.

    engines: the FP32 engines that produce the text features and the histories.
    clip_len: frames per clip (default: the model's, within what the engines accept).
    """
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    if clips_per_video < 1:
        raise UserError(f"clips per video must be >= 1, got {clips_per_video}")
    if len(dataset) < 1:
        raise UserError("the calibration data set is empty")
    cfg = engines.config
    tc = engines.resolve_clip_len(clip_len)
    text, clip, first, videos = [], [], [], []
    bar = tqdm(total=samples, desc="calibration data", unit="clip", disable=not progress, leave=False)
    for index in np.random.default_rng(seed).permutation(len(dataset)):
        sample = dataset[int(index)]
        tokens = tokenize_for_prompts([sample.expression], cfg.language_prompts, cfg.context_length).tokens
        text_out = engines.text.run({"tokens": tokens})
        text.append({"tokens": tokens})
        videos.append(sample.name)
        history = empty_history(cfg)
        for i, frames in enumerate(video_clips(sample.frames, cfg.image_size, tc)[:clips_per_video]):
            feeds = clip_feeds(frames, text_out, history, has_history=i > 0)
            clip.append(feeds)
            first.append(i == 0)
            bar.update()
            if len(clip) == samples:
                bar.close()
                return CalibrationData(text, clip, first, videos, tc)
            history = np.asarray(engines.clip.run(feeds)["history_out"], np.float32)
    bar.close()
    return CalibrationData(text, clip, first, videos, tc)
