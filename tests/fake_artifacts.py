"""Fake artifact folders for runtime tests: tiny ONNX graphs with the exported tensors' exact
names, dtypes and shapes (DESIGN.md section 4) whose outputs are simple functions that the
numpy references below compute independently.

text_encoder (tokens int64 [B, 77]):
    text_feats[b, t, c] = tokens[b, t] * (c + 1) * 1e-6
    text_mask[b, t]     = tokens[b, t] != 0
    text_global[b, c]   = sum_t tokens[b, t] * 1e-6 + offset        (offset tells precision variants apart)
clip_model:
    pix[b, t, y, x]     = mean over RGB and over the k x k block (k = S / 4h) of frames / 255
    bias[b]             = text_global[b, 0] + 0.001 * sum_t text_mask[b, t] + 0.1 * has_history[b] * history[b, 0, 0]
    mask_logits         = pix - 0.5 + bias                           [B, Tc, 4h, 4w]
    history_out[b]      = 0.5 * has_history[b] * history[b] + mean_{t,y,x} pix[b] + 1e-3 * text_feats[b, 0, 0]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from rvos_edge.artifacts.manifest import Manifest, expected_graphs, hash_files, write_manifest
from rvos_edge.config import ModelConfig, get_config
from rvos_edge.tokenizer import vocab_sha256

TINY = get_config("tiny")
_ONNX_TYPES = {"bool": TensorProto.BOOL, "uint8": TensorProto.UINT8, "int64": TensorProto.INT64,
               "float32": TensorProto.FLOAT}


def _value_infos(specs) -> list:
    return [helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.dtype], list(t.shape)) for t in specs]


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def text_encoder_model(cfg: ModelConfig, clip_len: tuple[int, int], offset: float = 0.0) -> onnx.ModelProto:
    spec = expected_graphs(cfg, clip_len)["text_encoder"]
    ce = cfg.embed_dim
    nodes = [
        _const("scale", ((np.arange(ce, dtype=np.float32) + 1) * 1e-6).reshape(1, 1, ce)),
        _const("zero", np.array(0, np.int64)),
        _const("one_e6", np.array(1e-6, np.float32)),
        _const("ones", np.ones((1, ce), np.float32)),
        _const("offset", np.array(offset, np.float32)),
        _const("axis1", np.array([1], np.int64)),
        _const("neg1", np.array([-1], np.int64)),
        helper.make_node("Cast", ["tokens"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["tf", "neg1"], ["tf3"]),
        helper.make_node("Mul", ["tf3", "scale"], ["text_feats"]),
        helper.make_node("Equal", ["tokens", "zero"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["text_mask"]),
        helper.make_node("ReduceSum", ["tf", "axis1"], ["tsum"], keepdims=1),
        helper.make_node("Mul", ["tsum", "one_e6"], ["tsum_s"]),
        helper.make_node("Add", ["tsum_s", "offset"], ["tsum_o"]),
        helper.make_node("Mul", ["tsum_o", "ones"], ["text_global"]),
    ]
    graph = helper.make_graph(nodes, "fake_text_encoder", _value_infos(spec.inputs), _value_infos(spec.outputs))
    return _model(graph)


def clip_model_model(cfg: ModelConfig, clip_len: tuple[int, int]) -> onnx.ModelProto:
    spec = expected_graphs(cfg, clip_len)["clip_model"]
    m = cfg.mask_size
    k = cfg.image_size // m
    nodes = [
        _const("inv255", np.array(1 / 255, np.float32)),
        _const("half", np.array(0.5, np.float32)),
        _const("tenth", np.array(0.1, np.float32)),
        _const("milli", np.array(1e-3, np.float32)),
        _const("pool_shape", np.array([0, 0, m, k, m, k], np.int64)),
        _const("axis1", np.array([1], np.int64)),
        _const("bias_shape", np.array([-1, 1, 1, 1], np.int64)),
        _const("hist_shape", np.array([-1, 1, 1], np.int64)),
        _const("idx0", np.array([0], np.int64)),
        _const("idx1", np.array([1], np.int64)),
        helper.make_node("Cast", ["frames"], ["ff"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["ff"], ["gray"], axes=[4], keepdims=0),          # [B, Tc, S, S]
        helper.make_node("Reshape", ["gray", "pool_shape"], ["blocks"]),
        helper.make_node("ReduceMean", ["blocks"], ["pooled"], axes=[3, 5], keepdims=0),    # [B, Tc, m, m]
        helper.make_node("Mul", ["pooled", "inv255"], ["pix"]),
        # bias [B]
        helper.make_node("Slice", ["text_global", "idx0", "idx1", "axis1"], ["g0"]),        # [B, 1]
        helper.make_node("Cast", ["text_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),           # [B, 1]
        helper.make_node("Mul", ["count", "milli"], ["count_s"]),
        helper.make_node("Flatten", ["history"], ["hflat"], axis=1),                         # [B, m_h*Ce]
        helper.make_node("Slice", ["hflat", "idx0", "idx1", "axis1"], ["h00"]),             # [B, 1]
        helper.make_node("Mul", ["h00", "has_history"], ["h00g"]),
        helper.make_node("Mul", ["h00g", "tenth"], ["h00s"]),
        helper.make_node("Add", ["g0", "count_s"], ["b1"]),
        helper.make_node("Add", ["b1", "h00s"], ["bias"]),
        helper.make_node("Reshape", ["bias", "bias_shape"], ["bias4"]),
        helper.make_node("Sub", ["pix", "half"], ["centred"]),
        helper.make_node("Add", ["centred", "bias4"], ["mask_logits"]),
        # history_out
        helper.make_node("ReduceMean", ["pix"], ["pmean"], axes=[1, 2, 3], keepdims=0),         # [B]
        helper.make_node("Flatten", ["text_feats"], ["fflat"], axis=1),
        helper.make_node("Slice", ["fflat", "idx0", "idx1", "axis1"], ["f00"]),             # [B, 1]
        helper.make_node("Mul", ["f00", "milli"], ["f00s"]),
        helper.make_node("Reshape", ["pmean", "hist_shape"], ["pmean3"]),
        helper.make_node("Reshape", ["f00s", "hist_shape"], ["f00s3"]),
        helper.make_node("Reshape", ["has_history", "hist_shape"], ["gate3"]),
        helper.make_node("Mul", ["history", "gate3"], ["hg"]),
        helper.make_node("Mul", ["hg", "half"], ["hh"]),
        helper.make_node("Add", ["hh", "pmean3"], ["hsum"]),
        helper.make_node("Add", ["hsum", "f00s3"], ["history_out"]),
    ]
    graph = helper.make_graph(nodes, "fake_clip_model", _value_infos(spec.inputs), _value_infos(spec.outputs))
    return _model(graph)


def make_fake_artifacts(directory: Path, cfg: ModelConfig = TINY, clip_len: tuple[int, int] | None = None,
                        variants: dict[str, float] | None = None) -> Path:
    """Write a fake artifact folder; variants {"fp16": offset} add graphs whose text_global is shifted."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clip_len = clip_len or (cfg.clip_len, cfg.clip_len)
    onnx.save(text_encoder_model(cfg, clip_len), directory / "text_encoder.onnx")
    onnx.save(clip_model_model(cfg, clip_len), directory / "clip_model.onnx")
    names = ["text_encoder.onnx", "clip_model.onnx"]
    variant_files = {}
    for precision, offset in (variants or {}).items():
        files = {"text_encoder": f"text_encoder.{precision}.onnx", "clip_model": f"clip_model.{precision}.onnx"}
        onnx.save(text_encoder_model(cfg, clip_len, offset), directory / files["text_encoder"])
        onnx.save(clip_model_model(cfg, clip_len), directory / files["clip_model"])
        names += list(files.values())
        variant_files[precision] = files
    manifest = Manifest(config=cfg, graphs=expected_graphs(cfg, clip_len), files=hash_files(directory, names),
                        tokenizer_vocab_sha256=vocab_sha256(), clip_len=clip_len, variants=variant_files,
                        producer={"rvos_edge": "test"})
    write_manifest(directory, manifest)
    return directory


def edit_manifest(directory: Path, **changes) -> None:
    """Overwrite top-level fields of directory/manifest.json (to make it wrong on purpose)."""
    path = Path(directory) / "manifest.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


# ---- independent numpy references of the fake graphs ----------------------------------------

def ref_text(tokens: np.ndarray, cfg: ModelConfig = TINY, offset: float = 0.0) -> dict[str, np.ndarray]:
    t = tokens.astype(np.float64)
    ce = cfg.embed_dim
    return {"text_feats": t[:, :, None] * (np.arange(ce) + 1) * 1e-6,
            "text_mask": tokens != 0,
            "text_global": np.repeat(t.sum(1, keepdims=True) * 1e-6 + offset, ce, axis=1)}


def ref_clip(frames_rgb: np.ndarray, text: dict[str, np.ndarray], history: np.ndarray, has_history: float,
             cfg: ModelConfig = TINY) -> tuple[np.ndarray, np.ndarray]:
    """frames_rgb uint8 [Tc, S, S, 3] (batch 1) -> mask_logits [Tc, m, m], history_out [m_h, Ce]."""
    m = cfg.mask_size
    k = cfg.image_size // m
    gray = frames_rgb.astype(np.float64).mean(-1)
    pix = gray.reshape(len(frames_rgb), m, k, m, k).mean((2, 4)) / 255
    bias = text["text_global"][0, 0] + 0.001 * text["text_mask"][0].sum() + 0.1 * has_history * history[0, 0]
    history_out = 0.5 * has_history * history + pix.mean() + 1e-3 * text["text_feats"][0, 0, 0]
    return pix - 0.5 + bias, history_out
