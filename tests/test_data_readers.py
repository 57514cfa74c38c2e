"""Id PNGs and the dataset readers, on tiny datasets written here in the published layouts."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from rvos_edge.data import FolderDataset, RefVOSDataset, SyntheticDataset, open_dataset, write_folder_dataset
from rvos_edge.data.png import davis_palette, read_id_png, write_palette_png
from rvos_edge.errors import UserError


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(path: Path, rows: list[bytes], width: int, depth: int, colour: int, palette: bytes = b"") -> None:
    """A PNG from already-filtered rows (each starts with its filter byte)."""
    blob = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, len(rows), depth, colour, 0, 0, 0))
    if palette:
        blob += _chunk(b"PLTE", palette)
    path.write_bytes(blob + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))


def _filtered(image: np.ndarray) -> list[bytes]:
    """Rows of an 8-bit grayscale image, row y encoded with PNG filter y % 5 (encoder written from the spec)."""
    out, prev = [], np.zeros(image.shape[1], int)
    for y, row in enumerate(image.astype(int)):
        kind = y % 5
        left = np.concatenate([[0], row[:-1]])
        upleft = np.concatenate([[0], prev[:-1]])
        if kind == 0:
            enc = row
        elif kind == 1:
            enc = row - left
        elif kind == 2:
            enc = row - prev
        elif kind == 3:
            enc = row - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            enc = row - pred
        out.append(bytes([kind]) + bytes((enc % 256).astype(np.uint8)))
        prev = row
    return out


def test_davis_palette():
    pal = davis_palette()
    assert pal[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    assert len({tuple(c) for c in pal}) == 256


def test_palette_png_round_trip_and_opencv_sees_colours(tmp_path):
    ids = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
    write_palette_png(tmp_path / "m.png", ids)
    assert (read_id_png(tmp_path / "m.png") == ids).all()
    # OpenCV expands the palette: it returns colours, not ids (this is why read_id_png exists)
    bgr = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (2, 3, 3) and bgr[0, 1].tolist() == [0, 0, 128] and bgr[1, 0].tolist() == [0, 128, 128]


def test_png_filters_bit_depths_and_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 7)).astype(np.uint8)
    _png(tmp_path / "g.png", _filtered(image), 7, 8, 0)
    assert (read_id_png(tmp_path / "g.png") == image).all()
    # 4-bit palette, two pixels per byte (high nibble first), width 3 pads the last byte
    nibbles = np.array([[1, 2, 15], [0, 7, 3]], np.uint8)
    rows = [bytes([0, 0x12, 0xF0]), bytes([0, 0x07, 0x30])]
    _png(tmp_path / "p4.png", rows, 3, 4, 3, bytes(16 * 3))
    assert (read_id_png(tmp_path / "p4.png") == nibbles).all()
    # 16-bit and 8-bit grayscale written by OpenCV (libpng chooses its own filters)
    ids16 = rng.integers(0, 1000, (9, 11)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), ids16)
    assert (read_id_png(tmp_path / "g16.png") == ids16).all()
    ids8 = np.kron(rng.integers(0, 4, (6, 6)), np.ones((5, 5), int)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g8.png"), ids8)
    assert (read_id_png(tmp_path / "g8.png") == ids8).all()
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="RGB PNG"):
        read_id_png(tmp_path / "rgb.png")
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="not a PNG"):
        read_id_png(tmp_path / "x.png")


FRAME_COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _write_refvos(root: Path, split: str, nested: bool, palette: bool = True, with_ids: bool = True) -> dict:
    """Two videos of 3 frames (24 x 32): video "b" has objects 1 and 2, video "a" object 1, absent in frame 2."""
    images = root / split / "JPEGImages" if nested else root / "JPEGImages"
    annotations = root / split / "Annotations" if nested else root / "Annotations"
    ids = {}
    for video in ("b", "a"):
        (images / video).mkdir(parents=True)
        (annotations / video).mkdir(parents=True)
        for t in range(3):
            name = f"{5 * t:05d}"
            cv2.imwrite(str(images / video / f"{name}.jpg"), np.full((24, 32, 3), FRAME_COLOURS[t], np.uint8))
            m = np.zeros((24, 32), np.uint8)
            if not (video == "a" and t == 2):
                m[2:10, 3 + t:12 + t] = 1
            if video == "b":
                m[14:20, 20:30] = 2
            ids[video, name] = m
            if palette:
                write_palette_png(annotations / video / f"{name}.png", m)
            else:
                cv2.imwrite(str(annotations / video / f"{name}.png"), m)
    frames = ["00000", "00005", "00010"]
    exp = lambda text, obj: {"exp": text, **({"obj_id": str(obj)} if with_ids else {})}
    meta = {"videos": {"b": {"frames": frames, "expressions": {"0": exp("the top box", 1), "1": exp("the low box", 2)}},
                       "a": {"frames": frames, "expressions": {"0": exp("a box that leaves", 1)}}}}
    (root / "meta_expressions" / split).mkdir(parents=True)
    (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps(meta))
    return ids


def test_ref_youtube_vos_layout(tmp_path):
    ids = _write_refvos(tmp_path, "train", nested=True)
    data = open_dataset(str(tmp_path))
    assert isinstance(data, RefVOSDataset) and len(data) == 3
    assert [data[i].name for i in range(3)] == ["a/0", "b/0", "b/1"]
    a, b1 = data[0], data[2]
    assert a.expression == "a box that leaves" and a.object_id == 1 and a.kind == "real"
    assert a.frames.shape == (3, 24, 32, 3) and a.masks.shape == (3, 24, 32)
    assert np.abs(a.frames[1].astype(int) - FRAME_COLOURS[1]).max() <= 3      # RGB, JPEG-close
    assert (a.masks[0] == (ids["a", "00000"] == 1)).all() and not a.masks[2].any()
    assert b1.object_id == 2 and (b1.masks[1] == (ids["b", "00005"] == 2)).all() and b1.masks[1].sum() == 60


def test_ref_davis_layout_grayscale_ids_and_splits(tmp_path):
    _write_refvos(tmp_path, "valid", nested=False, palette=False)
    (tmp_path / "meta_expressions" / "train").mkdir()
    (tmp_path / "meta_expressions" / "train" / "meta_expressions.json").write_text('{"videos": {}}')
    with pytest.raises(UserError, match="choose one with --split"):
        open_dataset(str(tmp_path))
    data = open_dataset(str(tmp_path), split="valid")
    assert data[1].masks[0].sum() == 8 * 9
    with pytest.raises(UserError, match="no meta_expressions/test"):
        open_dataset(str(tmp_path), split="test")


def test_ref_youtube_vos_valid_without_ground_truth(tmp_path):
    _write_refvos(tmp_path, "valid", nested=True, with_ids=False)
    sample = RefVOSDataset(tmp_path)[0]
    assert sample.masks is None and sample.frames.shape == (3, 24, 32, 3)
    (tmp_path / "valid" / "JPEGImages" / "a" / "00005.jpg").unlink()
    with pytest.raises(UserError, match="frame 00005 of video a is missing"):
        RefVOSDataset(tmp_path)[0]


def test_folder_of_videos(tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for t in range(5):
        writer.write(np.full((24, 32, 3), 40 * t, np.uint8))
    writer.release()
    (tmp_path / "clip_masks").mkdir()
    for t in range(5):
        m = np.zeros((24, 32), np.uint8)
        m[t:t + 4, 5:9] = 255
        cv2.imwrite(str(tmp_path / "clip_masks" / f"m{t}.png"), m)
    (tmp_path / "expressions.json").write_text(json.dumps([
        {"video": "clip.avi", "expression": "the grey square", "masks": "clip_masks"},
        {"video": "clip.avi", "expression": "no masks here", "kind": "motion"}]))
    data = open_dataset(str(tmp_path))
    assert isinstance(data, FolderDataset) and len(data) == 2
    s = data[0]
    assert s.frames.shape == (5, 24, 32, 3) and s.name == "clip/0" and s.kind == "real"
    assert (s.masks.sum((1, 2)) == 16).all() and s.masks[3, 3:7, 5:9].all()
    assert data[1].masks is None and data[1].kind == "motion"
    (tmp_path / "clip_masks" / "m4.png").unlink()
    with pytest.raises(UserError, match="4 mask PNGs for the 5 frames"):
        data[0]
    (tmp_path / "expressions.json").write_text('[{"video": "clip.avi"}]')
    with pytest.raises(UserError, match="needs \"video\" and \"expression\""):
        open_dataset(str(tmp_path))


def test_write_folder_dataset_round_trip(tmp_path):
    samples = [SyntheticDataset(4, 2)[i] for i in range(2)]
    write_folder_dataset(samples, tmp_path / "out")
    data = open_dataset(str(tmp_path / "out"))
    for s, r in zip(samples, (data[0], data[1])):
        assert (r.name, r.expression, r.kind) == (s.name, s.expression, s.kind)
        assert (r.frames == s.frames).all() and (r.masks == s.masks).all()


def test_synthetic_spec():
    data = open_dataset("synthetic:3:7")
    assert isinstance(data, SyntheticDataset) and (data.seed, len(data)) == (3, 7)
    for bad in ("synthetic", "synthetic:3", "synthetic:a:2", "synthetic:1:2:3"):
        with pytest.raises(UserError, match="synthetic:SEED:COUNT"):
            open_dataset(bad)
