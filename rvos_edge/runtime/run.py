"""`rvos-edge run`: segment a video, a folder of images or a camera for one or more expressions.

Output layout (OUT defaults to ``runs/<source name>``; files of the same name are replaced):

    OUT/masks/<frame>.png                one --expr: one 8-bit PNG per frame at the frame's
                                         own size, 255 inside the mask, 0 outside
    OUT/masks/<k>_<slug>/<frame>.png     several --expr: one folder per expression, k = 0, 1, ...
                                         in command-line order, slug = the text in lower case,
                                         runs of other characters as "-", at most 40 characters
    OUT/overlay.mp4                      the frames with each expression's mask outlined in its
                                         colour (green, red, blue, yellow, magenta, cyan, ...) and
                                         tinted in the colour that contrasts most with the pixels
                                         under it, mp4v, at the first frame's size and the
                                         source's frame rate (10 fps when unknown)
    OUT/summary.json                     frames, fps, per-stage milliseconds, backend, ...

<frame> is the zero-padded frame number (00000, ...) for --video and --camera and
the image's stem for --frames. A run's outputs are one unit (`fileio.output_folder`):
they are written to a staging folder beside OUT, which replaces OUT, previous results
and all, when the run ends; a second process asking for the same OUT meanwhile is
refused, and after a crash OUT holds the previous complete result (or nothing). All
expressions share one decode of the source; each has its own Segmenter (history,
text features) over the same loaded engines, or with `--server URL` its own stream of
`rvos-edge serve` (a RemoteSegmenter; summary.json then adds "server", and its engine time
is the calls' round trips).

Three threads: a background thread decodes the source and prepares each frame for
the engines (resized to S x S RGB, once for all expressions; a video is decoded on that
one thread when the engine runs on this CPU, see video.open_video); the main thread runs
the engines and upsamples the masks; a writer thread encodes the mask PNGs and the
overlay. Queues between them are bounded (8 frames ahead, WRITE_QUEUE items behind).

summary.json: "frames" processed; "fps": {"end_to_end": frames / wall seconds of
the frame loop (decode, pipeline, writing), "engine": frames / seconds in the
clip model summed over expressions}; "ms_total" and "ms_per_frame" for decode (the
main thread's wait for the next prepared frame), resize (the decode thread's time
preparing frames), text, engine, upsample and write (the writer thread's time; resize
and write overlap the engine); "backend", "precision", "clip_len",
"source", "artifacts", "expressions" (text, masks folder, truncated, frames
with a non-empty mask). If the source stopped early: "stopped_at" (the first
frame not decoded) and "error"; after Ctrl-C or SIGTERM: "stopped_at" and
"interrupted". A source that stops early still gets its masks, overlay and summary,
then the command exits 2 with one line on stderr. Ctrl-C and SIGTERM stop the loop
between two frames: the frames read so far are finished (their masks, overlay frames
and summary agree), then the command exits 130; a second signal abandons the run and
leaves OUT as it was.
"""
from __future__ import annotations

import json
import queue
import re
import signal
import sys
import threading
import time
import warnings
from contextlib import closing, suppress
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from rvos_edge.engines import default_backend, default_device, open_engines
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes, make_folder, output_folder
from rvos_edge.runtime.pipeline import PreparedFrame, StageTimes
from rvos_edge.runtime.segmenter import ExpressionTruncatedWarning, Segmenter, SegmentResult
from rvos_edge.runtime.video import DecodeError, FrameSource, open_source, prefetch

COLOURS_BGR = ((0, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0))
DEFAULT_FPS = 10.0
OVERLAY_NAME = "overlay.mp4"
SUMMARY_NAME = "summary.json"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "expression"


def mask_folders(expressions: list[str]) -> list[str]:
    """Mask folder of each expression, relative to OUT: "masks" for one, "masks/<k>_<slug>" for several."""
    if len(expressions) == 1:
        return ["masks"]
    return [f"masks/{k}_{_slug(text)}" for k, text in enumerate(expressions)]


def contrasting_colour(pixels: np.ndarray) -> np.ndarray:
    """The colour of COLOURS_BGR farthest from the mean of `pixels` (BGR [N, 3]), float32 [3]."""
    palette = np.array(COLOURS_BGR, np.float32)
    return palette[np.argmax(np.linalg.norm(palette - pixels.mean(0), axis=1))]


def overlay(frame: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """BGR frame with mask k tinted half-and-half in the colour contrasting with the pixels under it
    and outlined in COLOURS_BGR[k] (lines about 1/160 of the frame's smaller side)."""
    out = frame.copy()
    thickness = max(1, round(min(frame.shape[:2]) / 160))
    for mask in masks:
        if mask.any():
            out[mask] = (0.5 * out[mask] + 0.5 * contrasting_colour(frame[mask])).astype(np.uint8)
    for k, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, COLOURS_BGR[k % len(COLOURS_BGR)], thickness)
    return out


WRITE_QUEUE = 16      # items (frames, clips' results) queued for the writer thread before the loop waits
_END = object()       # the last item of the writer's queue


class _Outputs:
    """Writes masks as results arrive and overlay frames in order once every expression has its mask,
    into folder `out` (the run's staging folder), on a writer thread.

    The frame loop only queues work (`add_frame`, `add_results`; a queue of WRITE_QUEUE items,
    so it waits when the writer falls behind and memory stays bounded), so the engine never waits
    on PNG or video encoding. An exception in the writer stops it; the loop gets it, as it was
    raised, from its next call or from `close`. `close` finishes the queued work, or abandons it
    (`finish=False`, after an error in the loop), and always joins the thread.
    """

    def __init__(self, out: Path, folders: list[str], fps: float) -> None:
        self.out, self.fps = out, fps
        self.dirs = [make_folder(out / f) for f in folders]
        self.frames, self.decode_s, self.write_s = 0, 0.0, 0.0
        self.nonempty = [0] * len(folders)
        self._names: dict[int, str] = {}
        self._frames: dict[int, np.ndarray] = {}
        self._masks: list[dict[int, np.ndarray]] = [{} for _ in folders]
        self._next = 0
        self._video: cv2.VideoWriter | None = None
        self._size: tuple[int, int] = (0, 0)
        self._queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self._abandon = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="rvos-edge-writer", daemon=True)
        self._thread.start()

    def add_frame(self, name: str, frame: np.ndarray) -> None:
        """Register the next frame of the source (its mask file's stem and the frame)."""
        self._put(("frame", self.frames, name, frame))
        self.frames += 1

    def add_results(self, k: int, results: list[SegmentResult]) -> None:
        """Queue the masks of expression `k` for writing (and the overlay frames they complete)."""
        if results:
            self._put(("masks", k, results))

    def close(self, finish: bool = True) -> None:
        """Stop the thread and close the overlay file (complete for the frames written). finish: write
        what is queued first, then raise the writer's exception if it had one the loop has not seen;
        else (the loop is unwinding from its own exception) drop the queued work and raise nothing."""
        if finish:
            self._put(_END)
        else:
            self._abandon.set()
        self._thread.join()
        if self._video is not None:
            self._video.release()
            self._video = None
        if finish:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _put(self, item: object) -> None:
        """Queue `item`, waiting while the queue is full; raises the writer's exception instead once it has one."""
        while True:
            self._raise()
            if not self._thread.is_alive():
                return              # stopped after an exception the loop has already had
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        """The writer thread: handle queued items until _END, an abandon or an exception."""
        try:
            while not self._abandon.is_set():
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                t0 = time.perf_counter()
                if item[0] == "frame":
                    _, index, name, frame = item
                    self._names[index], self._frames[index] = name, frame
                else:
                    self._write_masks(*item[1:])
                    self._write_overlays()
                self.write_s += time.perf_counter() - t0
        except BaseException as e:  # handed to the frame loop, raised there
            self._error = e

    def _write_masks(self, k: int, results: list[SegmentResult]) -> None:
        for r in results:
            ok, png = cv2.imencode(".png", r.mask.astype(np.uint8) * 255)
            if not ok:
                raise UserError(f"cannot encode the mask of frame {r.index} as PNG")
            atomic_write_bytes(self.dirs[k] / f"{self._names[r.index]}.png", png.tobytes())
            self._masks[k][r.index] = r.mask
            self.nonempty[k] += bool(r.mask.any())

    def _write_overlays(self) -> None:
        """Overlay frames whose masks are all in, in frame order."""
        while self._next in self._frames and all(self._next in m for m in self._masks):
            frame = self._frames.pop(self._next)
            image = overlay(frame, [m.pop(self._next) for m in self._masks])
            if self._video is None:
                self._size = (image.shape[1], image.shape[0])
                self._video = cv2.VideoWriter(str(self.out / OVERLAY_NAME), cv2.VideoWriter_fourcc(*"mp4v"),
                                               self.fps, self._size)
                if not self._video.isOpened():
                    raise UserError(f"cannot write {OVERLAY_NAME}: OpenCV has no mp4v encoder here")
            if (image.shape[1], image.shape[0]) != self._size:
                image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
            self._video.write(image)
            self._names.pop(self._next)
            self._next += 1


class _StopRequest:
    """While entered (on the main thread), SIGINT and SIGTERM set `requested` instead of raising,
    so the frame loop can stop between two frames; a second signal raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _default_out(video: str | None, frames: str | None, camera: int | None) -> Path:
    if video is not None:
        return Path("runs") / Path(video).stem
    if frames is not None:
        return Path("runs") / (Path(frames).resolve().name or "frames")
    return Path("runs") / f"camera{camera}"


def open_segmenters(new: Callable[[], Any], expressions: list[str]) -> tuple[list[Any], list[bool], list[str]]:
    """One segmenter per expression from `new` (a Segmenter over loaded engines, or a RemoteSegmenter
    with --server): the segmenters, whether each expression was truncated, and the warnings setting
    them gave (truncated, unknown words), one message each."""
    segmenters, truncated, messages = [], [], []
    for text in expressions:
        seg = new()
        segmenters.append(seg)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg.set_expression(text)
        messages += [str(w.message) for w in caught]
        truncated.append(any(issubclass(w.category, ExpressionTruncatedWarning) for w in caught))
    return segmenters, truncated, messages


def run_command(path: str | None, *, expressions: list[str], video: str | None = None, frames: str | None = None,
                camera: int | None = None, out: str | None = None, backend: str | None = None,
                precision: str = "fp32", clip_len: int | None = None, max_frames: int | None = None,
                device: str | None = None, threads: int | None = None,
                remote: Callable[[], Any] | None = None) -> int:
    """The `run` command; returns the exit code (0, or 130 after Ctrl-C or SIGTERM). Bad input raises
    UserError before anything is written; a source that stops early raises DecodeError once OUT holds
    the outputs of the frames before it.

    device: "cpu" or "cuda" (None: the backend's default; see rvos_edge.engines.engine_options).
    remote: opens one stream of a server (`rvos-edge run --server`: rvos_edge.serving.client's
    RemoteSegmenter); path and the engine options are then unused, the model is the server's.
    """
    for text in expressions:
        if not text.strip():
            raise UserError(f"the expression is empty: give a sentence describing the object, got {text!r}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    out_dir = Path(out) if out is not None else _default_out(video, frames, camera)
    # a video is decoded on one thread next to an engine on this CPU, on FFmpeg's threads otherwise
    engine_here_on_cpu = remote is None and (device or default_device(backend or default_backend(path))) == "cpu"
    source = open_source(video=video, frames=frames, camera=camera, decode_threads=1 if engine_here_on_cpu else 0)
    segmenters: list[Any] = []
    try:
        new = remote
        if new is None:
            new = partial(Segmenter, open_engines(path, backend, precision, device=device, threads=threads), clip_len)
        segmenters, truncated, messages = open_segmenters(new, expressions)
        for message in messages:
            print(f"rvos-edge run: warning: {message}", file=sys.stderr)
        with output_folder(out_dir, SUMMARY_NAME) as staging:
            summary = write_outputs(source, segmenters, expressions, truncated, staging, max_frames)
    finally:
        source.close()
        for seg in segmenters:
            if hasattr(seg, "close"):           # a server's stream, forgotten there (else it idles out)
                with suppress(UserError):
                    seg.close()
    n = summary["frames"]
    print(f"rvos-edge run: {n} frames x {len(expressions)} expression(s), "
          f"{summary['fps']['end_to_end']:.1f} fps end-to-end ({summary['fps']['engine']:.1f} fps engine), "
          f"{summary['backend']} {summary['precision']} -> {out_dir}")
    if "error" in summary:
        raise DecodeError(f"{summary['error']}; the {n} frames before it are kept, see {out_dir / SUMMARY_NAME}")
    if "interrupted" in summary:
        print(f"rvos-edge run: interrupted after {n} frames (outputs complete for those)", file=sys.stderr)
        return 130
    return 0


def _prepared(source: FrameSource, prepare_frame: Callable[[np.ndarray], PreparedFrame] | None,
              times: StageTimes) -> Iterator[tuple[str, np.ndarray, PreparedFrame | np.ndarray]]:
    """(name, BGR frame, the frame for `push`) for each frame of `source`: prepared by `prepare_frame`
    (its seconds added to times.resize_s), or the frame itself when that is None."""
    for name, frame in source:
        if prepare_frame is None:
            yield name, frame, frame
            continue
        t0 = time.perf_counter()
        prepared = prepare_frame(frame)
        times.resize_s += time.perf_counter() - t0
        yield name, frame, prepared


def _frames(source: FrameSource, prepare_frame: Callable[[np.ndarray], PreparedFrame] | None, outputs: _Outputs,
            max_frames: int | None, stop: _StopRequest | _NoStop, ended: dict[str, Any],
            times: StageTimes) -> Iterator[PreparedFrame | np.ndarray]:
    """The source's frames in order, each registered with `outputs`, decoded and prepared (`prepare_frame`,
    its time added to `times`) ahead on a background thread, until the source
    ends, `max_frames`, a stop request or a decode failure (then `ended` says where and why)."""
    frames_iter = prefetch(_prepared(source, prepare_frame, times))   # decode and resize overlap inference
    try:
        while (max_frames is None or outputs.frames < max_frames) and not stop.requested:
            t0 = time.perf_counter()
            try:
                name, frame, prepared = next(frames_iter)
            except StopIteration:
                return
            except (DecodeError, OSError, cv2.error) as e:
                ended.update(stopped_at=outputs.frames, error=str(e))
                return
            finally:
                outputs.decode_s += time.perf_counter() - t0
            outputs.add_frame(name, frame)
            yield prepared
        if stop.requested:
            ended.update(stopped_at=outputs.frames, interrupted=True)
    finally:
        frames_iter.close()


class _NoStop:
    """The stop request of a loop that signals do not stop (it runs in a worker: see `write_outputs`)."""

    requested = False

    def __enter__(self) -> "_NoStop":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def write_outputs(source: FrameSource, segmenters: list[Any], expressions: list[str],
                  truncated: list[bool], out: Path, max_frames: int | None, *,
                  interactive: bool = True) -> dict[str, Any]:
    """Segment the source into folder `out` (masks, overlay, summary: the module docstring's layout, which
    `rvos-edge batch` shares); returns the summary written there.

    segmenters and truncated: from `open_segmenters(...)`. interactive: a progress
    bar on stderr (when it is a terminal) and Ctrl-C/SIGTERM stopping between frames; False for a worker
    process, whose signals belong to the process that runs it.
    """
    folders = mask_folders(expressions)
    outputs = _Outputs(out, folders, source.fps or DEFAULT_FPS)
    known = [x for x in (source.length, max_frames) if x is not None]
    total = min(known) if known else None
    ended: dict[str, Any] = {}
    preparation = StageTimes()
    t_start = time.perf_counter()
    local = all(isinstance(s, Segmenter) for s in segmenters)
    one_size = local and len({s.config.image_size for s in segmenters}) == 1
    prepare_frame = segmenters[0].prepare if one_size else None      # remote ones take the frames as they are
    with ((_StopRequest() if interactive else _NoStop()) as stop,
          tqdm(total=total, unit="frame", desc="run", disable=None if interactive else True, file=sys.stderr) as bar,
          closing(_frames(source, prepare_frame, outputs, max_frames, stop, ended, preparation)) as frames):
        try:
            for frame in frames:
                for k, seg in enumerate(segmenters):
                    outputs.add_results(k, seg.push(frame))
                bar.update()
            for k, seg in enumerate(segmenters):
                outputs.add_results(k, seg.flush())
        except BaseException:
            outputs.close(finish=False)
            raise
        outputs.close()
    wall = time.perf_counter() - t_start
    n = outputs.frames
    times = sum((s.timings for s in segmenters), preparation)
    ms = {"decode": 1000.0 * outputs.decode_s, **times.ms(), "write": 1000.0 * outputs.write_s}
    summary: dict[str, Any] = {
        "source": source.description, **segmenters[0].describe(), "frames": n,
        "expressions": [{"text": t, "masks": f, "truncated": tr, "nonempty_masks": ne}
                        for t, f, tr, ne in zip(expressions, folders, truncated, outputs.nonempty)],
        "overlay": OVERLAY_NAME if n else None,
        "fps": {"end_to_end": n / wall if wall > 0 else 0.0,
                "engine": n / times.engine_s if times.engine_s > 0 else 0.0},
        "ms_total": ms, "ms_per_frame": {k: v / n if n else 0.0 for k, v in ms.items()},
        "wall_s": wall, **ended,
    }
    atomic_write_bytes(out / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode())
    return summary
