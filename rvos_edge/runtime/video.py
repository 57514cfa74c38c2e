"""Frame sources for `rvos-edge run`: a video file, a folder of images, a camera (OpenCV).

Each source is checked when opened (exists, opens, gives a first frame), so bad
input is a UserError before any output is written. Iterating yields
(name, frame BGR uint8 [H, W, 3]); `name` is the mask file's stem: the zero-padded
frame number (00000, 00001, ...) for videos and cameras, the image's own stem
for a folder. A source that stops early raises `DecodeError` from the iteration,
after the frames it could decode.

While OpenCV opens or decodes, native writes to stderr (FFmpeg's and OpenCV's
own log lines) are silenced: failures come back as one-line errors instead.
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import cv2
import numpy as np

from rvos_edge.errors import UserError

T = TypeVar("T")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DecodeError(UserError):
    """The source stopped before its end (a truncated or corrupt video, an unreadable image)."""


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 (FFmpeg, OpenCV's container parsers
    and camera probes) to /dev/null meanwhile; failures are reported as UserErrors instead."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:                 # no stderr at all: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FrameSource(ABC):
    """Frames in order. description: for messages; fps: None if unknown; length: frames expected, None if unknown."""

    description: str
    fps: float | None
    length: int | None

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (name, BGR frame); raises DecodeError if the source ends early."""

    def close(self) -> None:
        """Release the device or file."""


class _CaptureSource(FrameSource):
    """A cv2.VideoCapture whose first frame has been read to prove it works."""

    def __init__(self, capture: cv2.VideoCapture, description: str, fps: float | None, length: int | None) -> None:
        self.description, self.fps, self.length = description, fps, length
        self._capture = capture
        with _quiet_stderr():
            ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise UserError(f"{description} gave no frame: it has zero frames or none can be decoded")
        self._first: np.ndarray | None = first

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if self._first is None:
            raise RuntimeError(f"{self.description} can be iterated once")
        frame, self._first, i = self._first, None, 0
        while frame is not None:
            yield f"{i:05d}", frame
            i += 1
            with _quiet_stderr():
                ok, frame = self._capture.read()
            if not ok:
                frame = None
        if self.length is not None and self.length - i > max(2, self.length // 50):
            raise DecodeError(f"decoding {self.description} stopped at frame {i} of the {self.length} "
                              "it declares (truncated or damaged file)")

    def close(self) -> None:
        self._capture.release()


def open_video(path: str | Path, decode_threads: int = 1) -> FrameSource:
    """A video file. Decoding that ends more than max(2, 2%) frames short of the count the
    container declares raises DecodeError (a truncated or damaged file); the tolerance is
    there because OpenCV estimates the count from duration x fps for some containers.

    decode_threads: FFmpeg's threads for this video; 0 lets FFmpeg choose (as many as the
    cores). The default, 1, decodes on the thread that reads, for an engine on the same CPU:
    FFmpeg's frame threads cost CPU of their own (1920 x 1080 mp4v on a 2-core Xeon: 2.15 ms
    of CPU a frame on one thread, 2.9 ms on two) and compete with the engine's threads, while
    one thread still decodes 1080p at about 450 FPS, faster than a CPU engine runs. With the
    engine on a GPU (or a server), decoding may be the bottleneck: give 0.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"video {path} does not exist" if not path.exists() else f"video {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"video {path} is not readable (permission denied)")
    with _quiet_stderr():
        capture = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, decode_threads])
        if not capture.isOpened():      # a backend without the thread setting
            capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"cannot open video {path}: not a video OpenCV can decode, or a damaged file")
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = capture.get(cv2.CAP_PROP_FPS)
    return _CaptureSource(capture, f"video {path}", fps if fps > 0 else None, count if count > 0 else None)


def open_camera(index: int) -> FrameSource:
    """Camera `index` (as cv2.VideoCapture(index)); endless, stop it with --max-frames or Ctrl-C."""
    with _quiet_stderr():
        capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise UserError(f"cannot open camera {index}")
    fps = capture.get(cv2.CAP_PROP_FPS)
    return _CaptureSource(capture, f"camera {index}", fps if fps > 0 else None, None)


def _natural_key(name: str) -> list[int | str]:
    """Sort key putting frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class _FolderSource(FrameSource):
    def __init__(self, folder: Path, images: list[Path]) -> None:
        self.description, self.fps, self.length = f"frames folder {folder}", None, len(images)
        self._images = images

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, image in enumerate(self._images):
            with _quiet_stderr():
                frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
            if frame is None:
                raise DecodeError(f"cannot read image {image} (frame {i} of {self.description}): damaged or not an image")
            yield image.stem, frame


def open_frames(folder: str | Path) -> FrameSource:
    """The images of `folder` (IMAGE_EXTENSIONS, any case), in natural order of their names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"frames folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    try:
        images = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                        key=lambda p: _natural_key(p.name))
    except OSError as e:
        raise UserError(f"cannot list frames folder {folder}: {e.strerror}") from None
    if not images:
        raise UserError(f"frames folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise UserError(f"frames folder {folder} has two images named {p.stem} ({stems[p.stem].name}, {p.name})")
        stems[p.stem] = p
    with _quiet_stderr():
        first = cv2.imread(str(images[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise UserError(f"cannot read image {images[0]}: damaged or not an image")
    return _FolderSource(folder, images)


def open_source(video: str | Path | None = None, frames: str | Path | None = None,
                camera: int | None = None, decode_threads: int = 1) -> FrameSource:
    """Exactly one of a video file (decoded on `decode_threads`, see open_video), a frames folder
    or a camera index."""
    given = [x is not None for x in (video, frames, camera)]
    if sum(given) != 1:
        raise UserError("give exactly one of --video, --frames, --camera")
    if video is not None:
        return open_video(video, decode_threads)
    if frames is not None:
        return open_frames(frames)
    return open_camera(int(camera))


class _Raised:
    """An exception of the producer thread, handed to the consumer in order."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Iterate `items` on a background thread, up to `depth` items ahead.

    Decoding then overlaps inference (OpenCV and ONNX Runtime release the GIL).
    Items and the producer's exception (e.g. a DecodeError after N frames) arrive in
    the order the producer met them. Closing the iterator early stops the thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        """Queue `item` unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # handed over, re-raised in the consumer
            put(_Raised(e))

    thread = threading.Thread(target=produce, name="rvos-edge-prefetch", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not end:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
