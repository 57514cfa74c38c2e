"""Reading graphs from an artifact folder, writing precision variants into it, and running graphs from memory.

Variant files are ``<graph>.<precision>.onnx`` beside the base graphs (DESIGN.md
section 4). `add_variant` writes the manifest last, so a folder never names a
file that is not fully written; files a previous build listed and this one no
longer uses (an old calibration cache) leave the manifest's "files".
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import onnx

from rvos_edge.artifacts.manifest import CLIP_MODEL, TEXT_ENCODER, Manifest, hash_files, load_manifest, write_manifest
from rvos_edge.engines.base import Engines
from rvos_edge.engines.ort.runner import OrtRunner
from rvos_edge.engines.ort.session import ort_session
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes

_PROTOBUF_LIMIT = 2 * 1024 ** 3


def variant_file(graph: str, precision: str) -> str:
    """File name of `graph`'s `precision` variant, e.g. clip_model.int8.onnx."""
    return f"{graph}.{precision}.onnx"


def open_folder(directory: str | os.PathLike[str]) -> Manifest:
    """The checked manifest of an artifact folder whose base graphs are FP32 (what the transforms start from)."""
    manifest = load_manifest(directory)
    if manifest.precision != "fp32":
        raise UserError(f"{directory} holds {manifest.precision} base graphs; precision variants are built from "
                        "an FP32 export (rvos-edge export CKPT --out DIR)")
    return manifest


def save_graph(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Check `model` with onnx.checker and write it atomically (a single file under 2 GiB)."""
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        raise UserError(f"{Path(path).name} would be over 2 GiB, which a single ONNX file cannot hold")
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())


def add_variant(directory: str | os.PathLike[str], manifest: Manifest, precision: str, files: Mapping[str, str],
                written: list[str], **changes: Any) -> Manifest:
    """Record `precision` -> `files` ({graph: file}) in the manifest, hashing the `written` files; returns it.

    changes: other Manifest fields to replace (e.g. calibration=...).
    """
    stale = set((manifest.calibration or {}).get("cache", {}).values()) if "calibration" in changes else set()
    hashes = {k: v for k, v in manifest.files.items() if k not in stale}
    hashes.update(hash_files(directory, written))
    manifest = dataclasses.replace(manifest, files=hashes, variants={**manifest.variants, precision: dict(files)},
                                   **changes)
    write_manifest(directory, manifest)
    return manifest


def engines_from_models(manifest: Manifest, text: onnx.ModelProto, clip: onnx.ModelProto, precision: str,
                        source: str, threads: int | None = None) -> Engines:
    """`Engines` for the runtime's pipeline from two in-memory graphs (variants that are not written yet)."""
    return Engines(text=OrtRunner(ort_session(text.SerializeToString(), threads), TEXT_ENCODER),
                   clip=OrtRunner(ort_session(clip.SerializeToString(), threads), CLIP_MODEL),
                   config=manifest.config, precision=precision, clip_len=manifest.clip_len, backend="ort",
                   source=source)
