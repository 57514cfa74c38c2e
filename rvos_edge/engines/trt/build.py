"""``rvos-edge build DIR --backend trt``: TensorRT engines for an artifact folder.

    result = build_engines("artifacts/", "fp16", workspace_gb=4, max_batch=2)
    result.entry.files        # {"text_encoder": "text_encoder.fp16.engine", "clip_model": "clip_model.fp16.engine"}

Steps: read the manifest; detect the installed TensorRT and make the build plan
(`rvos_edge.engines.trt.plan`: weakly typed with builder flags on 10.x, strongly
typed from the precision's ONNX on 11, the plugin graph or its decomposed
fallback); register the CubeFrameAttention plugin when the plan uses it; parse
each graph with TensorRT's ONNX parser, add one optimisation profile (batch
1..max_batch, the export's clip-length range), load the timing cache, set the
flags (and, for INT8 from a calibration cache on 10.x, a calibrator that only
reads the cache) and build. Then, each atomically: the engines
(``<graph>[.<precision>].engine``), the timing cache (default
``DIR/tensorrt.timing.cache``, shared by all builds), the build log
(``tensorrt_build.<precision>.log``: the plan, the GPU, the profiles, TensorRT's
messages; written also when the build fails) and, last, the manifest with the
engine entry (TensorRT version, GPU name and compute capability, precision,
source ONNX and their sha256). Needs tensorrt and cuda-python, imported when called;
no torch unless the plan uses the plugin.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rvos_edge.errors import UserError
from rvos_edge.artifacts.manifest import GRAPH_NAMES, hash_files, load_manifest, write_manifest
from rvos_edge.artifacts.tensorrt import EngineEntry, GpuInfo, engine_file, with_engines
from rvos_edge.engines.trt.plan import (ArtifactSet, BuildPlan, GraphPlan, TrtVersion, calibration_cache_for,
                                       plan_build, profile_shapes)
from rvos_edge.fileio import atomic_write_bytes

DEFAULT_TIMING_CACHE = "tensorrt.timing.cache"
# calibration algorithm of a cache header -> the TensorRT 10.x calibrator class reading it (removed in TensorRT 11)
CALIBRATORS = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "EntropyCalibration": "IInt8EntropyCalibrator",
               "MinMaxCalibration": "IInt8MinMaxCalibrator"}


@dataclass(frozen=True)
class BuildResult:
    """A finished build: its plan, the manifest entry written, the engine sizes and the time taken."""

    plan: BuildPlan
    entry: EngineEntry
    sizes: dict[str, int]
    seconds: float

    def summary(self, folder: str) -> str:
        """The command's one-line summary."""
        files = ", ".join(f"{self.entry.files[g]} ({self.sizes[g] / 2 ** 20:.1f} MiB)" for g in GRAPH_NAMES)
        gpu = GpuInfo(self.entry.gpu, self.entry.compute_capability)
        plugin = f", CubeFrameAttention plugin ({self.plan.plugin})" if self.plan.plugin else ""
        return (f"built {self.plan.precision} TensorRT engines for {folder} with TensorRT "
                f"{self.entry.tensorrt_version} on {gpu} in {self.seconds:.0f} s{plugin}: {files}")


def _cache_calibrator(trt: Any, cache: bytes, algorithm: str) -> Any:
    """An INT8 calibrator that only hands TensorRT 10.x `cache` (no calibration data is ever read)."""
    if algorithm not in CALIBRATORS:
        raise UserError(f"calibration cache algorithm {algorithm!r} is not supported "
                        f"(supported: {', '.join(CALIBRATORS)})")
    base = getattr(trt, CALIBRATORS[algorithm])

    class CacheCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return CacheCalibrator()


class _Builder:
    """One build: the TensorRT builder, logger and timing cache shared by both graphs."""

    def __init__(self, trt: Any, folder: Path, plan: BuildPlan, workspace_gb: float | None, cache_blob: bytes) -> None:
        from rvos_edge.engines.trt.runner import make_logger

        self.trt, self.folder, self.plan, self.workspace_gb = trt, folder, plan, workspace_gb
        self.logger = make_logger(trt, keep=trt.ILogger.Severity.INFO)
        self.builder = trt.Builder(self.logger)
        self.notices: list[str] = []
        config = self.builder.create_builder_config()
        self.timing_cache = config.create_timing_cache(cache_blob)
        if cache_blob and (self.timing_cache is None or not config.set_timing_cache(self.timing_cache, False)):
            self.notices.append("the timing cache was written by another TensorRT version or GPU: starting a new one")
            self.timing_cache = config.create_timing_cache(b"")

    def network(self, graph: GraphPlan) -> tuple[Any, Any]:
        """(network, parser) of the graph's ONNX, parsed; a parse failure is a UserError."""
        trt = self.trt
        flags = 0
        for name in self.plan.network_flags:
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        network = self.builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.folder / graph.onnx)):
            errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
            raise UserError(f"TensorRT cannot parse {graph.onnx}: {errors[0] if errors else self.logger.last_error}")
        return network, parser

    def build(self, name: str, graph: GraphPlan, shapes: dict[str, tuple]) -> bytes:
        """The serialized engine of one graph."""
        trt = self.trt
        network, _parser = self.network(graph)
        config = self.builder.create_builder_config()
        for flag in graph.builder_flags:        # FP16 / INT8 exist on TensorRT 10.x only (removed in 11)
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in self.plan.cleared_flags:
            config.clear_flag(getattr(trt.BuilderFlag, flag))
        if self.workspace_gb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_gb * 2 ** 30))
        profile = self.builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in shapes.items():
            profile.set_shape(tensor, lo, opt, hi)
        config.add_optimization_profile(profile)
        config.set_timing_cache(self.timing_cache, False)
        calibrator = None
        if graph.calibration_cache is not None:
            try:
                raw = (self.folder / graph.calibration_cache).read_bytes()
            except OSError as e:
                raise UserError(f"cannot read {self.folder / graph.calibration_cache}: {e.strerror}") from None
            cache, algorithm = calibration_cache_for(raw, self.plan.version)
            calibrator = _cache_calibrator(trt, cache, algorithm)
            config.int8_calibrator = calibrator        # TensorRT 10.x (deprecated in 10.1, removed in 11)
            config.set_calibration_profile(profile)    # dynamic shapes: the profile the scales apply to (10.x)
        serialized = self.builder.build_serialized_network(network, config)   # calibrator stays alive until here
        if serialized is None:
            raise UserError(f"TensorRT could not build {name} from {graph.onnx}: "
                            f"{self.logger.last_error or 'see the build log'}")
        return bytes(serialized)


def _log_text(plan: BuildPlan, gpu: GpuInfo, profiles: dict, lines: list[str]) -> bytes:
    head = [plan.describe(), f"GPU: {gpu}"]
    head += [f"profile {g} {t}: min {lo} opt {opt} max {hi}"
             for g, shapes in profiles.items() for t, (lo, opt, hi) in shapes.items()]
    return ("\n".join(head + ["", *lines]) + "\n").encode()


def build_engines(folder: str | Path, precision: str = "fp32", workspace_gb: float | None = None,
                  max_batch: int = 1, timing_cache: str | Path | None = None, device: str = "cuda",
                  progress: bool = True) -> BuildResult:
    """Build the TensorRT engines of `precision` for an artifact folder (see the module docstring).

    workspace_gb: TensorRT's workspace pool limit (None: TensorRT's default, the GPU's memory);
    max_batch: largest batch of the profiles; timing_cache: file to load and update
    (default DIR/tensorrt.timing.cache); device: "cuda" or "cuda:N".
    """
    from rvos_edge.engines.trt.runner import cuda_call, cuda_runtime, device_index, gpu_info, import_tensorrt

    t0 = time.perf_counter()
    folder = Path(folder)
    if workspace_gb is not None and workspace_gb <= 0:
        raise UserError(f"--workspace must be > 0 GB, got {workspace_gb}")
    manifest = load_manifest(folder)
    profiles = profile_shapes(manifest.config, manifest.clip_len, max_batch)
    trt = import_tensorrt()
    version = TrtVersion.parse(trt.__version__)
    artifacts = ArtifactSet.from_manifest(manifest, str(folder))
    blocker = None
    if artifacts.plugin_graph is not None:
        from rvos_edge.export.plugin_graph import plugin_blocker

        blocker = plugin_blocker()
    plan = plan_build(version, precision, artifacts, blocker)
    cudart = cuda_runtime()
    index = device_index(device)
    gpu = gpu_info(cudart, index)
    cuda_call(cudart, cudart.cudaSetDevice(index))
    if plan.plugin is not None:
        from rvos_edge.export.plugin_graph import register_plugin

        register_plugin(aot=plan.plugin == "aot")
    cache_path = Path(timing_cache) if timing_cache is not None else folder / DEFAULT_TIMING_CACHE
    try:
        cache_blob = cache_path.read_bytes() if cache_path.is_file() else b""
    except OSError as e:
        raise UserError(f"cannot read timing cache {cache_path}: {e.strerror}") from None
    builder = _Builder(trt, folder, plan, workspace_gb, cache_blob)
    log_name = f"tensorrt_build.{precision}.log"
    engines: dict[str, bytes] = {}
    try:
        for graph in tqdm(GRAPH_NAMES, desc=f"trt {precision}", unit="engine", disable=not progress, leave=False):
            engines[graph] = builder.build(graph, plan.graphs[graph], profiles[graph])
    finally:
        atomic_write_bytes(folder / log_name, _log_text(plan, gpu, profiles, builder.logger.lines))
    files = {g: engine_file(g, precision) for g in GRAPH_NAMES}
    for graph, data in engines.items():
        atomic_write_bytes(folder / files[graph], data)
    atomic_write_bytes(cache_path, bytes(builder.timing_cache.serialize()))
    entry = EngineEntry(
        precision=precision, tensorrt_version=trt.__version__, gpu=gpu.name, compute_capability=gpu.compute_capability,
        files=files, onnx={g: {"file": p.onnx, "sha256": manifest.files[p.onnx]} for g, p in plan.graphs.items()},
        strongly_typed=plan.strongly_typed, plugin=plan.plugin, max_batch=max_batch, timing_cache=str(cache_path),
        log=log_name, notices=[*plan.notices, *builder.notices])
    write_manifest(folder, with_engines(manifest, entry, hash_files(folder, files.values())))
    return BuildResult(plan=plan, entry=entry, sizes={g: len(d) for g, d in engines.items()},
                       seconds=time.perf_counter() - t0)
