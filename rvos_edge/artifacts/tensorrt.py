"""The manifest's "tensorrt" section: the plugin graph and the TensorRT engines of a folder (no tensorrt import).

    "tensorrt": {
      "plugin": {"op": "rvos_edge::CubeFrameAttention", "clip_model": "clip_model.plugin.onnx",
                 "runs_on": "tensorrt", "note": "..."},
      "engines": {"fp16": {"precision": "fp16", "tensorrt_version": "10.3.0", "gpu": "Orin",
                           "compute_capability": "8.7",
                           "files": {"text_encoder": "text_encoder.fp16.engine", "clip_model": "clip_model.fp16.engine"},
                           "onnx": {"text_encoder": {"file": "text_encoder.onnx", "sha256": "..."}, ...},
                           "strongly_typed": false, "plugin": null, "max_batch": 1,
                           "timing_cache": "tensorrt.timing.cache", "log": "tensorrt_build.fp16.log",
                           "notices": [...]}}}

Engines are ``<graph>.engine`` for fp32 and ``<graph>.<precision>.engine`` otherwise,
like the ONNX variants; their sha256 is in the manifest's "files". An engine runs
only with the TensorRT version and on the GPU that built it, and is stale once
the ONNX it came from changes: `check_engine_compat` refuses all three with a
message naming the rebuild command.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from rvos_edge.artifacts.manifest import CLIP_MODEL, GRAPH_NAMES, Manifest, ManifestError
from rvos_edge.errors import UserError

PLUGIN_OP = "rvos_edge::CubeFrameAttention"
PLUGIN_NOTE = ("TensorRT only: ONNX Runtime cannot run the CubeFrameAttention nodes; "
               "it runs the decomposed graphs of this folder")


@dataclass(frozen=True)
class GpuInfo:
    """A GPU as engines record it: its name and compute capability ("8.7")."""

    name: str
    compute_capability: str

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def plugin_section(clip_file: str) -> dict[str, str]:
    """The "plugin" entry for a clip graph `clip_file` whose CF-MSA are plugin nodes."""
    return {"op": PLUGIN_OP, CLIP_MODEL: clip_file, "runs_on": "tensorrt", "note": PLUGIN_NOTE}


def plugin_graph_file(manifest: Manifest) -> str | None:
    """The plugin clip graph of the folder, None without a plugin export."""
    plugin = (manifest.tensorrt or {}).get("plugin")
    if plugin is None:
        return None
    if not isinstance(plugin, dict) or not isinstance(plugin.get(CLIP_MODEL), str):
        raise ManifestError("manifest tensorrt.plugin must name the plugin clip graph file")
    return plugin[CLIP_MODEL]


def engine_file(graph: str, precision: str) -> str:
    """clip_model.engine for fp32, clip_model.fp16.engine for fp16, ..."""
    return f"{graph}.engine" if precision == "fp32" else f"{graph}.{precision}.engine"


def rebuild_hint(folder: str, precision: str) -> str:
    return f"rebuild with `rvos-edge build {folder} --backend trt --precision {precision}`"


@dataclass(frozen=True)
class EngineEntry:
    """The engines of one precision: how and where they were built (see the module docstring)."""

    precision: str
    tensorrt_version: str
    gpu: str
    compute_capability: str
    files: dict[str, str]
    onnx: dict[str, dict[str, str]]
    strongly_typed: bool
    plugin: str | None
    max_batch: int
    timing_cache: str
    log: str
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "EngineEntry":
        """Parse one entry of tensorrt.engines; a malformed one is a ManifestError."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or not names <= set(d):
            missing = sorted(names - set(d)) if isinstance(d, dict) else sorted(names)
            raise ManifestError(f"manifest {where} is not a TensorRT engine entry (missing {', '.join(missing)})")
        files, onnx = d["files"], d["onnx"]
        if not (isinstance(files, dict) and sorted(files) == sorted(GRAPH_NAMES)
                and isinstance(onnx, dict) and sorted(onnx) == sorted(GRAPH_NAMES)
                and all(isinstance(o, dict) and isinstance(o.get("file"), str) for o in onnx.values())):
            raise ManifestError(f"manifest {where} must name an engine and its ONNX for each of "
                                f"{', '.join(GRAPH_NAMES)}")
        if not isinstance(d["max_batch"], int) or d["max_batch"] < 1:
            raise ManifestError(f"manifest {where}.max_batch must be an integer >= 1")
        return cls(**{k: d[k] for k in names})


def engine_entries(manifest: Manifest) -> dict[str, EngineEntry]:
    """{precision: EngineEntry} of the folder's TensorRT engines ({} without any)."""
    engines = (manifest.tensorrt or {}).get("engines", {})
    if not isinstance(engines, dict):
        raise ManifestError("manifest tensorrt.engines must map precisions to engine entries")
    return {p: EngineEntry.from_dict(e, f"tensorrt.engines.{p}") for p, e in engines.items()}


def engine_entry(manifest: Manifest, precision: str, folder: str) -> EngineEntry:
    """The engines of `precision`; a UserError naming the build command when the folder has none."""
    entries = engine_entries(manifest)
    if precision not in entries:
        have = f" (it has: {', '.join(entries)})" if entries else ""
        raise UserError(f"{folder} has no TensorRT {precision} engines{have}: build them with "
                        f"`rvos-edge build {folder} --backend trt --precision {precision}`")
    return entries[precision]


def check_engine_compat(entry: EngineEntry, manifest_files: Mapping[str, str], folder: str, trt_version: str,
                        gpu: GpuInfo) -> None:
    """Refuse engines built by another TensorRT version, for another GPU, or from ONNX that changed since."""
    hint = rebuild_hint(folder, entry.precision)
    if entry.tensorrt_version != trt_version:
        raise UserError(f"the {entry.precision} engines of {folder} were built with TensorRT {entry.tensorrt_version} "
                        f"but TensorRT {trt_version} is installed (an engine runs only with the TensorRT that "
                        f"built it): {hint}")
    built_for = GpuInfo(entry.gpu, entry.compute_capability)
    if built_for != gpu:
        raise UserError(f"the {entry.precision} engines of {folder} were built for {built_for} but this GPU is "
                        f"{gpu} (engines are specific to the GPU that built them): {hint} on this machine")
    for graph, source in entry.onnx.items():
        if "sha256" in source and manifest_files.get(source["file"]) != source["sha256"]:
            raise UserError(f"{source['file']} of {folder} changed after the {entry.precision} {graph} engine was "
                            f"built from it: {hint}")


def with_engines(manifest: Manifest, entry: EngineEntry, hashes: Mapping[str, str]) -> Manifest:
    """`manifest` with `entry` recorded (replacing older engines of its precision) and `hashes` in its files."""
    section = dict(manifest.tensorrt or {})
    section["engines"] = {**section.get("engines", {}), entry.precision: entry.to_dict()}
    return dataclasses.replace(manifest, tensorrt=section, files={**manifest.files, **hashes})
