"""Checkpoint -> `text_encoder.onnx`, `clip_model.onnx`, `manifest.json` (DESIGN.md section 4).

    export_artifacts("tiny.safetensors", "artifacts/", clip_len=(1, 8))

How the graphs are made:
- the prompt interaction is folded into constants and CF-MSA / PRTC run their
  `decomposed` / plain-attention forms, so the graphs hold standard ONNX ops only;
- attention="plugin" also writes `clip_model.plugin.onnx`, the clip graph with one
  CubeFrameAttention node per CF-MSA, for TensorRT only (`rvos_edge.export.plugin_graph`);
  the manifest names it under "tensorrt" and the decomposed graphs stay as they are;
- `torch.onnx.export(..., dynamo=True)` traces each wrapper below with a dynamic
  batch "B" and, for a clip-length range, a dynamic "Tc". This exporter writes
  opset 18; lower opsets are refused because onnx's version converter cannot
  take these graphs below 18 (ONNX Runtime >= 1.14 and TensorRT 10.x read 18);
- the export checks itself: `onnx.checker`, tensor names/dtypes against the
  manifest contract, and ONNX Runtime against PyTorch on random inputs at both
  ends of the clip-length range (mask_logits <= 1e-3, history_out and text
  features <= 1e-4 max abs difference); above tolerance it fails and writes nothing;
- the manifest records the token ids whose embedding row is not zero ("learnt_tokens").
The checkpoint is loaded (and so checked) before anything is created. The folder is
written as one unit (`fileio.output_folder`): a staging folder beside DIR that
replaces DIR, an earlier export and its variants included, at the end; on failure
neither DIR nor any staging is left. The exporter's log lines about third-party
operators it does not register (torchvision missing) are silenced; the progress bar
shows on a terminal only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rvos_edge.artifacts.manifest import (
    CLIP_MODEL,
    MANIFEST_NAME,
    TEXT_ENCODER,
    GraphSpec,
    Manifest,
    expected_graphs,
    hash_files,
    producer_versions,
    token_runs,
    write_manifest,
)
from rvos_edge.engines.ort.session import ort_session
from rvos_edge.errors import UserError
from rvos_edge.fileio import output_folder
from rvos_edge.model.checkpoint import load_checkpoint
from rvos_edge.model.text import TextFeatures, learnt_token_ids
from rvos_edge.model.vlprvos import VLPRVOS
from rvos_edge.tokenizer import tokenize_for_prompts, vocab_sha256

OPSET = 18
ATTENTIONS = ("decomposed", "plugin")
TOLERANCE = {"mask_logits": 1e-3, "history_out": 1e-4, "text_feats": 1e-4, "text_global": 1e-4}
_TWO_GB = 2 * 1024 ** 3
# torch.onnx's registry logs one warning per torchvision operator it skips when torchvision is missing
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def _quiet_registration() -> Iterator[None]:
    """Meanwhile the exporter's registry logs errors only."""
    logger = logging.getLogger(_REGISTRATION_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class TextEncoderGraph(nn.Module):
    """tokens int64 [B, 77] -> text_feats [B, 77, Ce], text_mask bool [B, 77], text_global [B, Ce]."""

    def __init__(self, model: VLPRVOS) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(self.model.encode_text(tokens))


class ClipModelGraph(nn.Module):
    """frames uint8 [B, Tc, S, S, 3] + text features + history -> mask_logits, history_out."""

    def __init__(self, model: VLPRVOS) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, text_feats: Tensor, text_mask: Tensor, text_global: Tensor,
                history: Tensor, has_history: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_clip(frames, TextFeatures(text_feats, text_mask, text_global), history, has_history)


def _sample_inputs(model: VLPRVOS, batch: int, clip_len: int, seed: int) -> dict[str, Tensor]:
    """Random but meaningful inputs: real token ids, uint8 frames, a history for one item only."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    exprs = ["the red circle moving to the left", "a small blue square on the right"][:batch]
    tokens = torch.from_numpy(tokenize_for_prompts(exprs, cfg.language_prompts).tokens)
    with torch.no_grad():
        text = model.encode_text(tokens)
    return {
        "tokens": tokens,
        "frames": torch.randint(0, 256, (batch, clip_len, cfg.image_size, cfg.image_size, 3), generator=g, dtype=torch.uint8),
        "text_feats": text.feats, "text_mask": text.mask, "text_global": text.global_,
        "history": torch.randn(batch, cfg.history_prompts, cfg.embed_dim, generator=g),
        "has_history": (torch.arange(batch) % 2 == 0).float()[:, None],
    }


def _export_graph(module: nn.Module, spec: GraphSpec, inputs: dict[str, Tensor], path: Path,
                  clip_len: tuple[int, int], translation: dict | None = None) -> None:
    """Export `module` to `path`; translation: the exporter's custom_translation_table (custom op -> ONNX)."""
    names = [t.name for t in spec.inputs]
    batch = torch.export.Dim("B", min=1, max=1024)
    time = torch.export.Dim("Tc", min=clip_len[0], max=clip_len[1]) if clip_len[0] != clip_len[1] else None
    dynamic = {n: {0: batch, **({1: time} if n == "frames" and time is not None else {})} for n in names}
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    with warnings.catch_warnings(), torch.no_grad(), _quiet_registration():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(inputs[n] for n in names), dynamo=True, opset_version=OPSET,
                                    input_names=names, output_names=[t.name for t in spec.outputs],
                                    dynamic_shapes=dynamic, verbose=False, custom_translation_table=translation)
    program.save(str(path), external_data=params > _TWO_GB * 0.9)
    onnx.checker.check_model(str(path))
    _check_io(path, spec)


def _export_plugin_graph(model: VLPRVOS, spec: GraphSpec, inputs: dict[str, Tensor], path: Path,
                         clip_len: tuple[int, int]) -> None:
    """The clip graph with one CubeFrameAttention node per CF-MSA (rvos_edge.export.plugin_graph): the model's
    attention switched to "plugin" records the custom op, which the translation table maps to the node."""
    from rvos_edge.export.plugin_graph import plugin_nodes, register_schema, translate

    register_schema()
    impl, model.attention_impl = model.attention_impl, "plugin"
    try:
        _export_graph(ClipModelGraph(model), spec, inputs, path, clip_len,
                      translation={torch.ops.rvos_edge.cube_frame_attention.default: translate})
    finally:
        model.attention_impl = impl
    cfg = model.config
    shifts = [n["shift"] for n in plugin_nodes(onnx.load(str(path), load_external_data=False))]
    want = [(i % 2) * (cfg.cube // 2) for i in range(cfg.str_blocks)]
    if shifts != want:
        raise RuntimeError(f"{path.name} has CubeFrameAttention shifts {shifts}, expected {want}")


def _check_io(path: Path, spec: GraphSpec) -> None:
    """The written graph has the contract's tensor names and dtypes, in order."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dtype = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.BOOL: "bool",
             onnx.TensorProto.INT64: "int64", onnx.TensorProto.UINT8: "uint8"}
    for kind, got in (("inputs", graph.input), ("outputs", graph.output)):
        have = [(v.name, dtype.get(v.type.tensor_type.elem_type, "?")) for v in got]
        want = [(t.name, t.dtype) for t in getattr(spec, kind)]
        if have != want:
            raise RuntimeError(f"exported {path.name} has {kind} {have}, the contract says {want}")


def _verify(model: VLPRVOS, folder: Path, specs: dict[str, GraphSpec], clip_len: tuple[int, int]) -> dict[str, float]:
    """ONNX Runtime vs PyTorch on random inputs; returns the max abs difference per output."""
    sessions = {name: ort_session(folder / spec.file) for name, spec in specs.items()}
    worst: dict[str, float] = {}
    for seed, tc in enumerate(sorted({clip_len[0], clip_len[1]})):
        inputs = _sample_inputs(model, batch=2, clip_len=tc, seed=seed)
        with torch.no_grad():
            expected = {"text_feats": inputs["text_feats"], "text_global": inputs["text_global"]}
            expected["mask_logits"], expected["history_out"] = model.forward_clip(
                inputs["frames"], TextFeatures(inputs["text_feats"], inputs["text_mask"], inputs["text_global"]),
                inputs["history"], inputs["has_history"])
        for name, spec in specs.items():
            feeds = {t.name: inputs[t.name].numpy() for t in spec.inputs}
            for t, value in zip(spec.outputs, sessions[name].run(None, feeds)):
                if t.name == "text_mask":
                    if not np.array_equal(value, inputs["text_mask"].numpy()):
                        raise UserError("export verification failed: text_mask differs between ONNX Runtime and PyTorch")
                    continue
                err = float(np.abs(value - expected[t.name].numpy()).max())
                worst[t.name] = max(worst.get(t.name, 0.0), err)
    bad = {k: v for k, v in worst.items() if v > TOLERANCE[k]}
    if bad:
        detail = ", ".join(f"{k} {v:.2e} > {TOLERANCE[k]:.0e}" for k, v in bad.items())
        raise UserError(f"export verification failed: ONNX Runtime differs from PyTorch ({detail}); nothing written")
    return worst


def parse_clip_len(value: int | tuple[int, int] | None, default: int) -> tuple[int, int]:
    """None -> (default, default); N -> (N, N); (a, b) -> (a, b), checked."""
    lo, hi = (default, default) if value is None else (value, value) if isinstance(value, int) else value
    if not (1 <= lo <= hi):
        raise UserError(f"clip length must be >= 1 (a range MIN:MAX needs 1 <= MIN <= MAX), got {lo}:{hi}")
    return lo, hi


def export_artifacts(source: str | os.PathLike | VLPRVOS, out_dir: str | os.PathLike,
                     clip_len: int | tuple[int, int] | None = None, opset: int = OPSET,
                     attention: str = "decomposed", clip_weights: str | os.PathLike | None = None,
                     progress: bool = True) -> tuple[Manifest, dict[str, float]]:
    """Export a checkpoint (or a model) to an artifact folder.

    Returns the manifest written and the verification's max abs error per output.
    clip_len: N for a static clip length, (MIN, MAX) for a range; default the config's.
    attention: "decomposed", or "plugin" to add the TensorRT plugin clip graph.
    """
    if opset != OPSET:
        raise UserError(f"opset {opset} is not supported: the exporter writes opset {OPSET} "
                        "(ONNX Runtime >= 1.14 and TensorRT 10.x read it)")
    if attention not in ATTENTIONS:
        raise UserError(f"attention {attention!r} is not available; use one of {', '.join(ATTENTIONS)}")
    model = source if isinstance(source, VLPRVOS) else load_checkpoint(source, clip_weights=clip_weights)
    model = model.eval().fold_prompts()
    model.attention_impl = "decomposed"
    lengths = parse_clip_len(clip_len, model.config.clip_len)
    with output_folder(out_dir, MANIFEST_NAME) as staging:
        with tqdm(total=4 + (attention == "plugin"), desc="export", unit="step", leave=False,
                  disable=None if progress else True) as steps:
            manifest, errors = _export_into(staging, model, lengths, attention, steps)
    return manifest, errors


def _export_into(staging: Path, model: VLPRVOS, lengths: tuple[int, int], attention: str,
                 steps: tqdm) -> tuple[Manifest, dict[str, float]]:
    """Export, verify and describe `model` in folder `staging` (see export_artifacts)."""
    cfg = model.config
    specs = expected_graphs(cfg, lengths)
    # a ranged Tc is traced at >= 2 so that the exporter does not specialise it to 1
    sample = _sample_inputs(model, batch=2, clip_len=lengths[0] if lengths[0] == lengths[1] else max(2, lengths[0]), seed=0)
    _export_graph(TextEncoderGraph(model), specs[TEXT_ENCODER], sample, staging / specs[TEXT_ENCODER].file, lengths)
    steps.update()
    _export_graph(ClipModelGraph(model), specs[CLIP_MODEL], sample, staging / specs[CLIP_MODEL].file, lengths)
    steps.update()
    errors = _verify(model, staging, specs, lengths)
    steps.update()
    tensorrt = None
    if attention == "plugin":
        from rvos_edge.artifacts.tensorrt import plugin_section
        from rvos_edge.export.plugin_graph import PLUGIN_FILE

        _export_plugin_graph(model, specs[CLIP_MODEL], sample, staging / PLUGIN_FILE, lengths)
        tensorrt = {"plugin": plugin_section(PLUGIN_FILE)}
        steps.update()
    manifest = Manifest(
        config=cfg, graphs=specs, files=hash_files(staging, sorted(p.name for p in staging.iterdir())),
        tokenizer_vocab_sha256=vocab_sha256(), clip_len=lengths, opset=OPSET, attention=attention,
        precision="fp32", producer=producer_versions(), tensorrt=tensorrt,
        learnt_tokens=token_runs(learnt_token_ids(model.clip)))
    write_manifest(staging, manifest)
    steps.update()
    return manifest, errors
