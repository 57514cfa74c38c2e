"""TensorRT build plans and optimisation profiles: pure functions, no tensorrt import.

    plan = plan_build(TrtVersion.parse("10.3.0"), "int8", ArtifactSet.from_manifest(manifest, "art"))
    plan.graphs["clip_model"].onnx, plan.graphs["clip_model"].builder_flags, plan.notices

`plan_build` decides, from the installed TensorRT version, the precision asked
for and what the artifact folder holds, how each graph is built. The two worlds:

| TensorRT | typing | fp32 | fp16 | int8 |
|---|---|---|---|---|
| 10.x (JetPack 6: 10.3) | weak | base, TF32 off | base + FP16 flag | Q/DQ + INT8, FP16 flags; else base + cache |
| >= 11 | strong | base, TF32 off | fp16 variant | int8 (Q/DQ) variant |

("base": the FP32 ONNX graphs; "cache": the TensorRT calibration cache, with the
INT8 and FP16 flags; Q/DQ graphs are preferred over the cache; a graph the
calibration left in float, or without a cache, gets the FP16 flag only.)

TensorRT 11 removed BuilderFlag.FP16/INT8 and the INT8 calibrator: every network
is strongly typed and its precision comes from the ONNX, so a missing variant is
an error that names the command making it. On 10.x the networks are weakly
typed (deprecated since 10.12 but still the only way to use the FP16/INT8
flags and a calibration cache, which Jetson's 10.3 needs).

The CubeFrameAttention plugin graph (``export --attention plugin``) replaces the
decomposed clip graph when the plugin can be used: TensorRT >= 10.6 runs Python
plugins just in time (the engine then needs Python, torch and triton to run),
>= 10.9 compiles them ahead of time into the engine (PREFER_AOT_PYTHON_PLUGINS);
the plugin graph is FP32, so it is used for fp32 everywhere and for fp16 on 10.x
(FP16 flag). Otherwise the decomposed graph is built and a notice says why.

Profiles cover batch 1..max_batch (optimised for 1, the streaming case) and the
clip-length range of the export (optimised for the model's clip length).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from rvos_edge.artifacts.manifest import CLIP_MODEL, GRAPH_NAMES, Manifest, expected_graphs
from rvos_edge.artifacts.precision import check_backend, get_precision
from rvos_edge.artifacts.tensorrt import plugin_graph_file
from rvos_edge.config import ModelConfig
from rvos_edge.errors import UserError

MIN_VERSION = (10, 0)
JIT_PLUGINS = (10, 6)       # tensorrt.plugin (register/impl): Python plugins, run just in time
AOT_PLUGINS = (10, 9)       # tensorrt.plugin.aot_impl: plugin kernels compiled into the engine
STRONG_ONLY_MAJOR = 11      # TensorRT 11: FP16/INT8 builder flags and the calibrator removed
INSTALL_HINT = ("pip install 'rvos-edge[trt]' (tensorrt and polygraphy; on Jetson, TensorRT comes with JetPack: "
                "pip install polygraphy)")

Shape = tuple[int, ...]


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version, major.minor.patch (build numbers are dropped)."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        """"10.3.0.26" -> TrtVersion(10, 3, 0); anything that is not a version is a UserError."""
        m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
        if m is None:
            raise UserError(f"cannot read the TensorRT version {text!r}")
        return cls(int(m[1]), int(m[2]), int(m[3] or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def python_plugins(self) -> str | None:
        """"aot" (>= 10.9), "jit" (>= 10.6) or None: what tensorrt.plugin offers in this version."""
        key = (self.major, self.minor)
        return "aot" if key >= AOT_PLUGINS else "jit" if key >= JIT_PLUGINS else None


@dataclass(frozen=True)
class ArtifactSet:
    """What an artifact folder offers a TensorRT build.

    base: {graph: FP32 ONNX file}; variants: {precision: {graph: ONNX file}};
    calibration: {graph: TensorRT calibration cache}; plugin_graph: the clip graph
    with CubeFrameAttention nodes (None without a plugin export); folder: its name in messages.
    """

    folder: str
    base: Mapping[str, str]
    variants: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    calibration: Mapping[str, str] = field(default_factory=dict)
    plugin_graph: str | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, folder: str) -> "ArtifactSet":
        """The set an artifact folder's manifest describes (its base graphs must be FP32)."""
        if manifest.precision != "fp32":
            raise UserError(f"{folder} holds {manifest.precision} base graphs; TensorRT engines are built from an "
                            "FP32 export (rvos-edge export CKPT --out DIR)")
        caches = {g: f for g in GRAPH_NAMES if (f := manifest.calibration_cache(g)) is not None}
        return cls(folder=folder, base=manifest.graph_files("fp32"), variants=dict(manifest.variants),
                   calibration=caches, plugin_graph=plugin_graph_file(manifest))


@dataclass(frozen=True)
class GraphPlan:
    """How one graph is built: its ONNX file, BuilderFlag names to set, an INT8 calibration cache."""

    onnx: str
    builder_flags: tuple[str, ...] = ()
    calibration_cache: str | None = None


@dataclass(frozen=True)
class BuildPlan:
    """A TensorRT build: network creation flags, flags cleared, one GraphPlan per graph, notices.

    network_flags / cleared_flags name NetworkDefinitionCreationFlag / BuilderFlag
    members (their numbers differ between versions, so the builder looks them up
    by name). plugin: "aot" or "jit" when the clip graph is the plugin graph.
    """

    version: TrtVersion
    precision: str
    strongly_typed: bool
    graphs: dict[str, GraphPlan]
    network_flags: tuple[str, ...] = ()
    cleared_flags: tuple[str, ...] = ()
    plugin: str | None = None
    notices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The plan in a few lines (the head of the build log)."""
        lines = [f"TensorRT {self.version}, {self.precision}, {'strongly' if self.strongly_typed else 'weakly'} typed"
                 + (f", network flags {', '.join(self.network_flags)}" if self.network_flags else "")
                 + (f", cleared {', '.join(self.cleared_flags)}" if self.cleared_flags else "")
                 + (f", CubeFrameAttention plugin ({self.plugin})" if self.plugin else "")]
        for name, g in self.graphs.items():
            lines.append(f"{name}: {g.onnx}" + (f", flags {', '.join(g.builder_flags)}" if g.builder_flags else "")
                         + (f", calibration cache {g.calibration_cache}" if g.calibration_cache else ""))
        return "\n".join(lines + [f"notice: {n}" for n in self.notices])


def _plugin_choice(version: TrtVersion, precision: str, artifacts: ArtifactSet,
                   blocker: str | None) -> tuple[str | None, list[str]]:
    """("aot" | "jit" | None, notices): whether the clip graph is built from the plugin graph."""
    if artifacts.plugin_graph is None:
        return None, []
    fallback = "building the decomposed clip graph instead"
    mode = version.python_plugins
    if mode is None:
        return None, [f"TensorRT {version} has no Python plugins (tensorrt.plugin needs TensorRT >= "
                      f"{JIT_PLUGINS[0]}.{JIT_PLUGINS[1]}): {fallback}"]
    if blocker is not None:
        return None, [f"the CubeFrameAttention plugin is unavailable ({blocker}): {fallback}"]
    if precision == "int8" or (precision == "fp16" and version.major >= STRONG_ONLY_MAJOR):
        return None, [f"the plugin graph is FP32 and {precision} comes from the decomposed {precision} "
                      f"graphs here: {fallback}"]
    if mode == "jit":
        return mode, [f"TensorRT {version} runs the plugin just in time: running these engines needs Python with "
                      f"tensorrt, torch and triton (TensorRT >= {AOT_PLUGINS[0]}.{AOT_PLUGINS[1]} compiles it "
                      "into the engine)"]
    return mode, []


def plan_build(version: TrtVersion, precision: str, artifacts: ArtifactSet,
               plugin_blocker: str | None = None) -> BuildPlan:
    """The build plan for `precision` with TensorRT `version` (see the module docstring); an impossible
    request is a UserError saying what to do.

    plugin_blocker: why the CubeFrameAttention plugin cannot run on this machine
    apart from the TensorRT version (e.g. "triton is not installed"), None if nothing blocks it.
    """
    if (version.major, version.minor) < MIN_VERSION:
        raise UserError(f"TensorRT {version} is too old: rvos-edge builds with TensorRT 10.x or 11.x ({INSTALL_HINT})")
    check_backend(get_precision(precision), "trt")           # an unknown one, or bf16 (OpenVINO's), is a UserError
    folder = artifacts.folder
    plugin, notices = _plugin_choice(version, precision, artifacts, plugin_blocker)
    network_flags = ("PREFER_AOT_PYTHON_PLUGINS",) if plugin == "aot" else ()
    cleared = ("TF32",) if precision == "fp32" else ()     # FP32 engines must match ONNX Runtime to 1e-3
    strong = version.major >= STRONG_ONLY_MAJOR
    if strong:
        # TensorRT >= 11: strongly typed (STRONGLY_TYPED is deprecated and ignored, so it is not set)
        if precision == "fp32":
            files = artifacts.base
        elif precision in artifacts.variants:
            files = artifacts.variants[precision]
        elif precision == "fp16":
            raise UserError(f"TensorRT {version} builds strongly typed networks, whose precision comes from the ONNX, "
                            f"and {folder} has no fp16 graphs: run `rvos-edge build {folder} --backend ort "
                            "--precision fp16` first")
        else:
            raise UserError(f"TensorRT {version} builds INT8 only from Q/DQ graphs and {folder} has none: "
                            f"run `rvos-edge calib {folder} --data DATA` first")
        graphs = {g: GraphPlan(files[g]) for g in GRAPH_NAMES}
    elif precision in ("fp32", "fp16"):
        flags = ("FP16",) if precision == "fp16" else ()
        graphs = {g: GraphPlan(artifacts.base[g], flags) for g in GRAPH_NAMES}
    elif "int8" in artifacts.variants:
        # a graph the calibration left in float (its variant is the base file) has no Q/DQ: FP16 only
        files = artifacts.variants["int8"]
        graphs = {g: GraphPlan(files[g], ("INT8", "FP16") if files[g] != artifacts.base[g] else ("FP16",))
                  for g in GRAPH_NAMES}
    elif artifacts.calibration:
        notices.append("no Q/DQ graphs: INT8 scales come from the calibration caches (implicit quantization, "
                       "deprecated since TensorRT 10.1 and removed in 11)")
        graphs = {}
        for g in GRAPH_NAMES:
            cache = artifacts.calibration.get(g)
            if cache is None:
                notices.append(f"{g} has no calibration cache: it is built in FP16")
            graphs[g] = GraphPlan(artifacts.base[g], ("INT8", "FP16") if cache else ("FP16",), cache)
    else:
        raise UserError(f"{folder} has no INT8 graphs or calibration caches: run `rvos-edge calib {folder} "
                        "--data DATA` first")
    if plugin is not None:
        graphs[CLIP_MODEL] = GraphPlan(artifacts.plugin_graph, graphs[CLIP_MODEL].builder_flags)
    return BuildPlan(version=version, precision=precision, strongly_typed=strong, graphs=graphs,
                     network_flags=network_flags, cleared_flags=cleared, plugin=plugin, notices=tuple(notices))


def profile_shapes(config: ModelConfig, clip_len: tuple[int, int],
                   max_batch: int) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """{graph: {input: (min, opt, max) shape}}: batch 1..max_batch (opt 1), Tc over the export's range
    (opt: the model's clip length brought into the range)."""
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    lo, hi = clip_len
    sizes = {"B": (1, 1, max_batch), "Tc": (lo, min(max(config.clip_len, lo), hi), hi)}
    profiles = {}
    for name, spec in expected_graphs(config, clip_len).items():
        profiles[name] = {
            t.name: tuple(tuple(sizes[d][i] if isinstance(d, str) else d for d in t.shape) for i in range(3))
            for t in spec.inputs}
    return profiles

