"""`rvos-edge run`: segment a video, a folder of images or a camera for one or more expressions.

Output layout (OUT defaults to ``runs/<source name>``; files of the same name are replaced):

    OUT/masks/<frame>.png                one --expr: one 8-bit PNG per frame at the frame's
                                         own size, 255 inside the mask, 0 outside
    OUT/masks/<k>_<slug>/<frame>.png     several --expr: one folder per expression, k = 0, 1, ...
                                         in command-line order, slug = the text in lower case,
                                         runs of other characters as "-", at most 40 characters
    OUT/overlay.mp4                      the frames with each expression's mask blended in
                                         (green, red, blue, yellow, magenta, cyan, ...), mp4v,
                                         at the first frame's size and the source's frame rate
                                         (10 fps when unknown)
    OUT/summary.json                     frames, fps, per-stage milliseconds, backend, ...

<frame> is the zero-padded frame number (00000, ...) for --video and --camera and
the image's stem for --frames. Every file is written to a temporary name in OUT
and renamed when complete. All expressions share one decode of the source; each
has its own Segmenter (history, text features) over the same loaded engines.

summary.json: "frames" processed; "fps": {"end_to_end": frames / wall seconds of
the frame loop (decode, pipeline, writing), "engine": frames / seconds in the
clip model summed over expressions}; "ms_total" and "ms_per_frame" for decode,
resize, text, engine, upsample and write; "backend", "precision", "clip_len",
"source", "artifacts", "expressions" (text, masks folder, truncated, frames
with a non-empty mask). If the source stopped early: "stopped_at" (the first
frame not decoded) and "error"; after Ctrl-C: "stopped_at" and "interrupted".
A source that stops early still gets its masks, overlay and summary, then the
command exits 2 with one line on stderr; Ctrl-C exits 130.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes
from rvos_edge.runtime.backends import Engines, default_backend, open_engines
from rvos_edge.runtime.pipeline import StageTimes
from rvos_edge.runtime.segmenter import Segmenter, SegmentResult
from rvos_edge.runtime.video import DecodeError, FrameSource, open_source, prefetch

COLOURS_BGR = ((0, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0))
DEFAULT_FPS = 10.0
OVERLAY_NAME = "overlay.mp4"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "expression"


def mask_folders(expressions: list[str]) -> list[str]:
    """Mask folder of each expression, relative to OUT: "masks" for one, "masks/<k>_<slug>" for several."""
    if len(expressions) == 1:
        return ["masks"]
    return [f"masks/{k}_{_slug(text)}" for k, text in enumerate(expressions)]


def overlay(frame: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """BGR frame with mask k blended half-and-half with COLOURS_BGR[k]."""
    out = frame.copy()
    for k, mask in enumerate(masks):
        colour = np.array(COLOURS_BGR[k % len(COLOURS_BGR)], np.float32)
        out[mask] = (0.5 * out[mask] + 0.5 * colour).astype(np.uint8)
    return out


class _Outputs:
    """Writes masks as results arrive and overlay frames in order once every expression has its mask."""

    def __init__(self, out: Path, folders: list[str], fps: float) -> None:
        self.out, self.fps = out, fps
        self.dirs = [out / f for f in folders]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.write_s = 0.0
        self.nonempty = [0] * len(folders)
        self._frames: dict[int, tuple[str, np.ndarray]] = {}
        self._masks: list[dict[int, np.ndarray]] = [{} for _ in folders]
        self._next = 0
        self._tmp = out / f".{Path(OVERLAY_NAME).stem}.partial.mp4"
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] = (0, 0)

    def add_frame(self, index: int, name: str, frame: np.ndarray) -> None:
        self._frames[index] = (name, frame)

    def add_results(self, k: int, results: list[SegmentResult]) -> None:
        t0 = time.perf_counter()
        for r in results:
            ok, png = cv2.imencode(".png", r.mask.astype(np.uint8) * 255)
            if not ok:
                raise UserError(f"cannot encode the mask of frame {r.index} as PNG")
            atomic_write_bytes(self.dirs[k] / f"{self._frames[r.index][0]}.png", png.tobytes())
            self._masks[k][r.index] = r.mask
            self.nonempty[k] += bool(r.mask.any())
        self.write_s += time.perf_counter() - t0

    def write_overlays(self) -> None:
        """Overlay frames whose masks are all in, in frame order."""
        t0 = time.perf_counter()
        while self._next in self._frames and all(self._next in m for m in self._masks):
            _, frame = self._frames.pop(self._next)
            image = overlay(frame, [m.pop(self._next) for m in self._masks])
            if self._writer is None:
                self._size = (image.shape[1], image.shape[0])
                self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
                if not self._writer.isOpened():
                    raise UserError(f"cannot write {self.out / OVERLAY_NAME}: OpenCV has no mp4v encoder here")
            if (image.shape[1], image.shape[0]) != self._size:
                image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
            self._writer.write(image)
            self._next += 1
        self.write_s += time.perf_counter() - t0

    def finish(self) -> None:
        """Close the overlay and move it to its final name."""
        if self._writer is not None:
            self._writer.release()
            os.replace(self._tmp, self.out / OVERLAY_NAME)
            self._writer = None

    def abort(self) -> None:
        """Drop the partial overlay (after an unexpected error)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._tmp.unlink(missing_ok=True)


def _prepare_out(out: Path) -> None:
    """Create OUT and prove a file can be written in it; a UserError otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror or e}") from None


def _default_out(video: str | None, frames: str | None, camera: int | None) -> Path:
    if video is not None:
        return Path("runs") / Path(video).stem
    if frames is not None:
        return Path("runs") / (Path(frames).resolve().name or "frames")
    return Path("runs") / f"camera{camera}"


def _open_segmenters(engines: Engines, expressions: list[str], clip_len: int | None) -> tuple[list[Segmenter], list[bool]]:
    """One Segmenter per expression; a truncation warning becomes one stderr line."""
    segmenters, truncated = [], []
    for text in expressions:
        seg = Segmenter(engines, clip_len)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg.set_expression(text)
        for w in caught:
            print(f"rvos-edge run: warning: {w.message}", file=sys.stderr)
        segmenters.append(seg)
        truncated.append(bool(caught))
    return segmenters, truncated


def run_command(path: str, *, expressions: list[str], video: str | None = None, frames: str | None = None,
                camera: int | None = None, out: str | None = None, backend: str | None = None,
                precision: str = "fp32", clip_len: int | None = None, max_frames: int | None = None,
                device: str = "cpu", threads: int | None = None) -> int:
    """The `run` command; returns the exit code (0, or 130 after Ctrl-C). Bad input raises UserError
    before anything is written; a source that stops early raises DecodeError after the outputs are complete.

    device: "cpu" or "cuda" (ort: the CUDA execution provider; torch: the GPU).
    """
    for text in expressions:
        if not text.strip():
            raise UserError(f"the expression is empty: give a sentence describing the object, got {text!r}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    out_dir = Path(out) if out is not None else _default_out(video, frames, camera)
    source = open_source(video=video, frames=frames, camera=camera)
    try:
        backend = backend or default_backend(path)
        opts: dict[str, Any] = {"threads": threads}
        if backend == "ort":
            opts["providers"] = ("cpu",) if device == "cpu" else (device,)
        else:
            opts["device"] = device
        engines = open_engines(path, backend, precision, **opts)
        segmenters, truncated = _open_segmenters(engines, expressions, clip_len)
        _prepare_out(out_dir)
        return _loop(source, engines, segmenters, expressions, truncated, out_dir, max_frames)
    finally:
        source.close()


def _loop(source: FrameSource, engines: Engines, segmenters: list[Segmenter], expressions: list[str],
          truncated: list[bool], out: Path, max_frames: int | None) -> int:
    folders = mask_folders(expressions)
    outputs = _Outputs(out, folders, source.fps or DEFAULT_FPS)
    known = [x for x in (source.length, max_frames) if x is not None]
    total = min(known) if known else None
    stop: dict[str, Any] = {}
    decode_s, n = 0.0, 0
    t_start = time.perf_counter()
    frames_iter = prefetch(source)                     # decoding overlaps inference
    bar = tqdm(total=total, unit="frame", desc="run", disable=None, file=sys.stderr)
    try:
        try:
            while max_frames is None or n < max_frames:
                t0 = time.perf_counter()
                try:
                    name, frame = next(frames_iter)
                except StopIteration:
                    break
                except (DecodeError, OSError, cv2.error) as e:
                    stop = {"stopped_at": n, "error": str(e)}
                    break
                finally:
                    decode_s += time.perf_counter() - t0
                outputs.add_frame(n, name, frame)
                for k, seg in enumerate(segmenters):
                    outputs.add_results(k, seg.push(frame))
                outputs.write_overlays()
                n += 1
                bar.update()
        except KeyboardInterrupt:
            stop = {"stopped_at": n, "interrupted": True}
        for k, seg in enumerate(segmenters):
            outputs.add_results(k, seg.flush())
        outputs.write_overlays()
        outputs.finish()
    except BaseException:
        outputs.abort()
        raise
    finally:
        frames_iter.close()
        bar.close()
    wall = time.perf_counter() - t_start

    times = sum((s.timings for s in segmenters), StageTimes())
    ms = {"decode": 1000.0 * decode_s, **times.ms(), "write": 1000.0 * outputs.write_s}
    summary: dict[str, Any] = {
        "source": source.description, "artifacts": engines.source, "backend": engines.backend,
        "precision": engines.precision, "clip_len": segmenters[0].clip_len, "frames": n,
        "expressions": [{"text": t, "masks": f, "truncated": tr, "nonempty_masks": ne}
                        for t, f, tr, ne in zip(expressions, folders, truncated, outputs.nonempty)],
        "overlay": OVERLAY_NAME if n else None,
        "fps": {"end_to_end": n / wall if wall > 0 else 0.0,
                "engine": n / times.engine_s if times.engine_s > 0 else 0.0},
        "ms_total": ms, "ms_per_frame": {k: v / n if n else 0.0 for k, v in ms.items()},
        "wall_s": wall, **stop,
    }
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(f"rvos-edge run: {n} frames x {len(expressions)} expression(s), "
          f"{summary['fps']['end_to_end']:.1f} fps end-to-end ({summary['fps']['engine']:.1f} fps engine), "
          f"{engines.backend} {engines.precision} -> {out}")
    if "error" in stop:
        raise DecodeError(f"{stop['error']}; the {n} frames before it are kept, see {out / 'summary.json'}")
    if "interrupted" in stop:
        print(f"rvos-edge run: interrupted after {n} frames (outputs complete for those)", file=sys.stderr)
        return 130
    return 0
