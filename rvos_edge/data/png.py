"""Object-id PNGs: read palette or grayscale PNGs as their stored values, write palette PNGs.

The published Annotations of DAVIS and Ref-YouTube-VOS are palette ('P' mode)
PNGs whose pixel values are object ids; OpenCV expands a palette to colours
(cv2.imread gives BGR even with IMREAD_UNCHANGED), so the ids are decoded here.
`read_id_png` accepts palette PNGs (bit depth 1-8) and grayscale PNGs (8 or 16 bit,
the value being the id); anything else (colour, interlaced) is a UserError.

    ids = read_id_png("Annotations/video/00000.png")      # uint8/uint16 [H, W]
    write_palette_png("mask.png", ids)                     # ids uint8 [H, W], DAVIS palette
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def davis_palette() -> np.ndarray:
    """uint8 [256, 3]: the PASCAL VOC / DAVIS palette (id bits spread over the R, G, B channels)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def _unfilter(data: bytes, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    """Undo the per-row PNG filters: uint8 [height, stride]."""
    if len(data) < height * (stride + 1):
        raise UserError(f"{path}: truncated PNG image data")
    rows = np.frombuffer(data, np.uint8, height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, raw = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = raw.copy()
        elif kind == 1:   # Sub: running sum per byte lane, mod 256
            lanes = np.pad(raw, (0, -stride % bpp)).reshape(-1, bpp)
            cur = np.cumsum(lanes, axis=0, dtype=np.uint8).reshape(-1)[:stride]
        elif kind == 2:   # Up
            cur = raw + prev
        elif kind in (3, 4):   # Average, Paeth: each byte depends on the one to its left
            cur = np.zeros(stride, np.uint8)
            r, p = raw.tolist(), prev.tolist()
            c = [0] * stride
            for i in range(stride):
                a = c[i - bpp] if i >= bpp else 0
                b = p[i]
                if kind == 3:
                    c[i] = (r[i] + ((a + b) >> 1)) & 255
                else:
                    d = p[i - bpp] if i >= bpp else 0
                    pa, pb, pc = abs(b - d), abs(a - d), abs(a + b - 2 * d)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
                    c[i] = (r[i] + pred) & 255
            cur[:] = c
        else:
            raise UserError(f"{path}: corrupt PNG (row filter {kind})")
        out[y] = cur
        prev = cur
    return out


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """The stored values of a palette or grayscale PNG: uint8 [H, W] (uint16 for 16-bit grayscale)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not blob.startswith(SIGNATURE):
        raise UserError(f"{path} is not a PNG file")
    pos, header, idat = 8, None, []
    while pos + 8 <= len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise UserError(f"{path}: corrupt PNG (no IHDR or IDAT chunk)")
    width, height, depth, colour, _, _, interlace = header
    if colour not in (0, 3) or interlace:
        what = "interlaced" if interlace else {2: "RGB", 4: "grey+alpha", 6: "RGBA"}.get(colour, f"type {colour}")
        raise UserError(f"{path}: {what} PNG; object-id masks must be palette or grayscale PNGs "
                        "(pixel value = object id), not interlaced")
    try:
        data = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise UserError(f"{path}: corrupt PNG data ({e})") from None
    stride = (width * depth + 7) // 8
    rows = _unfilter(data, height, stride, max(1, depth // 8), path)
    if depth == 16:
        return rows.view(">u2").astype(np.uint16).reshape(height, width)
    if depth == 8:
        return rows
    bits = np.unpackbits(rows, axis=1).reshape(height, -1, depth)
    weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
    return (bits[:, :width] * weights).sum(-1).astype(np.uint8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_palette_png(path: str | os.PathLike, ids: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write ids uint8 [H, W] as an 8-bit palette PNG (DAVIS palette by default), atomically."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype != np.uint8:
        raise ValueError(f"ids must be uint8 [H, W], got {ids.dtype} {list(ids.shape)}")
    pal = davis_palette() if palette is None else np.asarray(palette, np.uint8)
    h, w = ids.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), ids], axis=1).tobytes()   # filter 0 on every row
    blob = (SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + _chunk(b"PLTE", pal.tobytes()) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))
    atomic_write_bytes(path, blob)
