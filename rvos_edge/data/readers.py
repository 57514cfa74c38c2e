"""Readers of referring-video datasets; each is a sequence of `Sample`s (one per expression).

`open_dataset(spec, split=None)` picks the reader:

- ``synthetic:SEED:COUNT``: the first COUNT samples of the synthetic world SEED
  (rvos_edge.data.synthetic); HELDOUT_SEED is kept for evaluation, never for training.
- A folder with ``meta_expressions/<split>/meta_expressions.json``: Ref-YouTube-VOS or
  Ref-DAVIS17 in their published layout (`RefVOSDataset`).
- A folder with ``expressions.json``: a plain folder of videos (`FolderDataset`).

Ref-YouTube-VOS / Ref-DAVIS17 layout::

    ROOT/meta_expressions/<split>/meta_expressions.json
        {"videos": {"<video>": {"frames": ["00000", ...],
                                "expressions": {"0": {"exp": "a person ...", "obj_id": "1"}, ...}}}}
    ROOT/<split>/JPEGImages/<video>/<frame>.jpg    (or ROOT/JPEGImages/...)
    ROOT/<split>/Annotations/<video>/<frame>.png   (or ROOT/Annotations/...; optional)

Annotations are palette PNGs whose values are object ids; single-channel PNGs of
ids are accepted too (rvos_edge.data.png). An expression without "obj_id", or a
split without Annotations (Ref-YouTube-VOS valid), gives samples without masks.

Plain folder layout::

    ROOT/expressions.json   [{"video": "walk.mp4", "expression": "the dog on the left",
                              "masks": "walk_masks", "object_id": 1, "kind": "real", "name": "walk/0"}, ...]

"video" is a video file or a folder of images (natural name order); "masks"
(optional) a folder with one id PNG per frame (same order); "object_id" (optional)
selects an id, without it every non-zero pixel is the object; "kind" defaults to
"real", "name" to "<video stem>/<entry index>". `write_folder_dataset` writes samples
in this layout (PNG frames, palette PNG masks with the object as id 1).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from rvos_edge.data.png import read_id_png, write_palette_png
from rvos_edge.data.sample import Sample
from rvos_edge.data.synthetic import SyntheticDataset
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes

HELDOUT_SEED = 20240917
"""World seed of the held-out synthetic evaluation set; training refuses it."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class Dataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Sample: ...


def natural_key(name: str) -> list:
    """Sort key putting "frame2" before "frame10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_image_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB; UserError when the file cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_video_rgb(path: Path) -> np.ndarray:
    """All frames of a video file or an image folder: uint8 [T, H, W, 3] RGB."""
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        frames = [read_image_rgb(p) for p in files]
    else:
        if not path.is_file():
            raise UserError(f"video {path} does not exist")
        capture = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        capture.release()
        if not frames:
            raise UserError(f"cannot read any frame of video {path}")
    if len({f.shape for f in frames}) != 1:
        raise UserError(f"frames of {path} differ in size")
    return np.stack(frames)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


@dataclass(frozen=True)
class _Entry:
    video: str
    exp_id: str
    expression: str
    object_id: int | None
    frames: tuple[str, ...]


class RefVOSDataset:
    """Ref-YouTube-VOS / Ref-DAVIS17 (module docstring); sample i is loaded when indexed."""

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        self.root = Path(root)
        splits = sorted(p.name for p in (self.root / "meta_expressions").iterdir()
                        if (p / "meta_expressions.json").is_file())
        if split is None:
            if len(splits) != 1:
                raise UserError(f"{self.root} has splits {', '.join(splits) or '(none)'}: choose one with --split")
            split = splits[0]
        if split not in splits:
            raise UserError(f"{self.root}: no meta_expressions/{split}/meta_expressions.json "
                            f"(splits: {', '.join(splits) or 'none'})")
        self.split = split
        self.images = self._find("JPEGImages")
        if self.images is None:
            raise UserError(f"{self.root}: no JPEGImages folder under {split}/ or at the top")
        self.annotations = self._find("Annotations")
        meta = _json(self.root / "meta_expressions" / split / "meta_expressions.json")
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise UserError(f"{self.root}/meta_expressions/{split}/meta_expressions.json has no \"videos\" object")
        self.entries: list[_Entry] = []
        for video in sorted(videos):
            info = videos[video]
            try:
                frames = tuple(str(f) for f in info["frames"])
                for exp_id in sorted(info["expressions"], key=natural_key):
                    e = info["expressions"][exp_id]
                    obj = e.get("obj_id")
                    self.entries.append(_Entry(video, str(exp_id), str(e["exp"]),
                                               None if obj is None else int(obj), frames))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise UserError(f"meta_expressions.json: video {video!r} is malformed ({err!r})") from None
        if not self.entries:
            raise UserError(f"{self.root}: split {split} has no expressions")

    def _find(self, name: str) -> Path | None:
        for folder in (self.root / self.split / name, self.root / name):
            if folder.is_dir():
                return folder
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Sample:
        e = self.entries[i]
        frames = np.stack([read_image_rgb(self._frame_file(e.video, f)) for f in e.frames])
        masks = None
        if e.object_id is not None and self.annotations is not None:
            masks = np.stack([self._mask(e.video, f, e.object_id, frames.shape[1:3]) for f in e.frames])
        return Sample(f"{e.video}/{e.exp_id}", frames, masks, e.expression, "real", e.object_id or 0,
                      {"video": e.video, "frames": e.frames, "split": self.split})

    def _frame_file(self, video: str, frame: str) -> Path:
        for suffix in (".jpg", ".jpeg", ".png"):
            path = self.images / video / f"{frame}{suffix}"
            if path.is_file():
                return path
        raise UserError(f"frame {frame} of video {video} is missing from {self.images / video}")

    def _mask(self, video: str, frame: str, object_id: int, shape: tuple[int, int]) -> np.ndarray:
        path = self.annotations / video / f"{frame}.png"
        if not path.is_file():
            raise UserError(f"annotation {path} is missing")
        ids = read_id_png(path)
        if ids.shape != shape:
            raise UserError(f"annotation {path} is {ids.shape[1]}x{ids.shape[0]}, its frame {shape[1]}x{shape[0]}")
        return ids == object_id


class FolderDataset:
    """A plain folder of videos with an expressions.json (module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        entries = _json(self.root / "expressions.json")
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{self.root}/expressions.json must be a non-empty list of "
                            "{\"video\": ..., \"expression\": ...} objects")
        for n, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("video"), str) or not isinstance(e.get("expression"), str):
                raise UserError(f"{self.root}/expressions.json entry {n} needs \"video\" and \"expression\" strings")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Sample:
        e = self.entries[i]
        video = self.root / e["video"]
        frames = read_video_rgb(video)
        masks, object_id = None, e.get("object_id")
        if e.get("masks"):
            folder = self.root / e["masks"]
            files = sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name)) if folder.is_dir() else []
            if len(files) != len(frames):
                raise UserError(f"{folder}: {len(files)} mask PNGs for the {len(frames)} frames of {video}")
            ids = np.stack([read_id_png(p) for p in files])
            if ids.shape != frames.shape[:3]:
                raise UserError(f"masks in {folder} are {ids.shape[1:]} pixels, the frames {frames.shape[1:3]}")
            masks = ids == int(object_id) if object_id is not None else ids > 0
        name = e.get("name") or f"{Path(e['video']).stem}/{i}"
        return Sample(name, frames, masks, e["expression"], e.get("kind", "real"), int(object_id or 1),
                      {"video": str(video)})


def open_dataset(spec: str, split: str | None = None) -> Dataset:
    """A dataset from `synthetic:SEED:COUNT` or a folder in one of the layouts above."""
    if spec.startswith("synthetic"):
        match = re.fullmatch(r"synthetic:(\d+):(\d+)", spec)
        if match is None:
            raise UserError(f"synthetic data is written synthetic:SEED:COUNT (e.g. synthetic:{HELDOUT_SEED}:200), "
                            f"got {spec!r}")
        return SyntheticDataset(int(match[1]), int(match[2]))
    root = Path(spec)
    if not root.is_dir():
        raise UserError(f"data {spec!r} is neither synthetic:SEED:COUNT nor a folder")
    if (root / "meta_expressions").is_dir():
        return RefVOSDataset(root, split)
    if (root / "expressions.json").is_file():
        return FolderDataset(root)
    raise UserError(f"{root} has neither meta_expressions/ (Ref-YouTube-VOS / Ref-DAVIS17 layout) "
                    "nor expressions.json (folder of videos)")


def write_folder_dataset(samples: Iterable[Sample], out: str | os.PathLike, progress: bool = False) -> Path:
    """Write samples as a plain folder dataset: OUT/<name>/frames/00000.png, OUT/<name>/masks/00000.png
    (object id 1) and OUT/expressions.json. Names have "/" replaced by "_". Returns OUT."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in tqdm(list(samples) if progress else samples, desc="writing", disable=not progress, unit="video"):
        folder = s.name.replace("/", "_")
        (out / folder / "frames").mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(s.frames):
            path = out / folder / "frames" / f"{t:05d}.png"
            _write_image(path, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        entry = {"name": s.name, "video": f"{folder}/frames", "expression": s.expression, "kind": s.kind}
        if s.masks is not None:
            (out / folder / "masks").mkdir(exist_ok=True)
            for t, mask in enumerate(s.masks):
                write_palette_png(out / folder / "masks" / f"{t:05d}.png", mask.astype(np.uint8))
            entry.update(masks=f"{folder}/masks", object_id=1)
        entries.append(entry)
    atomic_write_bytes(out / "expressions.json", json.dumps(entries, indent=1).encode())
    return out


def _write_image(path: Path, image_bgr: np.ndarray) -> None:
    ok, blob = cv2.imencode(path.suffix, image_bgr)
    if not ok:
        raise UserError(f"cannot encode {path}")
    atomic_write_bytes(path, blob.tobytes())
