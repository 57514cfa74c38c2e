"""Checkpoints: one .safetensors file, the ModelConfig in its metadata.

Two forms:
- full: every weight, CLIP included;
- trainable-only (`trainable_only=True`): the non-CLIP weights plus the sha256
  of the CLIP weights file the model was built from; `load_checkpoint(path,
  clip_weights=FILE)` completes it and refuses a CLIP file with another sha256.

A path ending in .safetensors.gz is the same file gzip-compressed (level 9, no
timestamp). Weights with many zeros shrink a lot: the shipped demo checkpoint,
whose CLIP token rows outside the synthetic vocabulary are zero, goes from 43 MB
to 16 MB. Nothing is unpickled: safetensors holds only tensors and string metadata.
`load_checkpoint` checks the tensors the file declares against those of its config
before it reads any data (so a compressed file is never inflated past that size).
"""
from __future__ import annotations

import gzip
import os

import torch
from safetensors.torch import save

from rvos_edge.config import ModelConfig, get_config
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes, sha256_file
from rvos_edge.model.clip import clip_from_state_dict, infer_arch
from rvos_edge.model.vlprvos import VLPRVOS, clip_arch
from rvos_edge.model.weights import GZIP_SUFFIX, is_safetensors_path, read_safetensors_metadata, read_state_dict

FORMAT = "rvos-edge-checkpoint"
FORMAT_VERSION = "1"


def build_model(preset_or_config: str | ModelConfig, clip_weights: str | os.PathLike | None = None,
                seed: int = 0) -> VLPRVOS:
    """A VLP-RVOS model: learnable parts initialised from `seed` (the global RNG is left alone),
    CLIP from `clip_weights` (OpenAI format, positional embedding resized to the config's
    image size) or randomly initialised when none is given."""
    cfg = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VLPRVOS(cfg)
    model.clip_sha256 = None
    if clip_weights is not None:
        sd = read_state_dict(clip_weights)
        have, want = infer_arch(sd), clip_arch(cfg)
        diff = [f"{k}: file {v}, config {getattr(want, k)}" for k, v in have.__dict__.items()
                if getattr(want, k) != v and k not in ("image_size", "vision_heads", "text_heads")]
        if diff:
            raise UserError(f"CLIP weights {clip_weights} do not fit config {cfg.name!r} ({'; '.join(diff)})")
        clip = clip_from_state_dict(sd, cfg.image_size, cfg.vision_heads, cfg.text_heads, source=str(clip_weights))
        model.clip.load_state_dict(clip.state_dict())
        model.clip_sha256 = sha256_file(clip_weights)
    return model


def save_checkpoint(model: VLPRVOS, path: str | os.PathLike, trainable_only: bool = False) -> None:
    """Write `model` to `path` (.safetensors, or .safetensors.gz compressed) atomically."""
    if not is_safetensors_path(path):
        raise UserError(f"checkpoint path must end in .safetensors or {GZIP_SUFFIX}: {path}")
    state = model.state_dict()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json(),
                "contents": "trainable" if trainable_only else "full"}
    if trainable_only:
        if getattr(model, "clip_sha256", None) is None:
            raise UserError("a trainable-only checkpoint needs a model built from a CLIP weights file "
                            "(its sha256 is recorded); save a full checkpoint instead")
        state = {k: v for k, v in state.items() if not k.startswith("clip.")}
    if getattr(model, "clip_sha256", None):
        metadata["clip_sha256"] = model.clip_sha256
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=metadata)
    if str(path).lower().endswith(GZIP_SUFFIX):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    atomic_write_bytes(path, data)


def read_checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored in a checkpoint, without reading its tensors."""
    return ModelConfig.from_json(_metadata(path)["config"])


def _metadata(path: str | os.PathLike) -> dict[str, str]:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an rvos-edge checkpoint (no '{FORMAT}' metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {meta.get('format_version')} is not supported "
                        f"(this rvos-edge reads version {FORMAT_VERSION})")
    return meta


def _expected_tensors(cfg: ModelConfig, trainable_only: bool) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of what save_checkpoint writes for `cfg` (built on the meta device: no memory)."""
    with torch.device("meta"):
        state = VLPRVOS(cfg).state_dict()
    return {k: (v.dtype, tuple(v.shape)) for k, v in state.items() if not (trainable_only and k.startswith("clip."))}


def load_checkpoint(path: str | os.PathLike, clip_weights: str | os.PathLike | None = None) -> VLPRVOS:
    """Read a checkpoint written by save_checkpoint; a trainable-only one needs `clip_weights`,
    a full one refuses them (it holds its CLIP already)."""
    meta = _metadata(path)
    cfg = ModelConfig.from_json(meta["config"])
    trainable_only = meta.get("contents") == "trainable"
    if not trainable_only and clip_weights is not None:
        raise UserError(f"{path} is a full checkpoint, its CLIP weights are in it: drop --clip-weights {clip_weights}")
    state = read_state_dict(path, expected=_expected_tensors(cfg, trainable_only))
    if trainable_only:
        if clip_weights is None:
            raise UserError(f"{path} holds only the trainable weights; pass the CLIP weights file "
                            f"(sha256 {meta.get('clip_sha256')}) with clip_weights= / --clip-weights")
        if sha256_file(clip_weights) != meta.get("clip_sha256"):
            raise UserError(f"CLIP weights {clip_weights} are not the ones {path} was trained with "
                            f"(sha256 {meta.get('clip_sha256')})")
        model = build_model(cfg, clip_weights)
        state = {**model.clip.state_dict(prefix="clip."), **state}
    else:
        model = VLPRVOS(cfg)
        model.clip_sha256 = meta.get("clip_sha256")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"checkpoint {path} does not match its config: {first}") from None
    return model
