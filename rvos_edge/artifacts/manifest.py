"""`manifest.json`: what an artifact folder holds and how to check it (DESIGN.md section 4).

An artifact folder written by ``rvos-edge export`` holds ``text_encoder.onnx``,
``clip_model.onnx``, precision variants beside them, and ``manifest.json``:

    {"format": "rvos-edge-artifacts", "format_version": 1,
     "config": {... ModelConfig.to_dict() ...},
     "opset": 17, "attention": "decomposed", "precision": "fp32",
     "clip_len": {"min": 6, "max": 6},                    # static when min == max
     "graphs": {"text_encoder": {"file": "text_encoder.onnx",
                                 "inputs": [{"name": "tokens", "dtype": "int64", "shape": ["B", 77]}],
                                 "outputs": [...]},
                "clip_model": {...}},
     "files": {"text_encoder.onnx": "<sha256 hex>", ...},  # every file, external data included
     "variants": {"fp16": {"text_encoder": "text_encoder.fp16.onnx", "clip_model": "clip_model.fp16.onnx"},
                  "int8": {"text_encoder": "text_encoder.int8.onnx", "clip_model": "clip_model.int8.onnx"}},
     "calibration": {"method": "entropy", "samples": 64, "seed": 0, "data": "synthetic:1:64",   # optional
                     "exclude": ["*/model.head.out/*"], "quantizer": "ort", "tool": "onnxruntime.quantization 1.31.0",
                     "cache": {"text_encoder": "text_encoder.calib.cache", "clip_model": "clip_model.calib.cache"}},
     "tensorrt": {"plugin": {...}, "engines": {"fp16": {...}}},   # optional, see rvos_edge.engines.trt.plan
     "tokenizer_vocab_sha256": "<sha256 hex>",
     "learnt_tokens": [[0, 1], [320, 322], ...],          # optional, see below
     "producer": {"rvos_edge": "0.1.0", "torch": "...", "onnx": "...", "onnxruntime": "..."}}

Variants (written by `rvos_edge.calib`) may name a base file when a graph is
left unchanged (an int8 variant whose text encoder is excluded from INT8 names
``text_encoder.onnx``). "calibration" is present once INT8 graphs were
calibrated: how (method, samples, seed, data, exclusion patterns, quantizer: ort, modelopt or nncf, and the
tool with its version)
and "cache", the TensorRT implicit-INT8 calibration cache of each quantized
graph; folders without it (older exports) load as before. "tensorrt" is present
once the folder holds TensorRT material: "plugin", the clip graph whose CF-MSA
are CubeFrameAttention plugin nodes (``export --attention plugin``; TensorRT
only), and "engines", the engines built per precision (TensorRT version, GPU,
files); `rvos_edge.engines.trt.plan` reads and checks it. "learnt_tokens" lists the
token ids whose embedding row is not zero, as [start, stop) runs: the words the text
encoder has learnt (the runtime warns about the others); folders without it (older
exports) warn about nothing.

Dtypes are numpy names ("int64", "float32", "bool", "uint8", "float16"); symbolic
dimensions are strings ("B" for the batch, "Tc" for a clip-length range).
`expected_graphs` gives the tensors the runtime relies on, so the exporter
writes them and `load_manifest` checks them.

`load_manifest` fails with a `ManifestError` (a `UserError`: one line, exit 2 in
the CLI) naming what is wrong: no manifest, not JSON, another format or format
version, a missing field, a config that does not parse, a file that is missing
or whose sha256 differs, a tokenizer vocabulary other than the installed one.
Importing this module does not import torch.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from rvos_edge.artifacts.precision import graph_precision
from rvos_edge.config import ModelConfig
from rvos_edge.errors import UserError
from rvos_edge.fileio import atomic_write_bytes, sha256_file

FORMAT = "rvos-edge-artifacts"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TEXT_ENCODER = "text_encoder"
CLIP_MODEL = "clip_model"
GRAPH_NAMES = (TEXT_ENCODER, CLIP_MODEL)
DTYPES = ("bool", "uint8", "int32", "int64", "float16", "float32")

Dim = int | str
TokenRuns = tuple[tuple[int, int], ...]


class ManifestError(UserError):
    """An artifact folder whose manifest or files cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape (symbolic dims are strings)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "TensorSpec":
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ManifestError(f"{where}: a tensor must be an object with a string 'name'")
        dtype, shape = d.get("dtype"), d.get("shape")
        if dtype not in DTYPES:
            raise ManifestError(f"{where}: tensor {d['name']!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(isinstance(s, (int, str)) and not isinstance(s, bool) for s in shape):
            raise ManifestError(f"{where}: tensor {d['name']!r} needs a shape list of ints and dimension names")
        return cls(d["name"], dtype, tuple(shape))


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the folder: its file name and tensors."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "GraphSpec":
        if not isinstance(d, dict) or not isinstance(d.get("file"), str):
            raise ManifestError(f"{where}: a graph must be an object with a string 'file'")
        tensors = {}
        for key in ("inputs", "outputs"):
            if not isinstance(d.get(key), list):
                raise ManifestError(f"{where}: '{key}' must be a list of tensors")
            tensors[key] = tuple(TensorSpec.from_dict(t, f"{where}.{key}") for t in d[key])
        return cls(d["file"], tensors["inputs"], tensors["outputs"])


def expected_graphs(config: ModelConfig, clip_len: tuple[int, int | None]) -> dict[str, GraphSpec]:
    """The two graphs the runtime relies on, for `config` and a (min, max) clip length.

    Tc is the int clip length when min == max, else the dimension name "Tc"
    (max None: unbounded).
    """
    ce, s, m, mh, ctx = config.embed_dim, config.image_size, config.mask_size, config.history_prompts, config.context_length
    tc: Dim = clip_len[0] if clip_len[0] == clip_len[1] else "Tc"
    text_out = (TensorSpec("text_feats", "float32", ("B", ctx, ce)),
                TensorSpec("text_mask", "bool", ("B", ctx)),
                TensorSpec("text_global", "float32", ("B", ce)))
    return {
        TEXT_ENCODER: GraphSpec(f"{TEXT_ENCODER}.onnx", (TensorSpec("tokens", "int64", ("B", ctx)),), text_out),
        CLIP_MODEL: GraphSpec(
            f"{CLIP_MODEL}.onnx",
            (TensorSpec("frames", "uint8", ("B", tc, s, s, 3)), *text_out,
             TensorSpec("history", "float32", ("B", mh, ce)),
             TensorSpec("has_history", "float32", ("B", 1))),
            (TensorSpec("mask_logits", "float32", ("B", tc, m, m)),
             TensorSpec("history_out", "float32", ("B", mh, ce)))),
    }


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of an artifact folder.

    clip_len: (min, max) clip length the clip graph accepts; static when equal.
    graphs: the base-precision graphs, keyed by GRAPH_NAMES.
    files: sha256 (hex) of every file of the folder, keyed by file name.
    variants: other precisions, e.g. {"fp16": {"text_encoder": "text_encoder.fp16.onnx", ...}}.
    calibration: how the int8 variant was calibrated and its TensorRT caches (see the module docstring); None before.
    tensorrt: the plugin graph and the TensorRT engines (see `rvos_edge.engines.trt.plan`); None before.
    learnt_tokens: [start, stop) runs of the token ids the text encoder learnt; None when not recorded.
    """

    config: ModelConfig
    graphs: dict[str, GraphSpec]
    files: dict[str, str]
    tokenizer_vocab_sha256: str
    clip_len: tuple[int, int]
    opset: int = 17
    attention: str = "decomposed"
    precision: str = "fp32"
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    learnt_tokens: TokenRuns | None = None

    def calibration_cache(self, graph: str) -> str | None:
        """File name of the TensorRT calibration cache of `graph` (None when it has none)."""
        return (self.calibration or {}).get("cache", {}).get(graph)

    @property
    def precisions(self) -> list[str]:
        """Every precision the folder holds graphs for, the base one first."""
        return [self.precision, *(p for p in self.variants if p != self.precision)]

    def graph_files(self, precision: str | None = None) -> dict[str, str]:
        """{"text_encoder": file, "clip_model": file} for `precision` (default: the base precision); an
        execution hint on the FP32 graphs (bf16: rvos_edge.artifacts.precision.graph_precision) gets those."""
        precision = graph_precision(precision or self.precision)
        if precision == self.precision:
            return {name: self.graphs[name].file for name in GRAPH_NAMES}
        if precision not in self.variants:
            raise ManifestError(f"no {precision} graphs in this artifact folder (it has: {', '.join(self.precisions)}); "
                                f"build them with `rvos-edge build DIR --precision {precision}`")
        return dict(self.variants[precision])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "opset": self.opset, "attention": self.attention, "precision": self.precision,
            "clip_len": {"min": self.clip_len[0], "max": self.clip_len[1]},
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "files": dict(self.files),
            "variants": {p: dict(v) for p, v in self.variants.items()},
            "tokenizer_vocab_sha256": self.tokenizer_vocab_sha256,
            "producer": dict(self.producer),
            **({"calibration": dict(self.calibration)} if self.calibration is not None else {}),
            **({"tensorrt": dict(self.tensorrt)} if self.tensorrt is not None else {}),
            **({"learnt_tokens": [list(r) for r in self.learnt_tokens]} if self.learnt_tokens is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """Parse and check a manifest's JSON object (format, fields, contract tensors); no file access."""
        if not isinstance(d, dict):
            raise ManifestError("manifest.json must hold a JSON object")
        if d.get("format") != FORMAT:
            raise ManifestError(f"manifest format is {d.get('format')!r}, expected {FORMAT!r}: not an rvos-edge artifact folder")
        if d.get("format_version") != FORMAT_VERSION:
            raise ManifestError(f"artifact format version {d.get('format_version')!r} but this rvos-edge reads version "
                                f"{FORMAT_VERSION}: re-export with this version of rvos-edge")

        def get(key: str, kind: type) -> Any:
            value = d.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ManifestError(f"manifest field {key!r} is missing or not {kind.__name__}")
            return value

        try:
            config = ModelConfig.from_dict(get("config", dict))
        except (UserError, TypeError) as e:
            raise ManifestError(f"manifest config does not parse: {e}") from None
        cl = get("clip_len", dict)
        lo, hi = cl.get("min"), cl.get("max")
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ManifestError(f"manifest clip_len must be {{'min': a, 'max': b}} with 1 <= a <= b, got {cl}")
        graphs = get("graphs", dict)
        missing = [g for g in GRAPH_NAMES if g not in graphs]
        if missing:
            raise ManifestError(f"manifest has no graph {', '.join(missing)}")
        variants = get("variants", dict)
        for p, v in variants.items():
            if not isinstance(v, dict) or sorted(v) != sorted(GRAPH_NAMES) or not all(isinstance(f, str) for f in v.values()):
                raise ManifestError(f"manifest variant {p!r} must name a file for each of {', '.join(GRAPH_NAMES)}")
        calibration = d.get("calibration")
        if calibration is not None:
            cache = calibration.get("cache", {}) if isinstance(calibration, dict) else None
            if not isinstance(cache, dict) or not all(g in GRAPH_NAMES and isinstance(f, str) for g, f in cache.items()):
                raise ManifestError("manifest 'calibration' must be an object whose 'cache' maps graph names to files")
        tensorrt = d.get("tensorrt")
        if tensorrt is not None and not isinstance(tensorrt, dict):
            raise ManifestError("manifest 'tensorrt' must be an object")
        files = get("files", dict)
        if not all(isinstance(h, str) for h in files.values()):
            raise ManifestError("manifest 'files' must map file names to sha256 hex strings")
        manifest = cls(
            config=config,
            graphs={g: GraphSpec.from_dict(graphs[g], f"graphs.{g}") for g in GRAPH_NAMES},
            files=dict(files),
            tokenizer_vocab_sha256=get("tokenizer_vocab_sha256", str),
            clip_len=(lo, hi),
            opset=get("opset", int), attention=get("attention", str), precision=get("precision", str),
            variants={p: dict(v) for p, v in variants.items()},
            producer=dict(get("producer", dict)),
            calibration=dict(calibration) if calibration is not None else None,
            tensorrt=dict(tensorrt) if tensorrt is not None else None,
            learnt_tokens=_token_runs(d.get("learnt_tokens")),
        )
        manifest._check_contract()
        return manifest

    def _check_contract(self) -> None:
        """Graph tensors carry the names and dtypes the runtime uses; every graph file has a sha256."""
        expected = expected_graphs(self.config, self.clip_len)
        for name in GRAPH_NAMES:
            for kind in ("inputs", "outputs"):
                want = {t.name: t.dtype for t in getattr(expected[name], kind)}
                have = {t.name: t.dtype for t in getattr(self.graphs[name], kind)}
                if want != have:
                    raise ManifestError(f"manifest graph {name} has {kind} {have}, this rvos-edge expects {want}: "
                                        "re-export with this version of rvos-edge")
        named = [g.file for g in self.graphs.values()] + [f for v in self.variants.values() for f in v.values()]
        named += [f for f in (self.calibration or {}).get("cache", {}).values()]
        unlisted = [f for f in named if f not in self.files]
        if unlisted:
            raise ManifestError(f"manifest names {', '.join(unlisted)} but lists no sha256 for it")


def token_runs(ids: Iterable[int]) -> TokenRuns:
    """Distinct ids as sorted half-open [start, stop) runs: (5, 0, 1, 2) -> ((0, 3), (5, 6))."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return tuple((start, stop) for start, stop in runs)


def in_runs(token: int, runs: TokenRuns) -> bool:
    """Whether `token` lies in one of `runs`."""
    return any(start <= token < stop for start, stop in runs)


def _token_runs(value: Any) -> TokenRuns | None:
    """The manifest's "learnt_tokens" (absent: None), checked: a list of [start, stop] with 0 <= start < stop."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
            and 0 <= r[0] < r[1] for r in value):
        raise ManifestError("manifest 'learnt_tokens' must be a list of [start, stop] token id runs")
    return tuple((start, stop) for start, stop in value)


def hash_files(directory: str | os.PathLike[str], names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} for files of `directory` (the manifest's "files" field)."""
    return {name: sha256_file(Path(directory) / name) for name in names}


def producer_versions() -> dict[str, str]:
    """Versions of rvos_edge, onnx and onnxruntime, and of torch when it is already imported."""
    import rvos_edge

    versions = {"rvos_edge": rvos_edge.__version__}
    for dist in ("torch", "onnx", "onnxruntime"):
        if dist == "torch" and "torch" not in sys.modules:
            continue
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``directory/manifest.json`` atomically; returns its path."""
    path = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())
    return path


def load_manifest(directory: str | os.PathLike[str], verify_files: bool = True) -> Manifest:
    """Read and check ``directory/manifest.json``.

    verify_files: also check that every listed file exists and matches its sha256.
    The tokenizer's vocabulary sha256 is always compared with the installed one.
    """
    from rvos_edge.tokenizer import vocab_sha256

    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"{directory} is not a folder (an artifact folder from `rvos-edge export` is expected)")
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {directory}: not an artifact folder from `rvos-edge export`")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read {path}: {e}") from None
    manifest = Manifest.from_dict(d)
    if manifest.tokenizer_vocab_sha256 != vocab_sha256():
        raise ManifestError(f"{path} was exported with another tokenizer vocabulary (sha256 "
                            f"{manifest.tokenizer_vocab_sha256[:12]}..., installed {vocab_sha256()[:12]}...): "
                            "re-export with this version of rvos-edge")
    if verify_files:
        verify_manifest_files(directory, manifest.files)
    return manifest


def verify_manifest_files(directory: str | os.PathLike[str], files: Mapping[str, str]) -> None:
    """Each of `files` exists in `directory` and has the listed sha256; a ManifestError names the first that does not."""
    for name, digest in files.items():
        p = Path(directory) / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ManifestError(f"manifest lists {name!r}, which is outside the artifact folder")
        if not p.is_file():
            raise ManifestError(f"{name} is listed in {Path(directory) / MANIFEST_NAME} but missing from the folder")
        try:
            actual = sha256_file(p)
        except OSError as e:
            raise ManifestError(f"cannot read {p}: {e.strerror}") from None
        if actual != digest:
            raise ManifestError(f"{name} does not match its sha256 in the manifest (changed or corrupt): re-export the folder")
